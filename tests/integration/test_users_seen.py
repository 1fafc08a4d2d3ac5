"""The users table (name, last_seen) is written in batches, not once per
handshake (store/seen.h): with fsync on, one upsert per handshake had put a
WAL flush in every handshake's path on the gateway's one PostgreSQL
connection (docs/PERFORMANCE.md, connection setup). The rows carry the
transaction that wrote them (xmin), so a storm of handshakes written one by
one shows as one transaction per user."""
import asyncio
import time

from chatlib import arun, uid


def _rows(cluster, users):
    return cluster.pg.query(
        "SELECT user_id, name, xmin::text FROM users WHERE user_id = ANY(%s) ORDER BY user_id",
        (users,))


def _wait_rows(cluster, users, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(cluster, users)
        if len(rows) == len(users) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_a_handshake_storm_is_written_in_few_transactions(cluster):
    users = sorted(uid("seen") for _ in range(16))

    async def storm():
        clients = await asyncio.gather(*(cluster.client(u, name=f"Name {u}") for u in users))
        await asyncio.gather(*(c.close() for c in clients))

    arun(storm())
    rows = _wait_rows(cluster, users)
    assert [r[0] for r in rows] == users, "every user that connected has its row"
    assert all(r[1] == f"Name {r[0]}" for r in rows), rows
    txns = {r[2] for r in rows}
    # One statement a second: a storm inside a second is one or two of them
    # (a flush may fall inside it); written per handshake it was 16.
    assert len(txns) <= 2, f"{len(txns)} transactions for {len(users)} handshakes"


def test_a_nameless_reconnect_keeps_the_name(cluster):
    u = uid("seen")

    async def connect(**kw):
        c = await cluster.client(u, **kw)
        await c.close()

    arun(connect(name="Ada"))
    assert _wait_rows(cluster, [u])[0][1] == "Ada"
    before = cluster.pg.query("SELECT last_seen FROM users WHERE user_id = %s", (u,))[0][0]
    arun(connect())
    deadline = time.monotonic() + 10
    while True:
        name, seen = cluster.pg.query("SELECT name, last_seen FROM users WHERE user_id = %s",
                                      (u,))[0]
        if seen > before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen > before, "the reconnect was recorded"
    assert name == "Ada"
