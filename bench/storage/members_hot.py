#!/usr/bin/env python3
"""bench/storage/members_hot.py CONNINFO [FILLFACTOR...]: how many of the
read marks' updates of `members` are HOT (no new index entries) for each
fillfactor (issue 24; migration 008 sets 80). A table shaped like
`members` (bench_members, dropped again) is grown by joins while read
marks are written, as readmarks.c writes them: one UPDATE of up to 500
marks per statement, 70 % of them by recent joiners. Counts from
pg_stat_user_tables (n_tup_upd, n_tup_hot_upd). Run against a throwaway
PostgreSQL (it writes ~100,000 updates)."""
import random
import sys
import time

import psycopg2


def run(conninfo, ff, steps=200, joins=100, marks=500):
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    k = c.cursor()
    k.execute("DROP TABLE IF EXISTS bench_members")
    k.execute("CREATE TABLE bench_members (room text NOT NULL, user_id text NOT NULL, "
              "read_seq bigint NOT NULL DEFAULT 0, joined_at timestamptz NOT NULL DEFAULT now(), "
              "PRIMARY KEY (room, user_id))")
    k.execute("CREATE INDEX bench_members_by_user ON bench_members (user_id)")
    k.execute(f"ALTER TABLE bench_members SET (fillfactor = {int(ff)})")
    rnd = random.Random(1)
    keys = []
    for s in range(steps):
        new = [(f"room-{rnd.randint(1, 1000)}", f"user-{len(keys) + i}") for i in range(joins)]
        keys += new
        k.execute("INSERT INTO bench_members (room, user_id) SELECT * FROM unnest(%s::text[], %s::text[])",
                  ([x[0] for x in new], [x[1] for x in new]))
        b = sorted({rnd.choice(keys[-5000:]) if rnd.random() < 0.7 else rnd.choice(keys)
                    for _ in range(marks)})
        k.execute("UPDATE bench_members m SET read_seq = read_seq + 1 "
                  "FROM unnest(%s::text[], %s::text[]) AS u(room, user_id) "
                  "WHERE m.room = u.room AND m.user_id = u.user_id",
                  ([x[0] for x in b], [x[1] for x in b]))
    k.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.5)  # the statistics reach pg_stat_user_tables asynchronously
    c2 = psycopg2.connect(conninfo)
    k2 = c2.cursor()
    k2.execute("SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'bench_members'")
    hot, upd = k2.fetchone()
    c2.close()
    k.execute("SELECT pg_relation_size('bench_members') / 8192")
    pages = k.fetchone()[0]
    k.execute("DROP TABLE bench_members")
    c.close()
    print(f"fillfactor {ff}: {len(keys)} members, {upd} updates, {hot} HOT "
          f"({100.0 * hot / upd:.1f} %), {upd - hot} not, {pages} pages")


if __name__ == "__main__":
    for ff in sys.argv[2:] or ["100", "80"]:
        run(sys.argv[1], int(ff))
