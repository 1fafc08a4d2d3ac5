"""Membership as the gateways enforce it equals PostgreSQL's, whatever order
the joined/left records arrive in (issue 22, docs/ARCHITECTURE.md
"Membership order"), side effects of a join or leave whose reply was lost,
and the catch-up `sync` that must not say "you have everything" while a
message it owes is sequenced but not stored.

Every interleaving is forced, not hoped for:
- a late `joined`: Redis is paused for writes (CLIENT PAUSE WRITE) while a
  connection joins and leaves; the join's record is produced after its
  Redis script, so it reaches Kafka after the leave's;
- a late `left`: the very record the gateway produced is produced again
  (kcat) after the rejoin, as a delayed producer would deliver it;
- a message sequenced but not stored: the test holds
  `LOCK TABLE messages IN EXCLUSIVE MODE` (reads pass, inserts wait).
"""
import asyncio
import json
import os
import subprocess

import psycopg2
import pytest
import redis as redislib

from chatlib import arun, http_request, uid


def _redis(cluster):
    return redislib.Redis(host="127.0.0.1", port=cluster.redis.port, socket_timeout=5)


def _brokers(cluster):
    return cluster.brokers()


def produce_member_record(cluster, typ, room, user, quiet=False):
    """A joined ('j') or left ('l') record on chat-send exactly as a gateway
    writes it (key = room, headers v, t, u; value = the client frame)."""
    op = {"j": "joined", "l": "left"}[typ]
    val = json.dumps({"op": op, "room": room, "user": user}, separators=(",", ":"))
    if quiet:
        val = val[:-1] + ',"quiet":true}'
    subprocess.run(["kcat", "-P", "-b", _brokers(cluster), "-t", "chat-send", "-k", room,
                    "-H", "v=1", "-H", f"t={typ}", "-H", f"u={user}"],
                   input=val.encode(), check=True, timeout=30)


def rest_status(cluster, gw, user, room):
    tok = cluster.token(user)
    st, _, _ = http_request(cluster.gw_ports[gw], "GET", f"/api/rooms/{room}/messages",
                            headers={"Authorization": f"Bearer {tok}"})
    return st


def pg_member(cluster, room, user):
    return bool(cluster.pg.query("SELECT 1 FROM members WHERE room = %s AND user_id = %s",
                                 (room, user)))


async def member_event(c, op, room, user, timeout=10):
    return await c.wait_event(lambda e: e.get("op") == op and e.get("room") == room
                              and e.get("user") == user, timeout=timeout,
                              what=f"{op} of {user} in {room}")


async def assert_not_member(c, room):
    """Every check the gateway makes says not a member."""
    for op, extra in (("send", {"text": "x"}), ("sync", {}), ("presence", {}),
                      ("read", {"seq": 1})):
        await c.expect_error(dict({"op": op, "room": room}, **extra), "not_member")


async def assert_member(c, room, text):
    h = await c.ok("sync", room=room)
    assert h["op"] == "history", h
    p = await c.ok("presence", room=room)
    assert p["op"] == "presence", p
    await c.send(room, text)


async def got_live(c, room, text, within):
    try:
        await c.wait_event(lambda e: e.get("op") == "msg" and e.get("room") == room
                           and e.get("text") == text, timeout=within, what=f"msg {text!r}")
        return True
    except AssertionError:
        return False


def test_late_joined_after_back_to_back_join_leave(cluster):
    """join then leave on one connection; the join's `joined` record reaches
    the gateways after the leave's `left`: the connection must stay out."""
    room, user, other = uid("jl"), uid("u"), uid("c")
    r = _redis(cluster)

    async def body():
        c = await cluster.client(other, gw=0)
        await c.join(room)
        u = await cluster.client(user, gw=0)
        # Writes pause for 1 s (below --backend-timeout-ms): the join's
        # Redis script (and so its `joined` record) waits, the leave does not.
        r.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        join = {"op": "join", "rid": u.next_rid(), "room": room}
        leave = {"op": "leave", "rid": u.next_rid(), "room": room}
        fj, fl = u.issue(join), u.issue(leave)
        await u.ws.send(json.dumps(join))
        await u.ws.send(json.dumps(leave))
        rl = await u.await_reply(leave, fl)
        await member_event(c, "left", room, user)
        rj = await u.await_reply(join, fj)
        # the join committed first, but the leave did too before its record
        # was in Kafka: answered not_member (not `ok`: it is not a member)
        assert rl["op"] == "ok" and rj.get("code") == "not_member", (rl, rj)
        await member_event(c, "joined", room, user)      # the late record
        assert not pg_member(cluster, room, user)
        await asyncio.sleep(0.5)                          # the gateway's check
        await assert_not_member(u, room)
        assert rest_status(cluster, 0, user, room) == 403
        await c.send(room, "after")
        assert await got_live(c, room, "after", 10)
        assert not await got_live(u, room, "after", 1.0), \
            "a connection that left still receives the room"
        await u.close()
        await c.close()
    arun(body())


