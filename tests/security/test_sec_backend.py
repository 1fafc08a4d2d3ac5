"""Backend work tied to its client (issue 16, finding 3): an upgrade of a
user in many rooms issued several Redis commands per room, and went on
loading and routing them after the client had given up. Rooms are now
registered one script call per batch of 100, and only while the client is
still connected; a slow query fails alone instead of tearing down the
PostgreSQL connection every other request shares."""
import asyncio
import os
import threading
import time

import harness
import psycopg2
import pytest
import redis as redislib

import seclib
from chatlib import Client, uid
from secconf import LIMITS, token

N_ROOMS = LIMITS["max_rooms_per_user"]


def _scripts(sec, kinds=("evalsha", "eval")):
    """Calls Redis has served of these commands (a room registration is one
    EVAL/EVALSHA; dropping a room's route is SREM and HDEL)."""
    r = redislib.Redis(host="127.0.0.1", port=sec.c.redis.port, socket_timeout=5)
    st = r.info("commandstats")
    return sum(st.get(f"cmdstat_{k}", {}).get("calls", 0) for k in kinds)


async def _member_of_many(port, user, n):
    c = await Client.connect(port, token(user))
    try:
        for i in range(n):
            await c.join(uid(f"many{i}"))
            await asyncio.sleep(1.2 / LIMITS["rate"])
    finally:
        await c.close()


def test_upgrade_registers_rooms_in_batches(sec):
    user = uid("many")
    seclib.arun(_member_of_many(sec.gw_ports[0], user, N_ROOMS), timeout=120)
    time.sleep(0.5)
    before = _scripts(sec)
    w = seclib.WS(sec.gw_ports[0], token(user))
    try:
        w.read_until({0x1})  # hello: every room is routed by now
        calls = _scripts(sec) - before
    finally:
        w.close()
    print(f"upgrade of a user in {N_ROOMS} rooms: {calls} Redis script calls")
    assert calls <= (N_ROOMS + 99) // 100 + 1, f"{calls} script calls for {N_ROOMS} rooms"


def test_abandoned_upgrade_stops_loading_rooms(sec):
    """The user's rooms query is held (members locked) while the client gives
    up after 0.3 s; once the query answers, nothing is routed for it."""
    user = uid("gone")
    seclib.arun(_member_of_many(sec.gw_ports[0], user, N_ROOMS), timeout=120)
    time.sleep(0.5)
    before = _scripts(sec)
    drops = _scripts(sec, ("srem", "hdel"))
    conn = psycopg2.connect(sec.c.pg.conninfo(sec.c.dbname), connect_timeout=5)
    try:
        cur = conn.cursor()
        cur.execute("LOCK TABLE members IN ACCESS EXCLUSIVE MODE")
        s = seclib.raw_connect(sec.gw_ports[0])
        req, _ = seclib.upgrade_request(sec.gw_ports[0], token(user))
        s.sendall(req)
        time.sleep(0.3)
        s.close()
        time.sleep(0.5)
    finally:
        conn.rollback()
        conn.close()
    time.sleep(1.0)
    calls = _scripts(sec) - before
    print(f"abandoned upgrade of a user in {N_ROOMS} rooms: {calls} Redis script calls after it left")
    assert calls == 0, f"{calls} room registrations for a client that had left"
    # The user's own route (HDEL + SREM), nothing per room: no room of it was
    # routed, so there is nothing to drop (the other gateway's clients may
    # add a few of their own meanwhile).
    drops = _scripts(sec, ("srem", "hdel")) - drops
    assert drops <= 6, f"{drops} route drops in Redis for an upgrade that routed nothing"
    assert sec.c.log_count("gateway0", "handshake_abandoned", f"user={user}") == 1
def test_slow_query_fails_alone(sec):
    """A query stuck past --backend-timeout-ms (messages locked: a sync) is
    answered `unavailable`; a request queued behind it on the same
    PostgreSQL connection (a join: members and rooms only) still gets its
    answer, and the connection is not reset."""
    a_user, b_user, room = uid("slowa"), uid("slowb"), uid("slowroom")

    async def run():
        a = await Client.connect(sec.gw_ports[0], token(a_user))
        b = await Client.connect(sec.gw_ports[0], token(b_user))
        try:
            await a.join(room)
            await a.send(room, "before the lock")
            await b.join(uid("other"))
            resets = sec.c.log_count("gateway0", "pg_connected")
            conn = psycopg2.connect(sec.c.pg.conninfo(sec.c.dbname), connect_timeout=5)
            release = threading.Timer(3.0, conn.rollback)
            try:
                conn.cursor().execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                release.start()
                slow = asyncio.ensure_future(a.req("sync", room=room, timeout=15))
                await asyncio.sleep(1.0)  # queued behind it, well before its timeout
                fast = await b.req("join", room=uid("bystander"), timeout=15)
                r = await slow
            finally:
                release.join()
                conn.close()
            assert r.get("op") == "error" and r.get("code") == "unavailable", r
            assert fast.get("op") == "ok", f"a bystander's request failed with the slow one: {fast}"
            assert sec.c.log_count("gateway0", "pg_connected") == resets, "the PostgreSQL connection was reset"
            page = await a.sync(room)
            assert [m["text"] for m in page["messages"]] == ["before the lock"]
        finally:
            await a.close()
            await b.close()

    seclib.arun(run(), timeout=60)


