-- bench/storage/history_pages.sql (issue 24): pages a history page of a
-- quiet room reads in a closed month stored in arrival order, and after the
-- month is rewritten in (room, seq) order by CLUSTER; and how long CLUSTER
-- holds the month. Against a throwaway database with chatd's schema
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
\echo 'CLUSTER of the month (ACCESS EXCLUSIVE on it meanwhile):'
\timing on
CLUSTER messages_p202611 USING messages_p202611_pkey;
\timing off
ANALYZE messages;
\echo 'room order: the same page:'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT seq, id, user_id, cid, body, ts, kind, target, edited IS NOT NULL, deleted
FROM messages WHERE room = 'quiet' AND seq > 0 ORDER BY seq LIMIT 101;