def test_stale_left_after_rejoin_on_other_gateway(cluster):
    """leave on gateway 0, then (after its ok) join on gateway 1; the leave's
    `left` arrives again after the rejoin: both connections stay members."""
    room, user, other = uid("lj"), uid("u"), uid("c")

    async def body():
        c0 = await cluster.client(other, gw=0)
        await c0.join(room)
        u0 = await cluster.client(user, gw=0)
        u1 = await cluster.client(user, gw=1)
        await u0.join(room)
        await member_event(c0, "joined", room, user)
        await u0.ok("leave", room=room)
        await member_event(c0, "left", room, user)
        await u1.join(room)
        await member_event(c0, "joined", room, user)
        assert pg_member(cluster, room, user)
        produce_member_record(cluster, "l", room, user)   # the delayed `left`
        await member_event(c0, "left", room, user)
        await asyncio.sleep(0.5)                           # the gateways' checks
        for i, u in enumerate((u0, u1)):
            await assert_member(u, room, f"from u{i}")
            assert rest_status(cluster, i, user, room) == 200
        await c0.send(room, "to both")
        for u in (u0, u1):
            assert await got_live(u, room, "to both", 10), "a member misses live messages"
        for x in (u0, u1, c0):
            await x.close()
    arun(body())


def test_stale_joined_after_leave_on_other_gateway(cluster):
    """join on gateway 1, then leave on gateway 0; the join's `joined`
    arrives again after the leave: neither connection is a member."""
    room, user, other = uid("jl2"), uid("u"), uid("c")

    async def body():
        c0 = await cluster.client(other, gw=0)
        await c0.join(room)
        u0 = await cluster.client(user, gw=0)
        u1 = await cluster.client(user, gw=1)
        await u1.join(room)
        await member_event(c0, "joined", room, user)
        await u0.ok("leave", room=room)
        await member_event(c0, "left", room, user)
        produce_member_record(cluster, "j", room, user)   # the delayed `joined`
        await member_event(c0, "joined", room, user)
        await asyncio.sleep(0.5)
        assert not pg_member(cluster, room, user)
        for i, u in enumerate((u0, u1)):
            await assert_not_member(u, room)
            assert rest_status(cluster, i, user, room) == 403
        await c0.send(room, "nobody else")
        for u in (u0, u1):
            assert not await got_live(u, room, "nobody else", 1.0)
        for x in (u0, u1, c0):
            await x.close()
    arun(body())