def test_one_users_rooms_flood_does_not_stall_the_gateway(sec):
    """Defaults of a gateway (rate 20/s, burst 50, 32 connections a user,
    1000 rooms a user): one signed-in user in 1000 rooms sends `rooms` from
    each of its 32 connections, within the rate limit, reading every
    reply. A bystander on the same gateway syncs a room meanwhile; its
    syncs must keep answering within the suite's latency floor. Measured
    on 4182375: the rooms query takes ~18 ms in PostgreSQL, ~5,300 requests
    in 6 s queue ~95 s of work on the gateway's one PostgreSQL connection
    and pin its loop (8.4 s CPU); the bystander's sync took 5 s, then got
    no answer within 10 s. --max-inflight-per-user (16) bounds one user's
    share: the test checks the cap refused some of the flood (so the flood
    was real). With the cap lifted (--max-inflight-per-user=100000 added to
    gw_args) it fails as before: measured on 57abcba+cap, not run in CI
    (46 s)."""
    import json
    c = harness.Cluster(os.path.dirname(sec.c.dir), sec.c.pg, "roomsflood", n_gw=1, n_cl=1,
                        gw_args=["--rate=20", "--rate-burst=50", "--max-conns-per-user=32",
                                 "--max-rooms-per-user=1000"])
    c.start()
    try:
        user, n_rooms, conns, dur = uid("flood"), 1000, 32, 5.0
        rooms = [f"{user}-{i:04d}" for i in range(n_rooms)]
        c.query("INSERT INTO rooms (room) SELECT unnest(%s::text[]) RETURNING 1", (rooms,))
        c.query("INSERT INTO members (room, user_id) SELECT unnest(%s::text[]), %s RETURNING 1",
                (rooms, user))
        c.query("INSERT INTO messages (room, seq, id, user_id, body, ts) SELECT r, s, "
                "md5(r || s), 'x', 'hello', 0 FROM unnest(%s::text[]) r, "
                "generate_series(1, 20) s RETURNING 1", (rooms,))

        async def bystander(stop, lat, errs):
            b = await Client.connect(c.gw_ports[0], token(uid("by")))
            room = uid("by-room")
            await b.join(room)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = await b.req("sync", room=room, timeout=10)
                    if r.get("op") == "error":
                        errs.append(r.get("code"))
                except Exception as e:  # noqa: BLE001 - no answer at all
                    errs.append(type(e).__name__)
                lat.append(time.monotonic() - t0)
                await asyncio.sleep(0.1)
            await b.close()

        async def attacker(stop):
            a = await Client.connect(c.gw_ports[0], token(user), timeout=30)
            rid, budget, t0 = 0, 50.0, time.monotonic()
            try:
                while not stop.is_set():
                    now = time.monotonic()
                    budget, t0 = min(50.0, budget + (now - t0) * 20), now
                    while budget >= 1:     # within --rate / --rate-burst
                        rid, budget = rid + 1, budget - 1
                        await a.ws.send(json.dumps({"op": "rooms", "rid": rid}))
                    await asyncio.sleep(0.05)
            finally:
                await a.close()

        async def run():
            stop, lat, errs = asyncio.Event(), [], []
            ats = [asyncio.ensure_future(attacker(stop)) for _ in range(conns)]
            bt = asyncio.ensure_future(bystander(stop, lat, errs))
            await asyncio.sleep(dur)
            stop.set()
            await asyncio.gather(bt, *ats, return_exceptions=True)
            return lat, errs

        lat, errs = seclib.arun(run(), timeout=120)
        refused = c.metric("gateway0", "chatd_user_inflight_refused_total")
        print(f"rooms flood by one user: bystander syncs {len(lat)}, max {max(lat):.2f} s, "
              f"errors {errs[:5]}, flood requests refused by the cap {refused:.0f}")
        assert refused > 0, "the flood never reached --max-inflight-per-user: not a test of it"
        assert not errs and max(lat) <= 3.0, \
            f"a bystander's sync: max {max(lat):.2f} s, errors {errs[:5]} ({len(lat)} syncs)"
    finally:
        problems = c.stop()
        assert not problems, problems


def test_change_of_no_message_stops_when_client_left(sec):
    """Edits of ids that are no message (a hostile client's) each look for
    their target again for --backend-timeout-ms (2 s); once the client has
    left, they stop: before, each polled PostgreSQL on to the end, so a
    client reconnecting in a loop kept ~10 queries per edit going after it."""
    import json
    import chatlib
    user, room, n = uid("edgone"), uid("edroom"), 12
    port = sec.gw_ports[1]  # no admin listener: /metrics on the client port

    def queries():
        return chatlib.metric_sum(chatlib.read_metrics(port), "chatd_pg_seconds_count")

    async def run():
        c = await Client.connect(port, token(user))
        await c.join(room)
        for i in range(n):
            await c.ws.send(json.dumps({"op": "edit", "rid": f"g{i}", "room": room,
                                        "id": os.urandom(16).hex(), "text": "x"}))
        await asyncio.sleep(0.3)
        await c.close()
    seclib.arun(run())
    time.sleep(0.3)
    before = queries()
    time.sleep(2.5)
    after = queries() - before
    print(f"{n} edits of no message: {after:.0f} PostgreSQL queries after their client left")
    assert after <= n / 2, f"{after:.0f} queries after the client left ({n} edits polling on)"
