#!/usr/bin/python3
"""bench/storage/compact_swap_probe.py (issue 24): how long the swap of
chatd_messages_compact (migration 011) blocks a reader of messages.

    /usr/bin/python3 bench/storage/compact_swap_probe.py CONNINFO

CONNINFO: a throwaway database with chatd's schema. Fills November 2026
with 1,000,000 messages as bench/storage/history_pages.sql, runs the
start and copy steps (timed), then the swap step while one connection
reads a room of messages in a loop with no pause (a statement over
messages that does not prune by ts: it waits for any lock on it). Prints
the steps' durations, the lock window by the function's clock
(chatd_compactions.locked_ms), the longest read during the swap step and
outside it, and the load average.
"""
import os
import sys
import threading
import time

import psycopg2

ci = sys.argv[1]
c = psycopg2.connect(ci)
c.autocommit = True
cur = c.cursor()
cur.execute("SELECT chatd_messages_partition(1793577600000)")
cur.execute("""INSERT INTO messages (room, seq, id, user_id, cid, body, ts)
SELECT CASE WHEN i % 9000 = 0 THEN 'quiet' ELSE 'room-' || (floor(2000 * power(random(), 3)))::int END,
       i, md5(i::text), 'user-' || (i % 5000), 'c' || i, repeat('x', 60 + (i % 80)), 1793577600000 + i * 2000
FROM generate_series(1, 1000000) i""")
cur.execute("VACUUM ANALYZE messages")
for _ in range(2):
    t0 = time.monotonic()
    cur.execute("SELECT * FROM chatd_messages_compact(86400, 300)")
    print(cur.fetchone(), f"{(time.monotonic() - t0) * 1000:.0f} ms", "load", os.getloadavg())
stop = threading.Event()
lat = []


def probe():
    p = psycopg2.connect(ci)
    p.autocommit = True
    pc = p.cursor()
    while not stop.is_set():
        t0 = time.monotonic()
        pc.execute("SELECT count(*) FROM messages WHERE room = 'quiet' AND seq > 0 AND seq < 100")
        pc.fetchall()
        lat.append((t0, time.monotonic() - t0))
    p.close()


th = threading.Thread(target=probe)
th.start()
time.sleep(0.3)
t0 = time.monotonic()
cur.execute("SELECT * FROM chatd_messages_compact(86400, 300)")
r = cur.fetchone()
t1 = time.monotonic()
time.sleep(0.3)
stop.set()
th.join()
during = [x for s, x in lat if t0 - 0.01 <= s <= t1]
outside = [x for s, x in lat if not t0 - 0.01 <= s <= t1]
cur.execute("SELECT locked_ms FROM chatd_compactions WHERE part = 'messages_p202611'")
print(r, f"step {(t1 - t0) * 1000:.0f} ms, locked {cur.fetchone()[0]} ms, {len(during)} reads during it, "
      f"longest {max(during) * 1000:.1f} ms (outside: {max(outside) * 1000:.1f} ms)", "load", os.getloadavg())
