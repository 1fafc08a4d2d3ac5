"""The security suite's secrets, limits and token maker, shared by its
conftest and its tests. (A module of its own: `from conftest import` would
pick whichever conftest.py pytest loaded last when several folders run in
one session.)"""
import chatlib
import harness

SECRET = harness.JWT_SECRET
PREVIOUS_SECRET = "security-previous-secret-" + "p" * 20
API_KEY = "security-api-key-" + "k" * 24  # gateway 1's --api-listen (test_sec_api.py)

# The limits the attacks run into (docs/SECURITY.md has the defaults).
LIMITS = {
    "rate": 20, "rate_burst": 40, "max_conns_per_user": 4, "request_timeout_ms": 2000,
    "max_header": 8192, "max_url": 4096, "max_frame": 65536, "max_text": 4096,
    "heartbeat": 3, "pong_timeout": 2, "max_http_conns": 300, "max_conns_gw1": 60,
    "origins": "https://good.example", "send_queue": 65536, "max_rooms_per_user": 50,
}


def token(user, **kw):
    return chatlib.make_token(user, SECRET, **kw)
