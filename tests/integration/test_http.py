"""HTTP endpoints on the gateway port: probes, metrics, the browser page,
dev tokens and the REST history API."""
import json
import re
import urllib.parse

import pytest

from chatlib import arun, http_request, make_token, uid, verify_token


def get_json(port, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    st, hdrs, body = http_request(port, "GET", path, headers=headers)
    try:
        obj = json.loads(body) if body else None
    except ValueError:
        obj = None
    return st, hdrs, body, obj


def test_probes_on_every_process(cluster):
    for port in cluster.all_ports():
        st, _, body = http_request(port, "GET", "/healthz")
        assert st == 200, f"/healthz on {port}: {st} {body!r}"
        st, _, body = http_request(port, "GET", "/readyz")
        assert st == 200, f"/readyz on {port}: {st} {body!r}"


def test_metrics(cluster):
    for port in cluster.all_ports():
        st, hdrs, body = http_request(port, "GET", "/metrics")
        assert st == 200, f"/metrics on {port}: {st}"
        assert hdrs.get("content-type", "").startswith("text/plain"), hdrs
        text = body.decode()
        series = [l for l in text.splitlines() if l.startswith("chatd_")]
        assert series, f"/metrics on {port} has no chatd_ series:\n{text[:500]}"
        # Prometheus text format: every sample line is "name[{labels}] value".
        for line in series:
            name, _, value = line.rpartition(" ")
            assert name, line
            float(value)  # raises if not a number


def test_browser_client_page(cluster):
    st, hdrs, body = http_request(cluster.gw_ports[0], "GET", "/")
    assert st == 200, st
    assert "text/html" in hdrs.get("content-type", ""), hdrs
    assert b"<" in body


WEB_ASSETS = {"/": "text/html; charset=utf-8", "/index.html": "text/html; charset=utf-8",
              "/app.js": "text/javascript; charset=utf-8", "/style.css": "text/css; charset=utf-8",
              "/favicon.svg": "image/svg+xml",
              "/chatd-client.js": "text/javascript; charset=utf-8"}  # clients/js, imported by app.js


@pytest.mark.parametrize("path", sorted(WEB_ASSETS))
def test_web_asset_headers(cluster, path):
    port = cluster.gw_ports[0]
    st, hdrs, body = http_request(port, "GET", path)
    assert st == 200, st
    assert hdrs.get("content-type") == WEB_ASSETS[path], hdrs
    assert int(hdrs["content-length"]) == len(body) > 0
    assert hdrs.get("cache-control") == "no-cache", hdrs
    assert hdrs.get("x-content-type-options") == "nosniff", hdrs
    csp = hdrs.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives.get("script-src") == ["'self'"], csp
    assert directives.get("default-src") == ["'none'"], csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    assert directives.get("frame-ancestors") == ["'none'"], csp
    assert f"ws://127.0.0.1:{port}" in directives.get("connect-src", []), csp
    etag = hdrs.get("etag", "")
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 8, hdrs
    # Revalidation: the same tag answers 304 with no body and no Content-Length.
    st, hdrs2, body2 = http_request(port, "GET", path, headers={"If-None-Match": etag})
    assert st == 304 and body2 == b"" and "content-length" not in hdrs2, (st, hdrs2)
    assert hdrs2.get("etag") == etag
    st, _, body3 = http_request(port, "GET", path, headers={"If-None-Match": '"other"'})
    assert st == 200 and body3 == body
    # Both gateways run the same binary: the same bytes and tag.
    st, hdrs4, body4 = http_request(cluster.gw_ports[1], "GET", path)
    assert st == 200 and body4 == body and hdrs4.get("etag") == etag


def test_web_page_has_no_inline_script_or_style(cluster):
    _, _, body = http_request(cluster.gw_ports[0], "GET", "/")
    html = body.decode()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in t for t in scripts), scripts
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "inline script body"
    assert "<style" not in html and " style=" not in html and " on" + "click=" not in html


def test_web_asset_head_and_methods(cluster):
    port = cluster.gw_ports[0]
    st, hdrs, body = http_request(port, "HEAD", "/app.js")
    assert st == 200 and body == b"" and int(hdrs["content-length"]) > 1000, (st, hdrs)
    st, hdrs, body = http_request(port, "POST", "/app.js", body=b"x")
    assert st == 405 and "GET" in hdrs.get("allow", ""), (st, hdrs)
    assert json.loads(body)["error"] == "bad_request"
    # A forged Host header is not echoed into the CSP.
    st, hdrs, _ = http_request(port, "GET", "/", headers={"Host": "evil\"; script-src *"})
    assert st == 200 and "evil" not in hdrs.get("content-security-policy", ""), hdrs


def test_token_check_the_page_relies_on(cluster):
    """The page checks a pasted token with an invalid room id: the token is
    judged first (401), then the room (400), with no backend involved."""
    port = cluster.gw_ports[0]
    good = {"Authorization": "Bearer " + cluster.token(uid("tok"))}
    bad = {"Authorization": "Bearer " + make_token(uid("tok"), "not-the-secret")}
    assert http_request(port, "GET", "/api/rooms/!/messages", headers=good)[0] == 400
    assert http_request(port, "GET", "/api/rooms/!/messages", headers=bad)[0] == 401
    assert http_request(port, "GET", "/api/rooms/!/messages")[0] == 401
    # and the demo probe: an empty body is 400 with dev tokens on
    assert http_request(port, "POST", "/api/dev/token", body=b"{}")[0] == 400


