"""Attacks on the server API's listener (gateway 1, --api-listen): guessed
keys, hostile paths and bodies. Each must get a 4xx (never a 5xx, a crash
or a hang), and the after_attack check holds (latency, RSS, stored data)."""
import json
import socket

from chatlib import http_request, uid
from secconf import API_KEY


def _api(sec, method, path, body=None, key=API_KEY, headers=None):
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    return http_request(sec.api_port, method, path, body=body, headers=h, timeout=10)


def test_api_guessed_keys(sec):
    """Keys of every length around the real one, a prefix, the key with
    one byte changed: all 401, nothing logged of them."""
    guesses = ["", "x", API_KEY[:8], API_KEY[:-1], API_KEY + "k", API_KEY.upper(),
               API_KEY[:-1] + "j", " " + API_KEY, "k" * 4096]
    for g in guesses:
        st, _, body = _api(sec, "GET", "/v1/users/u/rooms", key=g)
        assert st == 401, (g[:20], st, body)
    st, _, _ = _api(sec, "GET", "/v1/users/u/rooms")
    assert st == 200
    for p in sec.c.procs.values():
        with open(p.logpath, errors="replace") as f:
            assert API_KEY not in f.read(), p.name


def test_api_hostile_paths_and_bodies(sec):
    room = uid("secapi")
    assert _api(sec, "PUT", f"/v1/rooms/{room}", {})[0] == 201
    deep = "[" * 5000 + "]" * 5000
    cases = [
        ("GET", "/v1/rooms/%00/members", None),
        ("GET", "/v1/rooms/a%2Fb/members", None),
        ("GET", "/v1/rooms/%zz/members", None),
        ("GET", "/v1/rooms/%/members", None),
        ("GET", "/v1/rooms/" + "r" * 129 + "/members", None),
        ("GET", "/v1/" + "/".join(["rooms"] * 40), None),
        ("GET", "/v1/rooms/" + "%41" * 200, None),
        ("GET", "/v1/rooms/x/messages?after=99999999999999999999999", None),
        ("GET", "/v1/rooms/x/messages?limit=1e9", None),
        ("GET", "/v1/rooms/x/members?after=%00", None),
        ("POST", f"/v1/rooms/{room}/messages", deep),
        ("POST", f"/v1/rooms/{room}/messages", '{"text":' + deep + "}"),
        ("POST", f"/v1/rooms/{room}/messages", '{"text":"\\ud800"}'),
        ("POST", f"/v1/rooms/{room}/messages", '{"text":"a","text":7}'),
        ("POST", f"/v1/rooms/{room}/messages", '{"text":"' + "x" * 5000 + '"}'),
        ("POST", f"/v1/rooms/{room}/messages", b'{"text":"\xc3\x28"}'),
        ("PUT", f"/v1/rooms/{room}", '{"name":"' + "\\u00e9" * 150 + '"}'),
        ("POST", "/v1/users/u/disconnect", '{"ban_until":1e308}'),
        ("POST", "/v1/users/u/disconnect", '{"ban_until":-1e308}'),
        ("POST", "/v1/users/u/disconnect", '{"ban_until":"NaN"}'),
        # edit and delete (moderation): bad ids, bodies, and a target not there
        ("PATCH", f"/v1/rooms/{room}/messages/" + "A" * 32, '{"text":"x"}'),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 31 + "%00", '{"text":"x"}'),
        ("DELETE", f"/v1/rooms/{room}/messages/..%2F..%2Fx", None),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 32, deep),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 32, '{"text":"\\ud800"}'),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 32, '{"text":"a","text":"b"}'),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 32, '{"text":"' + "x" * 5000 + '"}'),
        ("PATCH", f"/v1/rooms/{room}/messages/" + "a" * 32, '{"text":"x"}'),
        ("DELETE", f"/v1/rooms/{room}/messages/" + "a" * 32, '{"idempotency_key":7}'),
        ("DELETE", f"/v1/rooms/{room}/messages/" + "a" * 32, None),
    ]
    for method, path, body in cases:
        st, hdrs, data = _api(sec, method, path, body,
                              headers={"Content-Type": "application/json"} if body else None)
        assert 400 <= st < 500, (method, path[:60], st, data[:200])
        assert hdrs.get("content-type") == "application/json", (path[:60], hdrs)
        json.loads(data)
    # nothing was stored in the room
    assert sec.query("SELECT count(*) FROM messages WHERE room = %s", (room,))[0][0] == 0


def test_api_slow_and_truncated_requests(sec):
    """Half a request, then silence; a body shorter than its length: the
    request timeout closes them, other requests go on."""
    socks = []
    for raw in (b"POST /v1/users/u/disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + API_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"ban_",
                b"GET /v1/users/u/rooms HTTP/1.1\r\nAuthorization: Bea"):
        s = socket.create_connection(("127.0.0.1", sec.api_port), timeout=10)
        s.sendall(raw)
        socks.append(s)
    st, _, _ = _api(sec, "GET", "/v1/users/u/rooms")
    assert st == 200
    for s in socks:
        s.settimeout(10)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise AssertionError("a stalled request was not closed within 10 s")
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:100]
        s.close()
