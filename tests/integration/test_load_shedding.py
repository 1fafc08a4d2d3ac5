"""Concurrency caps: with --history-concurrency=1 and --handshake-concurrency=1
a burst of syncs or upgrades is answered at once, either with data or with
`unavailable` / HTTP 503 + Retry-After, never left hanging (issue 4, mass
reconnect)."""
import asyncio
import base64
import json
import os
import signal

import psycopg2
import pytest

from chatlib import RawWS, arun, http_request, uid


@pytest.fixture(scope="module")
def capped(start_all_instance):
    return start_all_instance("capped", ["--history-concurrency=1", "--handshake-concurrency=1",
                                         "--rate=1000", "--rate-burst=1000"])


def test_sync_burst_is_shed_not_queued(capped):
    """30 syncs written in one TCP write, so the gateway parses them in one
    read: with --history-concurrency=1 the first is served and the others
    are refused at once with `unavailable`, none queued. (Written frame by
    frame, a loaded machine could serve them one at a time and shed none.)"""
    room, user = uid("shed"), uid("a")

    async def setup():
        a = await capped.client(user)
        await a.join(room)
        await a.send_many(room, [str(i) for i in range(5)])
        await a.wait_seqs(room, [1, 2, 3, 4, 5])
        await a.close()
    arun(setup())

    rids = list(range(1, 31))
    replies = {}
    ws = RawWS(capped.port, capped.token(user), timeout=10)
    try:
        op, data = ws.read_frame()
        assert op == 1 and json.loads(data)["op"] == "hello", data
        ws.send_frames([(1, json.dumps({"op": "sync", "room": room, "rid": r}).encode())
                        for r in rids])
        while len(replies) < len(rids):
            op, data = ws.read_frame()
            if op == 1:
                m = json.loads(data)
                if m.get("rid") in rids:
                    replies[m["rid"]] = m
    finally:
        ws.close()
    hist = [r for r in replies.values() if r.get("op") == "history"]
    shed = [r for r in replies.values() if r.get("op") == "error"]
    assert all(r["code"] == "unavailable" for r in shed), replies
    assert hist and shed, f"{len(hist)} history, {len(shed)} shed"
    assert all([m["seq"] for m in r["messages"]] == [1, 2, 3, 4, 5] for r in hist)

    async def retry():  # once the burst is over, a retry succeeds
        a = await capped.client(user)
        r = await a.req("sync", room=room)
        assert r.get("op") == "history", r
        await a.close()
    arun(retry())


def _backends(inst):
    """PIDs of the PostgreSQL backends serving the instance's database."""
    c = psycopg2.connect(inst.conninfo)
    try:
        cur = c.cursor()
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (inst.dbname,))
        return [r[0] for r in cur.fetchall()]
    finally:
        c.close()


def test_handshake_burst_gets_503_with_retry_after(capped):
    """40 sockets connected first, then their 40 upgrade requests written in
    one burst while the instance's PostgreSQL backends are stopped: the
    first upgrade waits for its user's rooms, so the cap (1 upgrade in
    flight) answers every other one at once with 503 + Retry-After; once
    PostgreSQL runs again the first gets its 101. (Without the pause a
    handshake can finish before the next request arrives, and on a fast
    path or a slow client every upgrade may pass one by one.)"""
    async def status(user):
        r, w = await asyncio.open_connection("127.0.0.1", capped.port)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{capped.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {capped.token(user)}\r\n\r\n")
        return r, w, req.encode()

    async def answer(r, w):
        head = await r.readuntil(b"\r\n\r\n")
        w.close()
        lines = head.decode().split("\r\n")
        code = lines[0].split()[1]
        headers = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
        if code == "503":
            assert headers.get("Retry-After") == "1", headers
        return code

    async def body():
        conns = [await status(uid("u")) for _ in range(40)]
        pids = _backends(capped)
        assert pids, "no PostgreSQL backend for the instance"
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            for _, w, req in conns:
                w.write(req)
            await asyncio.gather(*(w.drain() for _, w, _ in conns))
            answers = [asyncio.ensure_future(answer(r, w)) for r, w, _ in conns]
            await asyncio.sleep(0.5)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(*answers), 30)
        assert sorted(results) == ["101"] + ["503"] * 39, results
        # metrics count what was shed
        st, _, text = await asyncio.to_thread(http_request, capped.port, "GET", "/metrics")
        shed = [l for l in text.decode().splitlines() if l.startswith("chatd_shed_total")]
        assert shed and float(shed[0].split()[-1]) >= results.count("503"), shed
    arun(body(), timeout=60)
