"""The integration suite's settings, shared by its conftest and its tests
(see tests/security/secconf.py for why not `from conftest import`)."""
import os

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")
PG_BIN = "/usr/lib/postgresql/15/bin"
JWT_SECRET = "integration-test-secret-" + "k" * 16
READY_TIMEOUT = float(os.environ.get("CHATD_TEST_READY_TIMEOUT", "45"))
# The server API's keys (roles/api.h): the cluster's gateways accept both
# (a rotation in progress).
API_KEY = "integration-api-key-" + "c" * 16
API_KEY_PREVIOUS = "integration-api-key-previous-" + "p" * 8
KAFKA_TEST_OPTS = ["--kafka-opt=session.timeout.ms=3000",
                   "--kafka-opt=heartbeat.interval.ms=300"]


def chatd_env(extra=None):
    env = dict(os.environ)
    env["CHATD_JWT_SECRET"] = JWT_SECRET
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    # Make sure stray CHATD_* settings of the caller do not leak in.
    for k in list(env):
        if k.startswith("CHATD_") and k not in ("CHATD_JWT_SECRET",):
            del env[k]
    if extra:
        env.update(extra)
    return env
