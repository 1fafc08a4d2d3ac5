-- chatd schema v6 (issue 24): messages partitioned by month of ts, so that
-- retention (--retention) drops whole partitions instead of scanning
-- deletes (docs/ARCHITECTURE.md, section 5, "Retention").
--
-- ts is the gateway's receive time (ms), carried in the chat-send record's
-- value: a record re-consumed after a classifier crash carries the same ts,
-- lands in the same partition, and is deduplicated there. PostgreSQL wants
-- the partition key in every unique index, so the keys are:
--   (room, seq, ts)  primary key: history reads by (room, seq) use it;
--   (room, id, ts)   the ON CONFLICT target of a re-consumed record, and the
--                    index db_known_ids and the API's lookup by id probe.
-- What they no longer give across partitions, db_store_msgs checks in its
-- statement: a (room, seq) held by another message in any partition is a
-- seq collision (nothing stored), as the old unique (room, seq) was. An id
-- stored under another ts (a resent cid: a new record, a new ts) is found
-- by db_known_ids before the store and never stored again (only the
-- partition's fence holder stores into a room).
--
-- Partitions are UTC calendar months, messages_pYYYYMM, created by
-- chatd_messages_maintain (the current month and the next; every
-- classifier calls it hourly, one at a time by an advisory lock).
-- messages_default catches a ts outside every partition (a gateway clock
-- far off, a record older than the oldest month kept); it should stay
-- empty, and a month's partition created later takes its rows over.
--
-- In place, with the data: the old table is renamed, the new one gets a
-- partition for every month that has messages, and the rows are copied in
-- (room, seq) order (a closed month's history reads touch few pages). One
-- pass over messages and a rewrite: on a large table this is the
-- migration's cost (docs/DEPLOY.md, "Upgrades").

-- The partition of the UTC month holding p_ts (ms), created if missing;
-- rows of that month already in messages_default move into it (PostgreSQL
-- refuses a partition whose range the default partition holds rows of).
CREATE OR REPLACE FUNCTION chatd_messages_partition(p_ts bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m timestamp := date_trunc('month', to_timestamp(p_ts::float8 / 1000) AT TIME ZONE 'UTC');
    lo bigint := (extract(epoch FROM m) * 1000)::bigint;
    hi bigint := (extract(epoch FROM m + interval '1 month') * 1000)::bigint;
    part text := 'messages_p' || to_char(m, 'YYYYMM');
    moving boolean;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    moving := EXISTS (SELECT 1 FROM messages_default WHERE ts >= lo AND ts < hi);
    IF moving THEN
        CREATE TEMP TABLE IF NOT EXISTS chatd_moved (LIKE messages) ON COMMIT DROP;
        WITH d AS (DELETE FROM messages_default WHERE ts >= lo AND ts < hi RETURNING *)
        INSERT INTO chatd_moved SELECT * FROM d;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF messages FOR VALUES FROM (%s) TO (%s)', part, lo, hi);
    IF moving THEN
        INSERT INTO messages SELECT * FROM chatd_moved ORDER BY room, seq;
        DELETE FROM chatd_moved;
    END IF;
    RETURN part;
END $$;

-- Creates the partitions of the current month and p_ahead months after it,
-- and, when p_retention_s > 0, drops every partition whose whole month
-- ended more than p_retention_s ago (and deletes such rows from the default
-- partition, which should hold none). One caller at a time (an advisory
-- lock; another gets created = -1). Waits at most 1 s for a table lock:
-- the DDL queues every query of messages behind it; a later call retries.
-- Returns (partitions created, names dropped comma-separated).
CREATE OR REPLACE FUNCTION chatd_messages_maintain(p_ahead int, p_retention_s bigint)
RETURNS TABLE (created int, dropped text)
LANGUAGE plpgsql AS $$
DECLARE
    m timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    cutoff bigint;
    r record;
    upper_ms text;
BEGIN
    created := 0;
    dropped := '';
    IF NOT pg_try_advisory_xact_lock(7161966135432865128) THEN
        created := -1;
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('lock_timeout', '1s', true);
    FOR k IN 0..greatest(p_ahead, 0) LOOP
        IF to_regclass('messages_p' || to_char(m + make_interval(months => k), 'YYYYMM')) IS NULL THEN
            PERFORM chatd_messages_partition((extract(epoch FROM m + make_interval(months => k)) * 1000)::bigint);
            created := created + 1;
        END IF;
    END LOOP;
    IF p_retention_s > 0 THEN
        cutoff := (extract(epoch FROM now()) * 1000)::bigint - p_retention_s * 1000;
        FOR r IN SELECT c.oid::regclass::text AS part, pg_get_expr(c.relpartbound, c.oid) AS bound
                 FROM pg_inherits inh JOIN pg_class c ON c.oid = inh.inhrelid
                 WHERE inh.inhparent = 'messages'::regclass ORDER BY 1 LOOP
            upper_ms := substring(r.bound FROM 'TO \(''?(-?[0-9]+)''?\)');
            IF upper_ms IS NOT NULL AND upper_ms::bigint <= cutoff THEN
                EXECUTE 'DROP TABLE ' || r.part;
                dropped := dropped || CASE WHEN dropped = '' THEN '' ELSE ',' END || r.part;
            END IF;
        END LOOP;
        DELETE FROM messages_default WHERE ts < cutoff;
    END IF;
    RETURN NEXT;
END $$;

DO $$
BEGIN
    -- Applied once (schema_migrations); the check makes a run by hand safe too.
    IF (SELECT relkind FROM pg_class WHERE oid = 'messages'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    ALTER TABLE messages RENAME TO messages_v5;
    ALTER INDEX messages_pkey RENAME TO messages_v5_pkey;
    ALTER INDEX messages_room_id RENAME TO messages_v5_room_id;
    ALTER INDEX IF EXISTS messages_room_target RENAME TO messages_v5_room_target;
    -- The columns of v5 (edits and deletes: 005_message_changes.sql) as they were.
    CREATE TABLE messages (
        room    text   NOT NULL,
        seq     bigint NOT NULL,
        id      text   NOT NULL,
        user_id text   NOT NULL,
        cid     text,
        body    text   NOT NULL,
        ts      bigint NOT NULL,
        kind    text   NOT NULL DEFAULT 'm',
        target  text,
        edited  bigint,
        deleted boolean NOT NULL DEFAULT false,
        PRIMARY KEY (room, seq, ts)
    ) PARTITION BY RANGE (ts);
    CREATE UNIQUE INDEX messages_room_id ON messages (room, id, ts);
    CREATE INDEX messages_room_target ON messages (room, target) WHERE target IS NOT NULL;
    CREATE TABLE messages_default PARTITION OF messages DEFAULT;
    -- A partition per month with messages (up to 2100; anything else goes
    -- to the default partition), then the current month and the next.
    PERFORM chatd_messages_partition(d * 86400000)
    FROM (SELECT DISTINCT ts / 86400000 AS d FROM messages_v5
          WHERE ts >= 0 AND ts < 4102444800000) days;
    PERFORM chatd_messages_maintain(1, 0);
    INSERT INTO messages (room, seq, id, user_id, cid, body, ts, kind, target, edited, deleted)
    SELECT room, seq, id, user_id, cid, body, ts, kind, target, edited, deleted FROM messages_v5
    ORDER BY room, seq;
    DROP TABLE messages_v5;
END $$;