def test_concurrent_leave_and_join_on_two_gateways(cluster):
    """leave on gateway 0 and join on gateway 1 at the same time; whichever
    PostgreSQL committed last, the record of the other change arrives again
    after both: both connections must end as PostgreSQL says. The join may
    be answered `not_member` when the leave committed after it, before its
    record was in Kafka (PROTOCOL: a join's answer never gives back a room a
    later `left` took); never when PostgreSQL ends with the member."""
    room, user, other = uid("cc"), uid("u"), uid("c")

    async def body():
        c0 = await cluster.client(other, gw=0)
        await c0.join(room)
        u0 = await cluster.client(user, gw=0)
        u1 = await cluster.client(user, gw=1)
        await u0.join(room)
        await member_event(c0, "joined", room, user)
        leave = {"op": "leave", "rid": u0.next_rid(), "room": room}
        join = {"op": "join", "rid": u1.next_rid(), "room": room}
        fl, fj = u0.issue(leave), u1.issue(join)
        await asyncio.gather(u0.ws.send(json.dumps(leave)), u1.ws.send(json.dumps(join)))
        rl, rj = await u0.await_reply(leave, fl), await u1.await_reply(join, fj)
        assert rl["op"] == "ok", (rl, rj)
        await asyncio.sleep(0.5)            # both records are through
        member = pg_member(cluster, room, user)
        assert rj["op"] == "ok" or (rj.get("code") == "not_member" and not member), (rl, rj, member)
        # the record of the change PostgreSQL did not end with, late
        late = "l" if member else "j"
        produce_member_record(cluster, late, room, user)
        await member_event(c0, "left" if late == "l" else "joined", room, user)
        await asyncio.sleep(0.5)
        for i, u in enumerate((u0, u1)):
            if member:
                await assert_member(u, room, f"from u{i}")
            else:
                await assert_not_member(u, room)
            assert rest_status(cluster, i, user, room) == (200 if member else 403)
        for x in (u0, u1, c0):
            await x.close()
    arun(body())


# --------------------------------------------------------------------------
# side effects of a join or leave whose reply was lost

class TableLock:
    """LOCK TABLE t IN EXCLUSIVE MODE from the test: reads pass, writes wait
    until release() (the statement is blocked, not refused)."""

    def __init__(self, cluster, table):
        self.conn = psycopg2.connect(cluster.pg.conninfo(), connect_timeout=5)
        with self.conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")

    def release(self):
        if self.conn:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


async def wait_pg(cond, what, timeout=15):
    deadline = asyncio.get_event_loop().time() + timeout
    while not cond():
        assert asyncio.get_event_loop().time() < deadline, f"PostgreSQL: {what} not reached"
        await asyncio.sleep(0.05)


async def retry_ok(c, op, timeout=15, **fields):
    """op until it is not answered unavailable (the gateway's PostgreSQL
    connection was reset by a timed-out query and reconnects)."""
    deadline = asyncio.get_event_loop().time() + timeout
    while True:
        r = await c.req(op, **fields)
        if r.get("op") != "error":
            return r
        assert r.get("code") == "unavailable" and asyncio.get_event_loop().time() < deadline, r
        await asyncio.sleep(0.2)


async def eventually_acked(c, room, text, timeout=10):
    """send until acked: the membership reaches the user's other gateways
    one Kafka hop and one database round trip after the commit."""
    deadline = asyncio.get_event_loop().time() + timeout
    while True:
        r = await c.req("send", room=room, text=text)
        if r.get("op") == "ack":
            return r
        assert r.get("code") == "not_member" and asyncio.get_event_loop().time() < deadline, r
        await asyncio.sleep(0.1)


def dm_pair():
    a, b = sorted([uid("a"), uid("b")])
    return a, b, f"dm:{a}:{b}"


def test_dm_join_of_a_closed_client_still_makes_the_peer_a_member(cluster):
    """The client sends `join dm:A:B` and closes before the insert commits
    (members is locked meanwhile): B is a member, told, and reachable."""
    a, b, room = dm_pair()

    async def body():
        cb = await cluster.client(b, gw=1)
        ca = await cluster.client(a, gw=0)
        lock = TableLock(cluster, "members")
        try:
            await ca.ws.send(json.dumps({"op": "join", "rid": 1, "room": room}))
            await asyncio.sleep(0.3)
            await ca.close()
            await asyncio.sleep(0.3)
        finally:
            lock.release()   # within --backend-timeout-ms: the insert commits
        await wait_pg(lambda: pg_member(cluster, room, a), "A's membership")
        assert pg_member(cluster, room, b), "the DM's peer is not a member"
        await member_event(cb, "joined", room, b)
        rooms = (await cb.ok("rooms"))["rooms"]
        assert room in [x["room"] for x in rooms], rooms
        await cb.sync(room)
        await eventually_acked(cb, room, "hi a")
        ca = await cluster.client(a, gw=0)
        await ca.send(room, "hi b")
        assert await got_live(cb, room, "hi b", 10)
        await ca.close()
        await cb.close()
    arun(body())


