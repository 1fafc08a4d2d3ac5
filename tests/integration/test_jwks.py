"""Tokens from an identity provider (issue 20, part 3): RS256, ES256 and
EdDSA tokens checked against a JWKS file, chosen by kid; the accepted
algorithms come from the configuration, never from the token; iss and aud;
the JWKS file reloaded on change and on SIGHUP without dropping
connections; the `rooms` claim enforced on join.

Keys are generated per run (python3-cryptography), tokens signed with PyJWT
(python3-jwt); the algorithm-confusion and alg=none tokens are built by
hand, as an attacker would.
"""
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import time
import urllib.parse

import jwt as pyjwt
import pytest
import websockets.client
import websockets.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from chatlib import Client, arun, b64url, make_token, uid
from itconf import JWT_SECRET

ISS = "https://idp.test"
AUD = "chatd"


def _int_b64(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return b64url(n.to_bytes(length, "big"))


def jwk(kid, key):
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        nums = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": _int_b64(nums.n), "e": _int_b64(nums.e)}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        nums = pub.public_numbers()
        return {"kty": "EC", "kid": kid, "crv": "P-256", "x": _int_b64(nums.x, 32), "y": _int_b64(nums.y, 32)}
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64url(raw)}


def new_key(alg):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_jwks(path, keys):
    """Atomically, as a ConfigMap or a deploy tool replaces a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": [jwk(kid, k) for kid, k in keys.items()]}, f)
    os.replace(tmp, path)


def claims(sub, **extra):
    c = {"sub": sub, "exp": int(time.time()) + 600, "iss": ISS, "aud": AUD}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def sign(alg, key, kid, sub, **extra):
    headers = {"kid": kid} if kid is not None else {}
    return pyjwt.encode(claims(sub, **extra), key, algorithm=alg, headers=headers)


def hs256_raw(header, payload, key_bytes):
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(payload).encode())
    sig = hmac.new(key_bytes, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


async def expect_401(port, token, via="header"):
    url = f"ws://127.0.0.1:{port}/ws"
    kw = {}
    if via == "header":
        kw["extra_headers"] = {"Authorization": f"Bearer {token}"}
    else:
        url += "?token=" + urllib.parse.quote(token, safe="")
    with pytest.raises(websockets.exceptions.InvalidStatusCode) as ei:
        ws = await asyncio.wait_for(websockets.client.connect(url, open_timeout=5, compression=None, **kw), 6)
        await ws.close()
    assert ei.value.status_code == 401, ei.value


class IdP:
    def __init__(self, path):
        self.path = path
        self.keys = {"r1": new_key("RS256"), "e1": new_key("ES256"), "d1": new_key("EdDSA")}
        write_jwks(path, self.keys)


@pytest.fixture(scope="module")
def idp(workdir):
    d = os.path.join(workdir, "idp")
    os.makedirs(d, exist_ok=True)
    return IdP(os.path.join(d, "jwks.json"))


@pytest.fixture(scope="module")
def inst(start_all_instance, idp):
    return start_all_instance("jwks1", [f"--jwks-file={idp.path}", f"--jwt-issuer={ISS}",
                                        f"--jwt-audience={AUD}"])


def log_count(inst, event):
    with open(inst.proc.logpath, "rb") as f:
        return len(re.findall(rb"\b" + event.encode() + rb"\b", f.read()))


ALGS = [("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1")]


@pytest.mark.parametrize("alg,kid", ALGS)
def test_asymmetric_accepted(inst, idp, alg, kid):
    async def body():
        for via in ("header", "query"):
            u = uid(alg.lower())
            c = await Client.connect(inst.port, sign(alg, idp.keys[kid], kid, u, name="From IdP"), via=via)
            assert c.user == u, c.hello
            room = uid("r")
            await c.join(room)
            await c.send(room, "signed by " + alg)
            await c.close()
    arun(body())


def test_hs256_secret_still_accepted(inst):
    async def body():
        u = uid("hs")
        c = await Client.connect(inst.port, make_token(u, JWT_SECRET, extra={"iss": ISS, "aud": [AUD, "x"]}))
        assert c.user == u
        await c.close()
    arun(body())


def test_refused_401(inst, idp):
    u = uid("bad")
    stranger = {"RS256": new_key("RS256"), "ES256": new_key("ES256"), "EdDSA": new_key("EdDSA")}
    rsa_pem = idp.keys["r1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_raw = idp.keys["d1"].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    cases = [
        ("wrong kid", sign("RS256", idp.keys["r1"], "r9", u)),
        ("no kid", sign("EdDSA", idp.keys["d1"], None, u)),
        ("kid of another key type", sign("ES256", idp.keys["e1"], "r1", u)),
        ("signed by a stranger under a known kid", sign("ES256", stranger["ES256"], "e1", u)),
        ("stranger RSA under r1", sign("RS256", stranger["RS256"], "r1", u)),
        ("stranger Ed25519 under d1", sign("EdDSA", stranger["EdDSA"], "d1", u)),
        ("unknown alg RS512", sign("RS512", idp.keys["r1"], "r1", u)),
        ("unknown alg PS256", sign("PS256", idp.keys["r1"], "r1", u)),
        ("alg none", b64url(json.dumps({"alg": "none", "kid": "r1"}).encode()) + "." +
         b64url(json.dumps(claims(u)).encode()) + "."),
        # The classic confusion: HS256 MACed with the public key as the secret.
        ("HS256 with the RSA public key PEM", hs256_raw({"alg": "HS256", "kid": "r1"}, claims(u), rsa_pem)),
        ("HS256 with the Ed25519 public key", hs256_raw({"alg": "HS256", "kid": "d1"}, claims(u), ed_raw)),
        ("HS256 with the JWKS file", hs256_raw({"alg": "HS256"}, claims(u), open(idp.path, "rb").read())),
        ("iss mismatch", sign("RS256", idp.keys["r1"], "r1", u, iss="https://evil.test")),
        ("iss missing", sign("RS256", idp.keys["r1"], "r1", u, iss=None)),
        ("aud mismatch", sign("ES256", idp.keys["e1"], "e1", u, aud="another-app")),
        ("aud missing", sign("EdDSA", idp.keys["d1"], "d1", u, aud=None)),
        ("HS256 without iss/aud", make_token(u, JWT_SECRET)),
        ("expired", sign("EdDSA", idp.keys["d1"], "d1", u, exp=int(time.time()) - 5)),
        ("bad rooms claim", sign("EdDSA", idp.keys["d1"], "d1", u, rooms="lobby")),
    ]

    async def body():
        for label, tok in cases:
            try:
                await expect_401(inst.port, tok)
            except BaseException as e:
                raise AssertionError(f"token case '{label}': {e!r}") from e
    arun(body())


def test_rooms_claim(inst, idp):
    async def body():
        u = uid("scoped")
        tok = sign("ES256", idp.keys["e1"], "e1", u, rooms=["lobby", "team-*"])
        c = await Client.connect(inst.port, tok)
        await c.join("lobby")
        await c.join("team-" + uid("x"))
        for room in ("lobby2", uid("other"), "team"):
            await c.expect_error({"op": "join", "room": room}, "forbidden")
        # Nothing listed: no room at all.
        c2 = await Client.connect(inst.port, sign("ES256", idp.keys["e1"], "e1", uid("none"), rooms=[]))
        await c2.expect_error({"op": "join", "room": "lobby"}, "forbidden")
        # No claim: no restriction.
        c3 = await Client.connect(inst.port, sign("ES256", idp.keys["e1"], "e1", uid("free")))
        await c3.join(uid("anywhere"))
        for x in (c, c2, c3):
            await x.close()
    arun(body())


def test_reload_on_change_and_sighup(inst, idp):
    """Rotation: a new key is accepted and a removed one refused once the file
    changes, a broken file keeps the keys in use, SIGHUP reloads; the
    connection opened before stays open and keeps working throughout."""
    async def body():
        room = uid("rot")
        old = await Client.connect(inst.port, sign("RS256", idp.keys["r1"], "r1", uid("before")))
        await old.join(room)
        loaded = log_count(inst, "jwks_loaded")

        # Rotate: r1 leaves, r2 arrives (file replaced by a rename).
        new_rsa = new_key("RS256")
        keys = {"r2": new_rsa, "e1": idp.keys["e1"], "d1": idp.keys["d1"]}
        write_jwks(idp.path, keys)
        new_tok = sign("RS256", new_rsa, "r2", uid("after"))
        deadline = time.monotonic() + 20
        while True:
            try:
                c = await Client.connect(inst.port, new_tok)
                break
            except websockets.exceptions.InvalidStatusCode as e:
                assert e.status_code == 401
                assert time.monotonic() < deadline, "the new key was not picked up within 20 s"
                await asyncio.sleep(0.3)
        await c.close()
        assert log_count(inst, "jwks_loaded") > loaded
        await expect_401(inst.port, sign("RS256", idp.keys["r1"], "r1", uid("stale")))
        await old.send(room, "still here after the rotation")

        # A broken file is refused and the keys in use stay.
        failed = log_count(inst, "jwks_load_failed")
        with open(idp.path + ".tmp", "w") as f:
            f.write('{"keys": [{"kty": "RSA", "kid": "r3", "n": "!!", "e": "AQAB"}]}')
        os.replace(idp.path + ".tmp", idp.path)
        deadline = time.monotonic() + 20
        while log_count(inst, "jwks_load_failed") == failed:
            assert time.monotonic() < deadline, "the broken file was not noticed within 20 s"
            await asyncio.sleep(0.2)
        c = await Client.connect(inst.port, new_tok)
        await c.close()

        # SIGHUP reloads (the file is valid again, with r1 back).
        loaded = log_count(inst, "jwks_loaded")
        write_jwks(idp.path, idp.keys)
        deadline = time.monotonic() + 20   # let the poller load the write first
        while log_count(inst, "jwks_loaded") == loaded:
            assert time.monotonic() < deadline, "the valid file was not loaded within 20 s"
            await asyncio.sleep(0.2)
        before = log_count(inst, "jwks_loaded")
        os.kill(inst.proc.p.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while log_count(inst, "jwks_loaded") == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload the JWKS file"
            await asyncio.sleep(0.2)
        assert log_count(inst, "jwks_reload_signal") >= 1
        assert inst.proc.alive()
        c = await Client.connect(inst.port, sign("RS256", idp.keys["r1"], "r1", uid("back")))
        await c.close()
        await expect_401(inst.port, new_tok)

        await old.send(room, "still here after SIGHUP")
        assert not old.closed.is_set()
        await old.close()
    arun(body(), timeout=90)


def test_keys_never_logged(inst, idp):
    with open(inst.proc.logpath, "rb") as f:
        log = f.read()
    assert b"jwks_loaded" in log
    for kid, key in idp.keys.items():
        for member in ("n", "x", "y"):
            v = jwk(kid, key).get(member)
            if v:
                assert v[:24].encode() not in log, f"key material of {kid} ({member}) in the log"


@pytest.mark.parametrize("content,why", [
    ("not json", "not a JSON object"),
    ('{"keys": [{"kty": "OKP", "kid": "a", "crv": "Ed25519", "x": "AAAA"}]}', "OKP key without a valid Ed25519 x"),
    ('{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0LWtleQ"}]}', "private or symmetric key material"),
    (None, "No such file"),
])
def test_bad_jwks_file_stops_start(workdir, content, why):
    """A gateway refuses to start on a JWKS file it cannot use, before it
    connects to anything, saying why (and not what the file holds)."""
    import subprocess
    from itconf import CHATD_BIN, chatd_env
    d = os.path.join(workdir, "badjwks")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, uid("jwks") + ".json")
    if content is not None:
        with open(path, "w") as f:
            f.write(content)
    p = subprocess.run([CHATD_BIN, "--role=gateway", "--kafka=127.0.0.1:1", "--listen=127.0.0.1:0",
                        "--redis=redis://127.0.0.1:1/0", f"--jwks-file={path}"],
                       env=chatd_env(), capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "jwks_load_failed" in out and why in out, out
    assert "c2VjcmV0LWtleQ" not in out, out


@pytest.fixture(scope="module")
def eddsa_only(start_all_instance, idp):
    return start_all_instance("jwks2", [f"--jwks-file={idp.path}", "--jwt-algs=EdDSA"])


def test_configured_algs_only(eddsa_only, idp):
    """--jwt-algs=EdDSA: a valid RS256 or ES256 token, and an HS256 token
    with the right secret, are refused: the configuration decides."""
    async def body():
        u = uid("ed")
        c = await Client.connect(eddsa_only.port, sign("EdDSA", idp.keys["d1"], "d1", u))
        assert c.user == u
        await c.close()
        for label, tok in [("RS256", sign("RS256", idp.keys["r1"], "r1", u)),
                           ("ES256", sign("ES256", idp.keys["e1"], "e1", u)),
                           ("HS256 with the secret", make_token(u, JWT_SECRET))]:
            try:
                await expect_401(eddsa_only.port, tok)
            except BaseException as e:
                raise AssertionError(f"token case '{label}': {e!r}") from e
    arun(body())
