"""Redis with AUTH (docs/DEPLOY.md, "Replacing a backend"): the password,
and a Redis 6+ ACL user, from the URL redis://[USER]:PASSWORD@HOST...; a
wrong one keeps the process unready and says why; the password never
reaches the log."""
import time

from chatlib import arun, http_request, uid

PASSWORD = "pw-" + "q" * 20 + "@:/"  # needs escaping in the URL
ESCAPED = PASSWORD.replace("@", "%40").replace(":", "%3A").replace("/", "%2F")
ACL_PASSWORD = "acl-" + "z" * 20


def _round_trip(inst):
    room, ua, ub = uid("auth"), uid("a"), uid("b")

    async def body():
        a, b = await inst.client(ua), await inst.client(ub)
        assert await a.join(room) == 0 and await b.join(room) == 0
        await a.send(room, "stored and routed through an authenticated redis")
        await b.wait_seqs(room, [1])
        await a.close()
        await b.close()
    arun(body())


def _log(inst):
    with open(inst.proc.logpath, errors="replace") as f:
        return f.read()


def test_password_from_the_url(start_all_instance):
    inst = start_all_instance("rauth1", redis_password=PASSWORD,
                              redis_url=lambda r: f"redis://:{ESCAPED}@127.0.0.1:{r.port}/3")
    _round_trip(inst)
    log = _log(inst)
    assert "event=redis_connected" in log and "db=3 auth=password" in log, log[-2000:]
    assert PASSWORD not in log and ESCAPED not in log


def test_acl_user(start_all_instance):
    # the default user is off: only AUTH chatd <password> gets in
    acl = ["--user", "chatd", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off"]
    inst = start_all_instance("rauth2", redis_args=acl, redis_user="chatd", redis_password=ACL_PASSWORD,
                              redis_url=lambda r: f"redis://chatd:{ACL_PASSWORD}@127.0.0.1:{r.port}")
    _round_trip(inst)
    log = _log(inst)
    assert "auth=acl" in log and ACL_PASSWORD not in log


def test_wrong_password_is_logged_and_not_ready(start_all_instance):
    inst = start_all_instance("rauth3", redis_password=PASSWORD, ready=False,
                              redis_url=lambda r: f"redis://:wrong-{uid('pw')}@127.0.0.1:{r.port}")
    deadline = time.monotonic() + 30
    while "event=redis_auth_failed" not in _log(inst):
        assert time.monotonic() < deadline, _log(inst)[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)  # well past start-up: still not ready, and alive
    assert inst.proc.alive()
    st, _, body = http_request(inst.port, "GET", "/readyz")
    assert (st, body) == (503, b"not ready\n")
    log = _log(inst)
    line = next(x for x in log.splitlines() if "event=redis_auth_failed" in x)
    assert "user=default" in line and "WRONGPASS" in line, line
    assert "wrong-" not in log and "event=redis_connected" not in log
    # a client is refused cleanly, not hung
    st, _, _ = http_request(inst.port, "GET", "/healthz")
    assert st == 200