def test_dm_join_that_timed_out_but_committed_is_completed_by_the_retry(cluster):
    """`join dm:A:B` answers unavailable (the insert waits on a lock past
    --backend-timeout-ms) but commits; the retry answers ok and B is a
    member, reachable on its open connection."""
    a, b, room = dm_pair()

    async def body():
        cb = await cluster.client(b, gw=1)
        ca = await cluster.client(a, gw=0)
        lock = TableLock(cluster, "members")
        try:
            r = await ca.req("join", room=room, timeout=15)
            assert r.get("code") == "unavailable", r
        finally:
            lock.release()
        await wait_pg(lambda: pg_member(cluster, room, a), "the timed-out insert committed")
        r = await retry_ok(ca, "join", room=room)
        assert r["op"] == "ok", r
        assert pg_member(cluster, room, b), "the DM's peer is not a member"
        rooms = (await cb.ok("rooms"))["rooms"]
        assert room in [x["room"] for x in rooms], rooms
        await cb.sync(room)
        await eventually_acked(cb, room, "hi a")
        await ca.send(room, "hi b")
        assert await got_live(cb, room, "hi b", 10)
        await ca.close()
        await cb.close()
    arun(body())


def test_leave_that_timed_out_but_committed_reaches_other_gateways_on_retry(cluster):
    """`leave` answers unavailable but commits; its retry answers ok and the
    user's connection on the other gateway stops receiving the room."""
    room, user, other = uid("lt"), uid("u"), uid("c")

    async def body():
        c1 = await cluster.client(other, gw=1)
        await c1.join(room)
        u0 = await cluster.client(user, gw=0)
        u1 = await cluster.client(user, gw=1)
        await u0.join(room)
        await eventually_acked(u1, room, "member on gw1")
        lock = TableLock(cluster, "members")
        try:
            r = await u0.req("leave", room=room, timeout=15)
            assert r.get("code") == "unavailable", r
        finally:
            lock.release()
        await wait_pg(lambda: not pg_member(cluster, room, user), "the timed-out delete committed")
        assert (await retry_ok(u0, "leave", room=room))["op"] == "ok"
        deadline = asyncio.get_event_loop().time() + 10
        while True:   # the other gateway learns it within a hop and a round trip
            r = await u1.req("send", room=room, text="still?")
            if r.get("code") == "not_member":
                break
            assert asyncio.get_event_loop().time() < deadline, \
                "the other gateway still takes sends for a room the user left"
            await asyncio.sleep(0.2)
        await c1.send(room, "after leave")
        assert await got_live(c1, room, "after leave", 10)
        assert not await got_live(u1, room, "after leave", 1.0)
        for x in (u0, u1, c1):
            await x.close()
    arun(body())


# --------------------------------------------------------------------------
# catch-up sync while a sequenced message is not stored yet

async def wait_head(cluster, room, seq, timeout=10):
    r = _redis(cluster)
    deadline = asyncio.get_event_loop().time() + timeout
    while int(r.get(f"{{room:{room}}}:seq") or 0) < seq:
        assert asyncio.get_event_loop().time() < deadline, f"{room} never sequenced {seq}"
        await asyncio.sleep(0.02)


def test_sync_waits_for_a_sequenced_message_to_be_stored(cluster):
    """A message is sequenced while the reader is offline and stored only
    after the reader reconnected and asked `sync` (messages is locked):
    `sync` must not answer "nothing more" without it."""
    room, reader, sender = uid("cu"), uid("r"), uid("s")

    async def body():
        s = await cluster.client(sender, gw=1)
        await s.join(room)
        r = await cluster.client(reader, gw=0)
        await r.join(room)
        await r.close()
        lock = TableLock(cluster, "messages")
        try:
            ack = await s.send(room, "while you were away")
            await wait_head(cluster, room, 1)       # sequenced, routed to nobody offline
            r = await cluster.client(reader, gw=0)
            asyncio.get_event_loop().call_later(0.8, lock.release)
            h = await r.sync(room, after=0)
        finally:
            lock.release()
        assert [(m["seq"], m["id"]) for m in h["messages"]] == [(1, ack["id"])], h
        assert h["more"] is False, h
        await r.close()
        await s.close()
    arun(body())