def test_unknown_path_404(cluster):
    st, _, _ = http_request(cluster.gw_ports[0], "GET", "/no/such/path-" + uid())
    assert st == 404, st


def test_dev_token(cluster):
    user = uid("dev")
    for port in cluster.gw_ports:
        st, _, body = http_request(port, "POST", "/api/dev/token", body={"user": user})
        assert st == 200, (st, body)
        tok = json.loads(body)["token"]
        hdr, claims = verify_token(tok, cluster.secret)
        assert hdr.get("alg") == "HS256", hdr
        assert claims["sub"] == user and isinstance(claims.get("exp"), int), claims

    async def body_():
        from chatlib import Client
        c = await Client.connect(cluster.gw_ports[1], tok)
        assert c.user == user
        r = await c.ok("rooms")
        assert r["rooms"] == []
        await c.close()
    arun(body_())


@pytest.mark.parametrize("payload", [
    {"user": "bad user"}, {"user": ""}, {"user": "x" * 65}, {"user": 5}, {},
    "not json", [1, 2],
])
def test_dev_token_invalid_user(cluster, payload):
    body = payload if isinstance(payload, str) else json.dumps(payload)
    st, _, resp = http_request(cluster.gw_ports[0], "POST", "/api/dev/token", body=body,
                               headers={"Content-Type": "application/json"})
    assert st == 400, (payload, st, resp)


def _history_path(room, **params):
    q = urllib.parse.urlencode(params)
    return f"/api/rooms/{room}/messages" + (f"?{q}" if q else "")


def test_rest_history_paging(cluster):
    room = uid("rest")
    user = uid("u")

    async def body_():
        c = await cluster.client(user, gw=0)
        await c.join(room)
        acks = await c.send_many(room, [f"m{i}" for i in range(1, 26)])
        await c.wait_seqs(room, range(1, 26))
        await c.close()
        return acks
    acks = arun(body_())
    tok = cluster.token(user)
    port = cluster.gw_ports[1]

    st, hdrs, body, obj = get_json(port, _history_path(room), tok)
    assert st == 200, (st, body)
    assert "application/json" in hdrs.get("content-type", ""), hdrs
    assert obj["room"] == room and obj["more"] is False, obj
    msgs = obj["messages"]
    assert [m["seq"] for m in msgs] == list(range(1, 26))
    assert [m["text"] for m in msgs] == [f"m{i}" for i in range(1, 26)]
    assert [m["id"] for m in msgs] == [a["id"] for a in acks]
    for m in msgs:
        assert m["room"] == room and m["from"] == user and isinstance(m["ts"], int), m
        assert "cid" not in m or m["cid"] is None, m

    # paging with more
    seen, after, pages = [], 0, 0
    while True:
        st, _, body, obj = get_json(port, _history_path(room, after=after, limit=10), tok)
        assert st == 200, (st, body)
        pages += 1
        seen += [m["seq"] for m in obj["messages"]]
        if not obj["more"]:
            break
        after = obj["messages"][-1]["seq"]
        assert pages < 10
    assert seen == list(range(1, 26)) and pages == 3, (seen, pages)

    st, _, _, obj = get_json(port, _history_path(room, after=20, limit=5), tok)
    assert [m["seq"] for m in obj["messages"]] == [21, 22, 23, 24, 25] and obj["more"] is False
    st, _, _, obj = get_json(port, _history_path(room, after=19, limit=5), tok)
    assert [m["seq"] for m in obj["messages"]] == [20, 21, 22, 23, 24] and obj["more"] is True
    st, _, _, obj = get_json(port, _history_path(room, after=25), tok)
    assert st == 200 and obj["messages"] == [] and obj["more"] is False, obj
    st, _, _, obj = get_json(port, _history_path(room, limit=100000), tok)
    assert st == 200 and len(obj["messages"]) == 25, obj


def test_rest_history_auth_and_params(cluster):
    room = uid("rest")
    user = uid("u")
    other = uid("o")

    async def body_():
        c = await cluster.client(user)
        await c.join(room)
        await c.send(room, "hi")
        await c.close()
    arun(body_())
    port = cluster.gw_ports[0]
    path = _history_path(room)

    st, _, body, _ = get_json(port, path)
    assert st == 401, ("no token", st, body)
    for label, tok in [
        ("garbage", "abc.def"),
        ("bad signature", make_token(user, cluster.secret, sign_secret="wrong")),
        ("expired", make_token(user, cluster.secret, exp_in=-60)),
        ("no exp", make_token(user, cluster.secret, with_exp=False)),
        ("bad sub", make_token("bad user!", cluster.secret)),
    ]:
        st, _, body, _ = get_json(port, path, tok)
        assert st == 401, (label, st, body)

    st, hdrs, body, obj = get_json(port, path, cluster.token(other))
    assert st == 403, (st, body)
    assert obj and obj.get("error") == "not_member", body

    tok = cluster.token(user)
    # values too long for their buffers were read as absent (200 with the
    # defaults): bad input like any other
    for params in ({"after": -1}, {"after": "x"}, {"limit": 0}, {"limit": -5},
                   {"limit": "ten"}, {"after": "9" * 40}, {"limit": "1" + "0" * 40}):
        st, _, body, _ = get_json(port, _history_path(room, **params), tok)
        assert st == 400, (params, st, body)
    st, _, body, _ = get_json(port, f"/api/rooms/{'x' * 129}/messages", tok)
    assert st in (400, 404), ("room id too long", st, body)
    st, _, body, _ = get_json(port, "/api/rooms/bad%20room/messages", tok)
    assert st in (400, 404), ("invalid room id", st, body)
