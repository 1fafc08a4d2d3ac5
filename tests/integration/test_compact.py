"""A closed month put in room order online (migration 011,
chatd_messages_compact; issue 24): bench/storage/compact_online.py run small
against the session's PostgreSQL (no chatd, no Kafka): the month is filled in
arrival order, compacted step by step while a store, an edit, a late insert
into that month and a history read go on, each on its own connection."""
import os
import sys

import psycopg2

from chatlib import uid
from itconf import REPO

sys.path.insert(0, os.path.join(REPO, "bench", "storage"))
import compact_online  # noqa: E402


def schema(conninfo):
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    with c.cursor() as cur:
        for name in sorted(os.listdir(os.path.join(REPO, "store", "migrations"))):
            with open(os.path.join(REPO, "store", "migrations", name)) as f:
                cur.execute(f.read())
    c.close()


def test_closed_month_compacted_online_keeps_every_row(pg):
    dbname = "chatd_" + uid("compact").replace("-", "_")
    conninfo = pg.create_db(dbname)
    schema(conninfo)
    rows = 100000
    part = None

    def q(sql, args=()):
        return pg.query(sql, args, db=dbname)

    r = compact_online.run(conninfo, rows=rows, quiet_every=800, lock_ms=300, log=print)
    part = r["part"]
    steps = {s[1]: s for s in r["steps"]}
    assert [s[1] for s in r["steps"] if s[1] != "busy"] == ["started", "copied", "done"], r["steps"]
    copy_s = steps["copied"][3]
    print("pages", r["pages_before"], "->", r["pages_after"], "copy", copy_s, "longest", r["longest"],
          "load", r["load"])

    # (a) and (d): every row once, the late ones (written into the month
    # during every step) and the last edit of each edited message included.
    n, distinct = q(f"SELECT count(*), count(DISTINCT (room, seq)) FROM {part}")[0]
    assert n == distinct == rows + len(r["late_keys"]), (n, distinct, len(r["late_keys"]))
    assert r["count"]["late"].get("copy", 0) > 0   # some were written while the copy ran
    late = {x[0] for x in q(f"SELECT seq FROM {part} WHERE room = 'late'")}
    assert late == set(r["late_keys"])
    bodies = dict(q(f"SELECT id, body FROM {part} WHERE room = 'edited'"))
    assert r["edits"] and all(bodies[k] == v for k, v in r["edits"].items())
    assert q("SELECT count(*) FROM messages WHERE room = 'live'")[0][0] == \
        sum(r["count"]["store"].values())

    # (b) room order: a page of history reads a few pages, not one a row.
    assert r["pages_before"] > 100 and r["pages_after"] < r["pages_before"] / 4, r
    assert r["room_correlation_after"] > 0.9, r

    # (c) nobody waited on the copy: each went on working through it (a
    # copy holding the month SHARE lets an edit or a late insert do one,
    # waiting for the whole copy); the swap held them for its lock only.
    for w, longest in r["longest"].items():
        assert longest.get("copy", 0) < max(1.0, copy_s / 2), (w, longest, copy_s)
        assert r["count"][w].get("copy", 0) >= 5, (w, r["count"], copy_s)
        assert longest.get("swap", 0) < 0.3 + 2.0, (w, longest)

    # The month is a partition again, under its names, with the parent's
    # indexes attached (none built), its notes gone, done once.
    assert q("SELECT pg_get_expr(relpartbound, oid) IS NOT NULL FROM pg_class WHERE relname = %s",
             (part,))[0][0]
    idx = q("SELECT c.relname, p.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_inherits h ON h.inhrelid = i.indexrelid JOIN pg_class p ON p.oid = h.inhparent "
            "WHERE i.indrelid = %s::regclass ORDER BY 1", (part,))
    assert idx == [(f"{part}_pkey", "messages_pkey"), (f"{part}_room_id_ts_idx", "messages_room_id"),
                   (f"{part}_room_target_idx", "messages_room_target")], idx
    assert q("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
             (part,)) == [(f"{part}_pkey",)]
    assert q("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (part,))[0][0] == 0
    assert q("SELECT count(*) FROM chatd_compact_delta")[0][0] == 0
    assert q("SELECT state FROM chatd_compactions WHERE part = %s", (part,)) == [("done",)]
    assert q("SELECT step FROM chatd_messages_compact(86400, 300)") == [("none",)]
    assert q("SELECT count(*) FROM pg_class WHERE relname LIKE %s", (part + "\\_c%",))[0][0] == 0


def test_compact_steps_busy_ordered_gone(pg):
    """The steps' other answers: a month already in room order is only
    marked done; a swap that does not get messages' lock within p_lock_ms
    gives up (busy) with its copy kept, and the next call swaps; a month
    dropped by retention between steps ends gone, its copy dropped."""
    import threading
    import time
    dbname = "chatd_" + uid("compact2").replace("-", "_")
    conninfo = pg.create_db(dbname)
    schema(conninfo)

    def q(sql, args=()):
        return pg.query(sql, args, db=dbname)

    def step():
        return q("SELECT part, step FROM chatd_messages_compact(86400, 300)")[0]

    now = int(time.time() * 1000)
    parts = {}
    for name, days, order in (("a", 100, "i, r"), ("b", 70, "r, i"), ("c", 200, "i, r")):
        ts = now - days * 86400000
        (parts[name],), = q("SELECT chatd_messages_partition(%s)", (ts,))
        q("INSERT INTO messages (room, seq, id, user_id, body, ts) "
          f"SELECT r, i, md5(r || i), 'u', 'b', %s + i FROM unnest('{{x,y}}'::text[]) r, "
          f"generate_series(1, 2000) i ORDER BY {order} RETURNING 1", (ts,))
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    c.cursor().execute("ANALYZE messages")
    assert step() == (parts["b"], "ordered")          # the newest first; in order already
    assert step() == (parts["a"], "started")
    assert step() == (parts["a"], "copied")
    # A migration adds a column (and an index) to messages after the copy:
    # the swap makes the copy again instead of attaching one without them.
    q("ALTER TABLE messages ADD COLUMN extra int; CREATE INDEX messages_extra ON messages (extra); "
      "SELECT 1")
    assert step() == (parts["a"], "started")
    assert step() == (parts["a"], "copied")
    # Someone holds messages (a long statement, a transaction left open).
    holder = psycopg2.connect(conninfo)
    hc = holder.cursor()
    hc.execute("SELECT count(*) FROM messages WHERE room = 'x'")
    waits = []

    def reader():   # queued behind the swap's waiting lock, not longer
        time.sleep(0.1)
        r = psycopg2.connect(conninfo)
        r.autocommit = True
        t0 = time.monotonic()
        r.cursor().execute("SELECT count(*) FROM messages WHERE room = 'y' AND seq < 10")
        waits.append(time.monotonic() - t0)
        r.close()
    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    assert step() == (parts["a"], "busy")
    took = time.monotonic() - t0
    t.join(10)
    assert 0.25 < took < 0.3 + 2.0, took
    assert waits and waits[0] < 0.3 + 2.0, waits
    assert q("SELECT state FROM chatd_compactions WHERE part = %s", (parts["a"],)) == [("swap",)]
    holder.rollback()
    holder.close()
    assert step() == (parts["a"], "done")
    assert q(f"SELECT count(*) FROM {parts['a']}") == [(4000,)]
    assert q(f"SELECT room, seq FROM {parts['a']} ORDER BY ctid LIMIT 3") == [("x", 1), ("x", 2), ("x", 3)]
    # Retention drops c between its steps.
    assert step() == (parts["c"], "started")
    q("SELECT created FROM chatd_messages_maintain(1, %s)", (150 * 86400,))
    assert step() == (parts["c"], "gone")
    assert q("SELECT to_regclass(%s)::text, to_regclass(%s)::text", (parts["c"], parts["c"] + "_c")) == \
        [(None, None)]
    assert step() == (None, "none")
    assert q("SELECT count(*) FROM chatd_compact_delta") == [(0,)]
    c.close()