def test_sync_past_the_wait_says_more_or_unavailable(cluster):
    """Storage stays behind the head longer than --backend-timeout-ms (2 s):
    a page with messages answers more=true, an empty one `unavailable`
    (REST: 503); never more=false without the message."""
    room, reader, sender = uid("cu2"), uid("r"), uid("s")

    async def body():
        s = await cluster.client(sender, gw=1)
        await s.join(room)
        r = await cluster.client(reader, gw=0)
        await r.join(room)
        a1 = await s.send(room, "stored")
        await r.wait_seqs(room, [1])
        await r.close()
        lock = TableLock(cluster, "messages")
        try:
            a2 = await s.send(room, "not yet stored")
            await wait_head(cluster, room, 2)
            r = await cluster.client(reader, gw=0)
            h = await r.sync(room, after=0)
            assert [m["id"] for m in h["messages"]] == [a1["id"]] and h["more"] is True, h
            e = await r.req("sync", room=room, after=1)
            assert e.get("code") == "unavailable", e
            assert rest_status(cluster, 0, reader, room) == 200     # page [1], more
            tok = cluster.token(reader)
            st, _, _ = http_request(cluster.gw_ports[0], "GET",
                                    f"/api/rooms/{room}/messages?after=1",
                                    headers={"Authorization": f"Bearer {tok}"}, timeout=10)
            assert st == 503, st
        finally:
            lock.release()
        h = await r.sync(room, after=1)
        assert [m["id"] for m in h["messages"]] == [a2["id"]] and h["more"] is False, h
        await r.close()
        await s.close()
    arun(body())


def test_leave_during_a_multi_batch_upgrade_is_not_undone(cluster):
    """A user in more rooms than one registration batch (100) upgrades on
    gateway 0 while leaving room X on gateway 1. The upgrade's room list was
    read before the leave; X is in its second batch, which waits on Redis
    (writes paused) while the `left` reaches gateway 0 and its check answers
    "not a member". The upgrade must not add X afterwards from its stale
    list: the connection must answer not_member and not receive X live."""
    user, other = uid("hb"), uid("c")
    rooms = [uid("hb-r") for _ in range(149)]
    x = uid("hb-x")
    r = _redis(cluster)

    async def body():
        c = await cluster.client(other, gw=0)
        await c.join(x)
        # Memberships written directly, X last: the upgrade reads them in
        # that order (members_by_user, heap order), so X is past batch 1.
        cluster.pg.query("INSERT INTO rooms (room) SELECT unnest(%s::text[]) RETURNING 1",
                         (rooms,))
        cluster.pg.query("INSERT INTO members (room, user_id) SELECT r, %s FROM "
                         "unnest(%s::text[]) WITH ORDINALITY AS t(r, i) ORDER BY i RETURNING 1",
                         (user, rooms + [x]))
        u1 = await cluster.client(user, gw=1)
        # At most 1.9 s (below --backend-timeout-ms), ended as soon as the
        # interleaving happened.
        r.execute_command("CLIENT", "PAUSE", "1900", "WRITE")
        try:
            up = asyncio.ensure_future(cluster.client(user, gw=0))
            await asyncio.sleep(0.2)                  # the upgrade waits on batch 1
            await u1.ok("leave", room=x)
            await member_event(c, "left", x, user)    # gateway 0 has the record
            await asyncio.sleep(0.2)                  # and its check's answer
            waited = not up.done()
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        assert waited, "the upgrade did not wait for Redis: nothing was tested"
        u0 = await up
        assert not pg_member(cluster, x, user)
        await assert_not_member(u0, x)
        p = await c.ok("presence", room=x)
        assert user not in p["online"], f"the user who left is shown online in the room: {p}"
        await c.send(x, "after")
        assert not await got_live(u0, x, "after", 1.0), \
            "a connection that left still receives the room"
        for k in (u0, u1, c):
            await k.close()
    arun(body())


