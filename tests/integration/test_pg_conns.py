"""A gateway spreads its users over --pg-conns PostgreSQL connections (4 by
default; roles/gateway_internal.h gw_pg): a statement stuck behind a lock
holds up only the users of its own connection. With one pipelined
connection, every join, read and history of the gateway queued behind it
until its statement_timeout (--backend-timeout-ms + a quarter).

The stuck statement is real: the test holds an uncommitted insert of the
very membership user A's join inserts, so A's join waits on that row lock.
"""
import asyncio
import time

import psycopg2

from chatlib import arun, uid

PG_CONNS = 4  # chatd's default --pg-conns


def conn_of(key):
    """gw_pg's FNV-1a, to pick users on different connections."""
    h = 2166136261
    for b in key.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h % PG_CONNS


def test_a_stuck_statement_holds_up_only_its_connection(cluster):
    a = uid("stuck")
    others = []
    while len(others) < 3:
        u = uid("free")
        if conn_of(u) != conn_of(a) and conn_of(u) not in {conn_of(x) for x in others}:
            others.append(u)
    room = uid("lockroom")
    cluster.pg.query("INSERT INTO rooms (room) VALUES (%s) RETURNING 1", (room,))
    blocker = psycopg2.connect(cluster.pg.conninfo(), connect_timeout=5)
    try:
        with blocker.cursor() as cur:  # an open transaction: A's membership row is locked
            cur.execute("INSERT INTO members (room, user_id) VALUES (%s, %s)", (room, a))

        async def body():
            ca = await cluster.client(a)
            cs = [await cluster.client(u) for u in others]
            stuck = asyncio.ensure_future(ca.req("join", room=room, timeout=15))
            await asyncio.sleep(0.3)  # A's join is now waiting on the lock
            assert not stuck.done(), "the join did not wait on the held row lock"
            took = []
            for c in cs:
                t0 = time.monotonic()
                await c.join(uid("free-room"))
                took.append(time.monotonic() - t0)
            r = await stuck
            for c in [ca] + cs:
                await c.close()
            return took, r

        took, r = arun(body(), timeout=60)
    finally:
        blocker.rollback()
        blocker.close()
    # With one connection each join queued behind A's until its statement
    # timeout (2.5 s); on their own connections they take milliseconds.
    assert max(took) < 1.0, f"joins on other connections waited: {took}"
    assert r.get("op") == "error" and r.get("code") == "unavailable", r
