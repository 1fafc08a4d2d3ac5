-- bench/storage/history_pages.sql (issue 24): pages a history page of a
-- quiet room reads in a closed month stored in arrival order, and after the
-- month is rewritten in (room, seq) order by chatd_messages_compact (the
-- classifiers' upkeep, migration 011; it replaced the CLUSTER measured
-- first, docs/PERFORMANCE.md "Storage"); the steps' durations and how long
-- the swap held messages locked (chatd_compactions.locked_ms). The same
-- compaction under concurrent stores, edits and reads:
-- bench/storage/compact_online.py. Against a throwaway database with chatd's schema
-- (store/migrations/*.sql applied in order):
--   psql -X -d DB -f bench/storage/history_pages.sql
-- One month (November 2026) of 1,000,000 messages over 2,000 rooms
-- (skewed), ~220 MB; room 'quiet' gets one message in 9,000.
\timing off
SELECT chatd_messages_partition(1793577600000);
INSERT INTO messages (room, seq, id, user_id, cid, body, ts)
SELECT CASE WHEN i % 9000 = 0 THEN 'quiet' ELSE 'room-' || (floor(2000 * power(random(), 3)))::int END,
       i, md5(i::text), 'user-' || (i % 5000), 'c' || i, repeat('x', 60 + (i % 80)),
       1793577600000 + i * 2000
FROM generate_series(1, 1000000) i;
VACUUM ANALYZE messages;
\echo 'arrival order: a page of 101 (db_history):'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT seq, id, user_id, cid, body, ts, kind, target, edited IS NOT NULL, deleted
FROM messages WHERE room = 'quiet' AND seq > 0 ORDER BY seq LIMIT 101;
\echo 'chatd_messages_compact (migration 011), its steps (started, copied, done;'
\echo 'an empty closed month first is "ordered" and skipped by the next call):'
\timing on
SELECT * FROM chatd_messages_compact(86400, 300);
SELECT * FROM chatd_messages_compact(86400, 300);
SELECT * FROM chatd_messages_compact(86400, 300);
SELECT * FROM chatd_messages_compact(86400, 300);
\timing off
SELECT part, state, rows, noted, locked_ms FROM chatd_compactions;
ANALYZE messages;
\echo 'room order: the same page:'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT seq, id, user_id, cid, body, ts, kind, target, edited IS NOT NULL, deleted
FROM messages WHERE room = 'quiet' AND seq > 0 ORDER BY seq LIMIT 101;