def test_sync_waits_after_the_head_key_is_lost(cluster):
    """As test_sync_waits_for_a_sequenced_message_to_be_stored, but Redis
    loses the room's seq key (a restart empty, an eviction) between the
    message's seq and the reader's reconnect: `sync` finds no head to wait
    for and answers before the message is stored. On 09c7018 the classifier
    read the room's gateways with the seq, when the reader was offline, so
    the reader got the message neither by `sync` nor live (xfail then). The
    classifier now reads them after the store: the reader, routed again at
    its reconnect, gets it live."""
    room, reader, sender = uid("cuk"), uid("r"), uid("s")
    rd = _redis(cluster)

    async def body():
        s = await cluster.client(sender, gw=1)
        await s.join(room)
        r = await cluster.client(reader, gw=0)
        await r.join(room)
        await r.close()
        lock = TableLock(cluster, "messages")
        try:
            ack = await s.send(room, "while you were away")
            await wait_head(cluster, room, 1)       # sequenced, routed to nobody offline
            rd.delete(f"{{room:{room}}}:seq")
            r = await cluster.client(reader, gw=0)
            asyncio.get_event_loop().call_later(0.8, lock.release)
            h = await r.sync(room, after=0)
        finally:
            lock.release()
        got = [m["id"] for m in h["messages"]] == [ack["id"]] or \
            await got_live(r, room, "while you were away", 2.0)
        assert got, f"the message reached the reader neither by sync nor live: {h}"
        await r.close()
        await s.close()
    arun(body())


def _lingering_gateway(cluster, linger_ms):
    """A third gateway of the cluster whose producer holds every record
    linger_ms before sending it (a gateway whose records reach Kafka late:
    a loaded producer, a slow link), for the test that starts it."""
    from chatlib import Proc, free_port, wait_ready
    from itconf import READY_TIMEOUT
    g0 = cluster.proc("gateway0")
    port = free_port()
    argv = [a for a in g0.argv if not a.startswith(("--gateway-id=", "--listen=", "--api-listen="))]
    p = Proc("gateway-linger", argv + ["--gateway-id=2", f"--listen=127.0.0.1:{port}",
                                       f"--kafka-opt=linger.ms={linger_ms}"],
             g0.logdir, env=g0.env, sanitized=True, expect_clean_exit=True)
    wait_ready(p, port, READY_TIMEOUT)
    return p, port


def test_join_acked_after_a_removal_gives_the_room_back_to_nobody(cluster):
    """A member's `join` of its private room commits, and its `joined`
    record waits in its gateway's producer while the owner removes it on
    another gateway: the `left` reaches Kafka first and the member's
    gateway drops the room. The join's record then comes (with a message
    sent after the removal, behind it in the same producer). The gateway
    added the room back to the member when Kafka acknowledged the join, so
    the member received that message, after its `left` (PROTOCOL "Removed
    by the server": nothing after the `left`); the join now asks
    PostgreSQL first."""
    from itconf import API_KEY
    room, owner, member, other = uid("pjl"), uid("own"), uid("mem"), uid("oth")
    h = {"Authorization": f"Bearer {API_KEY}"}
    api = cluster.api_ports[0]
    assert http_request(api, "PUT", f"/v1/rooms/{room}", body={"private": True, "owner": owner},
                        headers=h)[0] == 201
    for u in (member, other):
        assert http_request(api, "PUT", f"/v1/rooms/{room}/members/{u}", headers=h)[0] == 200
    gw, port = _lingering_gateway(cluster, 1500)

    async def body():
        from chatlib import Client
        m = await Client.connect(port, cluster.token(member))
        n = await Client.connect(port, cluster.token(other))
        o = await cluster.client(owner, gw=0)
        jobj = {"op": "join", "rid": m.next_rid(), "room": room}
        jfut = m.issue(jobj)
        await m.send_obj(jobj)
        await asyncio.sleep(0.3)              # committed; its record lingers
        await o.ok("remove", room=room, user=member)
        await member_event(m, "left", room, member, timeout=5)
        ack = await n.send(room, "after the removal")   # behind the join's record
        j = await m.await_reply(jobj, jfut, timeout=10)
        await n.wait_event(lambda e: e.get("op") == "msg" and e.get("id") == ack["id"],
                           timeout=10, what="the message")
        await m.drain_events(1.0)
        assert not m.msgs(room), f"removed member got {m.msgs(room)} (join reply {j})"
        assert not pg_member(cluster, room, member)
        assert j.get("op") == "error" and j.get("code") == "not_member", j
        for c in (m, n, o):
            await c.close()
    try:
        arun(body())
    finally:
        gw.stop()
        problem = gw.check()
        assert problem is None, problem
