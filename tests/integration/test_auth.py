"""WebSocket upgrade authentication and the hello frame."""
import asyncio
import json
import urllib.parse

import pytest
import websockets.client
import websockets.exceptions

from chatlib import Client, arun, b64url, make_token, uid


def bad_tokens(secret):
    u = uid("u")
    none_alg = (b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." +
                b64url(json.dumps({"sub": u, "exp": 9999999999}).encode()) + ".")
    return [
        ("missing", None),
        ("empty", ""),
        ("malformed", "not-a-jwt"),
        ("two parts", "abc.def"),
        ("garbage b64", "!!!.@@@.###"),
        ("bad signature", make_token(u, secret, sign_secret=secret + "x")),
        ("expired", make_token(u, secret, exp_in=-30)),
        ("no exp", make_token(u, secret, with_exp=False)),
        ("sub with space", make_token("bad user", secret)),
        ("sub with slash", make_token("a/b", secret)),
        ("sub too long", make_token("x" * 65, secret)),
        ("sub empty", make_token("", secret)),
        ("alg none", none_alg),
        ("alg HS512 label", make_token(u, secret, alg="HS512")),
    ]


async def expect_401(port, token, via):
    url = f"ws://127.0.0.1:{port}/ws"
    kw = {}
    if token is not None:
        if via == "header":
            kw["extra_headers"] = {"Authorization": f"Bearer {token}"}
        else:
            url += "?token=" + urllib.parse.quote(token, safe="")
    with pytest.raises(websockets.exceptions.InvalidStatusCode) as ei:
        ws = await asyncio.wait_for(websockets.client.connect(url, open_timeout=5, compression=None, **kw), 6)
        await ws.close()
    assert ei.value.status_code == 401, ei.value


@pytest.mark.parametrize("via", ["header", "query"])
def test_upgrade_rejected_401(cluster, via):
    async def body():
        for label, tok in bad_tokens(cluster.secret):
            try:
                await expect_401(cluster.gw_ports[0], tok, via)
            except BaseException as e:
                raise AssertionError(f"token case '{label}' via {via}: {e!r}") from e
    arun(body())


@pytest.mark.parametrize("via", ["header", "query"])
def test_hello(cluster, via):
    async def body():
        for gw in (0, 1):
            user = uid("hello")
            c = await cluster.client(user, gw=gw, via=via)
            h = c.hello
            assert h["op"] == "hello" and h["user"] == user, h
            assert "rid" not in h, h
            assert str(h["gateway"]) == str(gw) or str(h["gateway"]).endswith(str(gw)), h
            assert isinstance(h["heartbeat"], (int, float)) and h["heartbeat"] > 0, h
            await c.close()
    arun(body())


def test_token_variants_accepted(cluster):
    async def body():
        for sub in ["x" * 64, "A.b_c-9", uid("n")]:
            tok = make_token(sub, cluster.secret, name="Display Name ✓")
            c = await Client.connect(cluster.gw_ports[1], tok)
            assert c.user == sub
            r = await c.ok("rooms")
            assert r["op"] == "rooms" and r["rooms"] == [], r
            await c.close()
    arun(body())
