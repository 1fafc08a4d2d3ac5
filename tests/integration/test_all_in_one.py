"""A standalone `chatd --role=all` (in-process embedded Kafka, own redis, own
database): round trip, dev tokens, server pings, a Redis outage (unavailable, then seqs
continue after Redis comes back empty), and SIGTERM draining with 1012."""
import asyncio
import json
import signal
import time

import pytest

import kafkamode

from chatlib import (Client, RawWS, arun, http_request, producer_linger, start_redis, uid,
                     wait_http_status)


@pytest.fixture(scope="module")
def inst(start_all_instance):
    return start_all_instance("all1", ["--dev-tokens", "--heartbeat=1", "--pong-timeout=2"])


def test_all_in_one_round_trip(inst):
    room = uid("all")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await inst.client(ua)
        b = await inst.client(ub, via="query")
        assert a.hello["user"] == ua and b.hello["user"] == ub
        assert await a.join(room) == 0
        assert await b.join(room) == 0
        ack = await a.send(room, "hello from a", cid="c1")
        m = await b.wait_event(lambda e: e.get("op") == "msg", what="msg at b")
        assert (m["room"], m["seq"], m["id"], m["from"], m["text"], m["cid"]) == \
            (room, 1, ack["id"], ua, "hello from a", "c1"), m
        await b.send(room, "hello from b")
        await a.wait_seqs(room, [1, 2])
        h = await b.sync(room)
        assert [(x["seq"], x["from"], x["text"]) for x in h["messages"]] == \
            [(1, ua, "hello from a"), (2, ub, "hello from b")] and h["more"] is False
        r = await a.ok("rooms")
        assert [(x["room"], x["seq"]) for x in r["rooms"]] == [(room, 2)], r
        await a.close()
        await b.close()
    arun(body())

    st, _, body_ = http_request(inst.port, "GET", f"/api/rooms/{room}/messages",
                                headers={"Authorization": f"Bearer {inst.token(ua)}"})
    assert st == 200 and [m["seq"] for m in json.loads(body_)["messages"]] == [1, 2]
    for path in ("/healthz", "/readyz", "/metrics"):
        st, _, _ = http_request(inst.port, "GET", path)
        assert st == 200, path
    rows = inst_query(inst, "SELECT count(*) FROM messages WHERE room = %s", (room,))
    assert rows == [(2,)], rows


def inst_query(inst, sql, args=()):
    import psycopg2
    c = psycopg2.connect(inst.conninfo, connect_timeout=5)
    try:
        with c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        c.close()


def test_all_in_one_producer_linger(inst):
    """One producer serves both roles; the gateway's batching wins."""
    assert producer_linger(inst.proc) == "2"


def test_all_in_one_dev_token(inst):
    user = uid("dev")
    st, _, body = http_request(inst.port, "POST", "/api/dev/token", body={"user": user})
    assert st == 200, (st, body)
    tok = json.loads(body)["token"]

    async def body_():
        c = await Client.connect(inst.port, tok)
        assert c.user == user
        await c.close()
    arun(body_())


def test_redis_outage_unavailable_then_seqs_continue(inst):
    room = uid("outage")
    ua = uid("a")
    port = inst.redis.port

    async def body():
        a = await inst.client(ua)
        await a.join(room)
        await a.send_many(room, ["1", "2", "3"])
        await a.wait_seqs(room, [1, 2, 3])
        # A room id that SQL would read as NULL if it were not quoted.
        await a.join("NULL")
        await a.send_many("NULL", ["n1", "n2"])
        await a.wait_seqs("NULL", [1, 2])

        inst.redis.stop(sig=signal.SIGKILL, timeout=10)
        try:
            await asyncio.to_thread(wait_http_status, inst.port, "/readyz", 503, 15)
            st, _, _ = await asyncio.to_thread(http_request, inst.port, "GET", "/healthz")
            assert st == 200, "healthz must stay 200 while a backend is down"
            # the open connection gets 'unavailable' for a request that needs Redis
            r = await a.req("join", room=uid("new"), timeout=20)
            assert r.get("op") == "error" and r.get("code") == "unavailable", r
            assert not a.closed.is_set()
        finally:
            # Redis comes back EMPTY on the same port.
            inst.redis = await asyncio.to_thread(start_redis, inst.workdir,
                                                 "all1-redis-2", port)
        await asyncio.to_thread(wait_http_status, inst.port, "/readyz", 200, 30)

        b = await inst.client(uid("b"))
        assert await b.join(room) == 3, "head lost after Redis restarted empty"
        await a.send(room, "4")
        await b.wait_seqs(room, [4])
        await a.wait_seqs(room, [4])
        h = await a.sync(room)
        assert [(m["seq"], m["text"]) for m in h["messages"]] == \
            [(1, "1"), (2, "2"), (3, "3"), (4, "4")], h
        # Nobody joined NULL since the restart: the classifier alone must
        # continue its seqs from PostgreSQL, not restart them at 1.
        await a.send("NULL", "n3")
        await a.wait_seqs("NULL", [3])
        h = await a.sync("NULL")
        assert [(m["seq"], m["text"]) for m in h["messages"]] == \
            [(1, "n1"), (2, "n2"), (3, "n3")], h
        await a.close()
        await b.close()
    arun(body(), timeout=90)


