#!/usr/bin/python3
"""bench/storage/compact_online.py (issue 24): a closed month put in room
order online by chatd_messages_compact (migration 011) while stores,
edits, late records into that month and history reads go on.

    /usr/bin/python3 bench/storage/compact_online.py CONNINFO [ROWS [QUIET_EVERY]]

CONNINFO: a throwaway database with chatd's schema (store/migrations/*.sql
applied in order). Fills the month that started ~100 days ago with ROWS
(default 1,000,000) messages over 2,000 skewed rooms in arrival order (room
'quiet' one message in 9,000, as bench/storage/history_pages.sql;
room 'edited' as many, the edits' targets), then
runs the compaction's steps while four connections work: a store shaped as
db_store_msgs (a (room, seq) lookup over messages, then an insert into the
current month), an edit of an old message of the month (an UPDATE over
messages, as db_apply_changes), a late insert into the month, and a page of
history of 'quiet'. Prints the pages a history page reads before and after,
each step's duration, the longest wait of each worker during the copy and
during the swap, and the load average. tests/integration/test_compact.py
runs it small and checks what it returns.
"""
import json
import os
import sys
import threading
import time

import psycopg2

HISTORY = ("SELECT seq, id, user_id, cid, body, ts, kind, target, edited IS NOT NULL, deleted "
           "FROM messages WHERE room = 'quiet' AND seq > 0 ORDER BY seq LIMIT 101")


def connect(conninfo):
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    return c


def history_pages(cur):
    cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + HISTORY)
    plan = cur.fetchone()[0][0]["Plan"]
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


class Worker(threading.Thread):
    """Runs op(cur, i) in a loop on its own connection; records the longest
    call per phase (the main thread sets Worker.phase)."""
    phase = "before"

    def __init__(self, conninfo, name, op):
        super().__init__(daemon=True)
        self.conninfo, self.name, self.op = conninfo, name, op
        self.stop = threading.Event()
        self.longest = {}
        self.count = {}
        self.error = None

    def run(self):
        try:
            c = connect(self.conninfo)
            cur = c.cursor()
            i = 0
            while not self.stop.is_set():
                ph = Worker.phase
                t0 = time.monotonic()
                self.op(cur, i)
                dt = time.monotonic() - t0
                self.longest[ph] = max(self.longest.get(ph, 0.0), dt)
                self.count[ph] = self.count.get(ph, 0) + 1
                i += 1
                time.sleep(0.005)   # a steady trickle, not a CPU hog
            c.close()
        except Exception as e:  # reported by the caller
            self.error = e


def run(conninfo, rows=1000000, quiet_every=9000, min_age_s=86400, lock_ms=300, log=print):
    c = connect(conninfo)
    cur = c.cursor()
    now_ms = int(time.time() * 1000)
    cur.execute("SELECT chatd_messages_partition(%s)", (now_ms - 100 * 86400000,))
    part = cur.fetchone()[0]
    cur.execute("SELECT substring(pg_get_expr(relpartbound, oid) FROM 'FROM \\(''?(-?[0-9]+)')::bigint "
                "FROM pg_class WHERE relname = %s", (part,))
    lo = cur.fetchone()[0]
    cur.execute("SELECT chatd_messages_maintain(1, 0)")
    t0 = time.monotonic()
    cur.execute(
        "INSERT INTO messages (room, seq, id, user_id, cid, body, ts) "
        "SELECT CASE WHEN i %% %s = 0 THEN 'quiet' WHEN i %% %s = 1 THEN 'edited' "
        "ELSE 'room-' || (floor(2000 * power(random(), 3)))::int END, "
        "i, md5(i::text), 'user-' || (i %% 5000), 'c' || i, repeat('x', 60 + (i %% 80)), %s + i "
        "FROM generate_series(1, %s) i", (quiet_every, quiet_every, lo, rows))
    cur.execute("VACUUM ANALYZE messages")
    log(f"filled {part}: {rows} rows in {time.monotonic() - t0:.1f} s")
    before = history_pages(cur)
    cur.execute("SELECT id FROM messages WHERE room = 'edited' ORDER BY seq")
    edited = [r[0] for r in cur.fetchall()]

    late_keys, edits = [], {}

    def store(cur, i):
        seq = 10 ** 9 + i
        cur.execute("SELECT m.id FROM messages m WHERE m.room = 'live' AND m.seq = %s", (seq,))
        cur.execute("INSERT INTO messages (room, seq, id, user_id, body, ts) VALUES "
                    "('live', %s, %s, 'u', 'now', %s)", (seq, f"live-{i}", int(time.time() * 1000)))

    def edit(cur, i):
        mid = edited[i % len(edited)]
        body = f"edited {i}"
        cur.execute("UPDATE messages SET body = %s, edited = %s WHERE room = 'edited' AND id = %s",
                    (body, i + 1, mid))
        edits[mid] = body

    def late(cur, i):
        seq = 10 ** 9 + i
        cur.execute("INSERT INTO messages (room, seq, id, user_id, body, ts) VALUES "
                    "('late', %s, %s, 'u', 'late', %s)", (seq, f"late-{i}", lo + 1000 + i))
        late_keys.append(seq)

    def read(cur, i):
        cur.execute(HISTORY)
        cur.fetchall()

    workers = [Worker(conninfo, n, op) for n, op in
               (("store", store), ("edit", edit), ("late", late), ("read", read))]
    Worker.phase = "before"
    for w in workers:
        w.start()
    time.sleep(0.3)
    steps = []
    busy = 0
    while True:
        Worker.phase = "copy" if steps and steps[-1][1] == "started" else \
            "swap" if steps and steps[-1][1] in ("copied", "busy") else "start"
        t0 = time.monotonic()
        cur.execute("SELECT part, step, n FROM chatd_messages_compact(%s, %s)", (min_age_s, lock_ms))
        p, step, n = cur.fetchone()
        dt = time.monotonic() - t0
        steps.append((p, step, n, dt))
        log(f"step {step} {p} n={n} {dt * 1000:.0f} ms")
        if step == "busy":
            busy += 1
            if busy > 50:
                raise RuntimeError("the swap never got its lock")
            time.sleep(0.2)
            continue
        if step not in ("started", "copied"):
            break
    Worker.phase = "after"
    time.sleep(0.3)
    for w in workers:
        w.stop.set()
    for w in workers:
        w.join(30)
        if w.error:
            raise w.error
    cur.execute("ANALYZE " + part)
    after = history_pages(cur)
    cur.execute("SELECT correlation FROM pg_stats WHERE tablename = %s AND attname = 'room'", (part,))
    corr = cur.fetchone()[0]
    cur.execute("SELECT locked_ms FROM chatd_compactions WHERE part = %s", (part,))
    locked_ms = cur.fetchone()[0]
    res = {
        "part": part, "rows": rows, "pages_before": before, "pages_after": after,
        "room_correlation_after": corr, "steps": steps, "locked_ms": locked_ms,
        "longest": {w.name: w.longest for w in workers},
        "count": {w.name: w.count for w in workers},
        "late_keys": late_keys, "edits": edits, "load": os.getloadavg(),
    }
    c.close()
    return res


if __name__ == "__main__":
    r = run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000000,
            int(sys.argv[3]) if len(sys.argv) > 3 else 9000)
    for k in ("late_keys", "edits"):
        r[k] = len(r[k])
    print(json.dumps(r, indent=1, default=str))
