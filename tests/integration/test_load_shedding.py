"""Concurrency caps: with --history-concurrency=1 and --handshake-concurrency=1
a burst of syncs or upgrades is answered at once, either with data or with
`unavailable` / HTTP 503 + Retry-After, never left hanging (issue 4, mass
reconnect)."""
import asyncio

import pytest
import websockets

from chatlib import Client, arun, http_request, uid


@pytest.fixture(scope="module")
def capped(start_all_instance):
    return start_all_instance("capped", ["--history-concurrency=1", "--handshake-concurrency=1",
                                         "--rate=1000", "--rate-burst=1000"])


def test_sync_burst_is_shed_not_queued(capped):
    async def body():
        room = uid("shed")
        a = await capped.client(uid("a"))
        await a.join(room)
        await a.send_many(room, [str(i) for i in range(5)])
        await a.wait_seqs(room, [1, 2, 3, 4, 5])
        objs = [{"op": "sync", "room": room, "rid": a.next_rid()} for _ in range(30)]
        futs = [a.issue(o) for o in objs]
        for o in objs:
            await a.send_obj(o)
        replies = await asyncio.wait_for(asyncio.gather(*futs), 10)
        hist = [r for r in replies if r.get("op") == "history"]
        shed = [r for r in replies if r.get("op") == "error"]
        assert all(r["code"] == "unavailable" for r in shed), replies
        assert hist and shed, f"{len(hist)} history, {len(shed)} shed"
        assert all([m["seq"] for m in r["messages"]] == [1, 2, 3, 4, 5] for r in hist)
        # once the burst is over, a retry succeeds
        r = await a.req("sync", room=room)
        assert r.get("op") == "history", r
        await a.close()
    arun(body())


def test_handshake_burst_gets_503_with_retry_after(capped):
    async def one(user):
        try:
            c = await Client.connect(capped.port, capped.token(user), timeout=10)
        except websockets.exceptions.InvalidStatusCode as e:
            assert e.status_code == 503, e
            assert e.headers.get("Retry-After") == "1", dict(e.headers)
            return "503"
        await c.close()
        return "ok"

    async def body():
        results = await asyncio.wait_for(asyncio.gather(*(one(uid("u")) for _ in range(40))), 30)
        assert "ok" in results and "503" in results, results
        # metrics count what was shed
        st, _, text = await asyncio.to_thread(http_request, capped.port, "GET", "/metrics")
        shed = [l for l in text.decode().splitlines() if l.startswith("chatd_shed_total")]
        assert shed and float(shed[0].split()[-1]) >= results.count("503"), shed
    arun(body(), timeout=60)