def test_server_pings_idle_clients(inst):
    # A client that never answers pings, and one that does (websockets
    # answers them), idle side by side: the wait for the first to be closed
    # is the second's time to be left alone (one 4 s wait, not two).
    ws = RawWS(inst.port, inst.token(uid("mute")), timeout=15)
    try:
        op, data = ws.read_frame()
        assert op == 0x1 and b"hello" in data

        async def body():
            a = await inst.client(uid("hb"))
            await asyncio.sleep(4)  # > heartbeat + pong timeout
            assert not a.closed.is_set(), f"a ponging client was closed ({a.ws.close_code})"
            await a.ok("rooms")
            await a.close()
        arun(body())

        # the mute one: pinged, then closed (frames read from its buffer)
        t0 = time.monotonic()
        saw_ping, closed = False, None
        while time.monotonic() - t0 < 12:
            try:
                op, data = ws.read_frame()
            except (EOFError, ConnectionResetError):
                closed = "eof"
                break
            if op == 0x9:
                saw_ping = True
            elif op == 0x8:
                closed = "close frame"
                break
        assert saw_ping, "server never pinged an idle client (--heartbeat=1)"
        assert closed, "a client that does not answer pings was not closed"
    finally:
        ws.close()


def test_sigterm_closes_clients_1012(inst):
    async def body():
        a = await inst.client(uid("term"))
        inst.proc.send_signal(signal.SIGTERM)
        code = await a.wait_closed(20)
        assert code == 1012, f"close code {code} on SIGTERM, reason {a.ws.close_reason!r}"
    arun(body())
    t0 = time.monotonic()
    inst.proc.wait_exit(30)
    assert inst.proc.p.returncode == 0, \
        f"exit code {inst.proc.p.returncode} after SIGTERM\n{inst.proc.tail()}"
    assert time.monotonic() - t0 < 30


@pytest.mark.skipif(kafkamode.REAL, reason="the embedded broker's topics live in its process")
def test_restarted_embedded_broker_with_postgresql_kept(start_all_instance):
    """The embedded broker keeps its topics in memory: a restart starts
    chat-send again at offset 0, while PostgreSQL keeps each partition's
    next_offset of the earlier topic (migrations/009). The new owner took
    it as done and dropped every acked message below it (the first ones
    after the restart: acked, never stored). An offset past the partition's
    end is an earlier topic's, and is not resumed at."""
    from chatlib import Proc, wait_ready
    from itconf import READY_TIMEOUT
    inst = start_all_instance("rebroker", ["--dev-tokens"])
    room, user = uid("rb"), uid("u")

    async def before():
        c = await inst.client(user)
        await c.join(room)
        await c.send_many(room, [f"before {i}" for i in range(6)])
        await c.wait_seqs(room, range(1, 7))
        await c.close()
    arun(before())
    deadline = time.monotonic() + 15      # written once the partition is quiet (1 s)
    while time.monotonic() < deadline:
        rows = inst_query(inst, "SELECT max(next_offset) FROM partition_owners")
        if rows and rows[0][0] and rows[0][0] >= 7:
            break
        time.sleep(0.2)
    old = inst.proc
    old.stop(timeout=25)
    assert old.check() is None, old.check()
    inst.proc = Proc(old.name + "~2", old.argv, old.logdir, env=old.env, sanitized=True,
                     expect_clean_exit=True)
    wait_ready(inst.proc, inst.port, READY_TIMEOUT)

    async def after():
        c = await inst.client(user)
        await c.send_many(room, [f"after {i}" for i in range(10)])   # one produce
        await c.wait_seqs(room, range(7, 17), timeout=15)
        await c.close()
    arun(after())
