"""Backend work tied to its client (issue 16, finding 3): an upgrade of a
user in many rooms issued several Redis commands per room, and went on
loading and routing them after the client had given up. Rooms are now
registered one script call per batch of 100, and only while the client is
still connected; a slow query fails alone instead of tearing down the
PostgreSQL connection every other request shares."""
import asyncio
import time

import psycopg2
import redis as redislib

import seclib
from chatlib import Client, uid
from secconf import LIMITS, token

N_ROOMS = LIMITS["max_rooms_per_user"]


def _scripts(sec):
    """EVAL + EVALSHA calls Redis has served (a room registration is one)."""
    r = redislib.Redis(host="127.0.0.1", port=sec.c.redis.port, socket_timeout=5)
    st = r.info("commandstats")
    return sum(st.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


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
    assert sec.c.log_count("gateway0", "handshake_abandoned", f"user={user}") == 1
