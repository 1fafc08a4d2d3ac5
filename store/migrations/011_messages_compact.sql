-- chatd schema v11 (issue 24): closed months rewritten in (room, seq)
-- order online, by the classifiers' hourly upkeep (docs/ARCHITECTURE.md,
-- section 5, "Room order"). Stored in arrival order, a page of a quiet
-- room's history reads one table page per message; in room order, a few.
-- CLUSTER does that but holds the month ACCESS EXCLUSIVE for the whole
-- rewrite, and every statement over messages that does not prune by ts
-- (db_store_msgs' lookup, history reads) waits behind it.
--
-- Here the rows are copied into a new table, in order, while the month
-- stays in use, then swapped in by one short transaction:
--   start  a row trigger on the month notes the key of every row written
--          to it from now on (a late record, an edit, a room's retention)
--          in chatd_compact_delta; nothing waits on the month after that;
--   copy   a new table LIKE the month, with a CHECK equal to the month's
--          bound (ATTACH then needs no validation scan), filled ORDER BY
--          room, seq from one snapshot, the month's indexes built after;
--          writers go on (their ROW EXCLUSIVE on the month does not
--          conflict with the copy's ACCESS SHARE);
--   swap   the noted rows are copied again (their current version, or
--          none if deleted); then, under ACCESS EXCLUSIVE on messages
--          taken with lock_timeout (a busy moment gives up and a later
--          call retries), the rows noted since, DETACH and DROP of the
--          month, the new table and its indexes renamed to the month's
--          names, ATTACH: catalog work, milliseconds (docs/PERFORMANCE.md,
--          "Storage"). Every statement over messages waits at most
--          lock_timeout plus that.
-- Each step is its own call (the trigger must be committed before the
-- copy's snapshot is taken, and its lock, SHARE ROW EXCLUSIVE on the month,
-- would stop every writer if held through the copy): chatd_messages_compact returns what it did and
-- the caller calls again until the step is 'done' or nothing is left. A
-- crash between steps leaves the state in chatd_compactions and the next
-- call goes on from it (each step is one transaction).

CREATE TABLE IF NOT EXISTS chatd_compactions (
    part     text PRIMARY KEY,            -- messages_pYYYYMM
    state    text NOT NULL,               -- copy, swap, done, gone
    started  timestamptz NOT NULL DEFAULT now(),
    finished timestamptz,
    rows     bigint,                      -- copied
    noted    bigint,                      -- written meanwhile, copied again
    locked_ms real                        -- the swap: messages locked from LOCK to the end of
                                          -- the function (its commit follows)
);

-- Rows written to a month being compacted: key only, the row itself is
-- read from the month when the note is applied.
CREATE TABLE IF NOT EXISTS chatd_compact_delta (
    part text   NOT NULL,
    room text   NOT NULL,
    seq  bigint NOT NULL,
    ts   bigint NOT NULL
);

CREATE OR REPLACE FUNCTION chatd_compact_note() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO chatd_compact_delta VALUES (TG_TABLE_NAME, OLD.room, OLD.seq, OLD.ts);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR (NEW.room, NEW.seq, NEW.ts) IS DISTINCT FROM (OLD.room, OLD.seq, OLD.ts)) THEN
        INSERT INTO chatd_compact_delta VALUES (TG_TABLE_NAME, NEW.room, NEW.seq, NEW.ts);
    END IF;
    RETURN NULL;
END $$;

-- Applies the notes of p_part visible now to its copy p_new: the noted
-- keys' rows are deleted from the copy and read again from the month (a
-- deleted row is not there any more). The notes are taken by one
-- statement: a note committed after it stays for the next call. Two
-- statements on the copy (its unique indexes are checked row by row, so
-- the old versions go first). Returns the rows copied again.
CREATE OR REPLACE FUNCTION chatd_compact_apply(p_part text, p_new text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    rooms text[];
    seqs bigint[];
    tss bigint[];
    n bigint;
BEGIN
    WITH k AS (DELETE FROM chatd_compact_delta d WHERE d.part = p_part RETURNING d.room, d.seq, d.ts),
    u AS (SELECT DISTINCT room, seq, ts FROM k)
    SELECT array_agg(room), array_agg(seq), array_agg(ts) INTO rooms, seqs, tss FROM u;
    IF rooms IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I n USING unnest($1, $2, $3) u(room, seq, ts) '
                   'WHERE n.room = u.room AND n.seq = u.seq AND n.ts = u.ts', p_new) USING rooms, seqs, tss;
    EXECUTE format('INSERT INTO %I SELECT o.* FROM %I o JOIN unnest($1, $2, $3) u(room, seq, ts) '
                   'ON o.room = u.room AND o.seq = u.seq AND o.ts = u.ts', p_new, p_part) USING rooms, seqs, tss;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Whether the copy p_new still has the month's columns and as many
-- indexes: a migration that changes messages (ADD COLUMN, CREATE INDEX
-- reach every partition) between the copy and the swap leaves the copy
-- behind; ATTACH would then fail, or build the missing index under its
-- lock. The swap copies again instead.
CREATE OR REPLACE FUNCTION chatd_compact_same(p_part text, p_new text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attname)
            FROM pg_attribute WHERE attrelid = p_part::regclass AND attnum > 0 AND NOT attisdropped)
           IS NOT DISTINCT FROM
           (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attname)
            FROM pg_attribute WHERE attrelid = p_new::regclass AND attnum > 0 AND NOT attisdropped)
       AND (SELECT count(*) FROM pg_index WHERE indrelid = p_part::regclass)
         = (SELECT count(*) FROM pg_index WHERE indrelid = p_new::regclass)
$$;

-- One step of putting a closed month in room order (see above). A month
-- is a candidate when its whole range ended more than p_min_age_s ago (a
-- record re-consumed after a crash still lands in a recent month: those
-- are left alone) and it was not done before; the newest first (the most
-- read). p_lock_ms bounds the wait for the swap's lock. One caller at a
-- time, with chatd_messages_maintain and chatd_rooms_expire (their
-- advisory lock), so a month is not dropped or expired under a step.
-- Returns (the month or NULL, step, rows):
--   none     nothing to compact;
--   busy     another upkeep holds the lock (month NULL), or the swap's
--            lock was not had within p_lock_ms (or the trigger's within
--            1 s): call again later;
--   started  the month's notes are on: call again (copy); also when the
--            copy no longer matches the month (a migration changed
--            messages since): it is dropped and made again;
--   copied   rows copied: call again (swap);
--   done     swapped in (rows: noted rows copied again);
--   ordered  the month was in room order already (its statistics say so:
--            migration 006 wrote the months it made that way), or empty;
--   gone     the month was dropped meanwhile (retention): its copy too.
CREATE OR REPLACE FUNCTION chatd_messages_compact(p_min_age_s bigint, p_lock_ms int)
RETURNS TABLE (part text, step text, n bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    now_ms bigint := (extract(epoch FROM now()) * 1000)::bigint;
    cur record;
    bound text;
    lo text;
    hi text;
    new text;
    opts text[];
    corr real;
    r record;
    t_lock timestamptz;
BEGIN
    n := 0;
    IF NOT pg_try_advisory_xact_lock(7161966135432865128) THEN
        step := 'busy';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT c.part, c.state INTO cur FROM chatd_compactions c WHERE c.state IN ('copy', 'swap');
    IF NOT FOUND THEN
        -- A new month: the newest closed one not done yet.
        SELECT x.part, x.bound INTO cur FROM (
            SELECT c.relname::text AS part, pg_get_expr(c.relpartbound, c.oid) AS bound
            FROM pg_inherits inh JOIN pg_class c ON c.oid = inh.inhrelid
            WHERE inh.inhparent = 'messages'::regclass AND c.relname ~ '^messages_p[0-9]{6}$') x
        WHERE substring(x.bound FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint <= now_ms - p_min_age_s * 1000
          AND NOT EXISTS (SELECT 1 FROM chatd_compactions d WHERE d.part = x.part)
        ORDER BY x.part DESC LIMIT 1;
        IF NOT FOUND THEN
            step := 'none';
            RETURN NEXT;
            RETURN;
        END IF;
        part := cur.part;
        SELECT s.correlation INTO corr FROM pg_stats s
        WHERE s.schemaname = current_schema() AND s.tablename = cur.part AND s.attname = 'room';
        IF coalesce(corr, 0) >= 0.9 OR NOT EXISTS (SELECT 1 FROM messages m WHERE m.ts >= substring(cur.bound FROM 'FROM \(''?(-?[0-9]+)''?\)')::bigint
                                                   AND m.ts < substring(cur.bound FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint) THEN
            INSERT INTO chatd_compactions (part, state, finished, rows) VALUES (cur.part, 'done', now(), 0);
            step := 'ordered';
            RETURN NEXT;
            RETURN;
        END IF;
        -- The trigger's lock (SHARE ROW EXCLUSIVE on the month) waits for
        -- the writes in flight there; bounded like the other upkeep DDL.
        BEGIN
            PERFORM set_config('lock_timeout', '1s', true);
            EXECUTE format('CREATE TRIGGER chatd_compact_note AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'FOR EACH ROW EXECUTE FUNCTION chatd_compact_note()', cur.part);
        EXCEPTION WHEN lock_not_available THEN
            step := 'busy';
            RETURN NEXT;
            RETURN;
        END;
        INSERT INTO chatd_compactions (part, state) VALUES (cur.part, 'copy');
        step := 'started';
        RETURN NEXT;
        RETURN;
    END IF;

    part := cur.part;
    new := cur.part || '_c';
    SELECT pg_get_expr(c.relpartbound, c.oid), c.reloptions INTO bound, opts
    FROM pg_inherits inh JOIN pg_class c ON c.oid = inh.inhrelid
    WHERE inh.inhparent = 'messages'::regclass AND c.relname = cur.part;
    IF bound IS NULL THEN
        -- Dropped (retention) since the last step: nothing to swap in.
        EXECUTE format('DROP TABLE IF EXISTS %I', new);
        DELETE FROM chatd_compact_delta d WHERE d.part = cur.part;
        UPDATE chatd_compactions c SET state = 'gone', finished = now() WHERE c.part = cur.part;
        step := 'gone';
        RETURN NEXT;
        RETURN;
    END IF;
    lo := substring(bound FROM 'FROM \(''?(-?[0-9]+)''?\)');
    hi := substring(bound FROM 'TO \(''?(-?[0-9]+)''?\)');

    IF cur.state = 'copy' THEN
        EXECUTE format('DROP TABLE IF EXISTS %I', new);
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                       new, cur.part);
        IF opts IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I SET (%s)', new, array_to_string(opts, ', '));
        END IF;
        -- The partition's own constraint, spelled out: ATTACH finds it
        -- implied and does not scan the table under its lock.
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (ts IS NOT NULL AND ts >= %s AND ts < %s)',
                       new, new || '_bound', lo, hi);
        EXECUTE format('INSERT INTO %I SELECT * FROM %I ORDER BY room, seq', new, cur.part);
        GET DIAGNOSTICS n = ROW_COUNT;
        -- The month's indexes, built once over the sorted rows, under
        -- names of their own until the swap (c_ + the month's name); a
        -- constraint's index (the primary key) gets its constraint, so
        -- that ATTACH takes it for the parent's and builds none.
        FOR r IN SELECT ic.relname::text AS iname, pg_get_indexdef(i.indexrelid) AS def,
                        con.conname::text AS conname, con.contype
                 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                 WHERE i.indrelid = cur.part::regclass LOOP
            EXECUTE regexp_replace(r.def, '^(CREATE (UNIQUE )?INDEX )\S+ ON (ONLY )?\S+ ',
                                   '\1' || quote_ident('c_' || r.iname) || ' ON ' || quote_ident(new) || ' ');
            IF r.contype IN ('p', 'u') THEN
                EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s USING INDEX %I', new, 'c_' || r.conname,
                               CASE r.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, 'c_' || r.iname);
            END IF;
        END LOOP;
        EXECUTE format('ANALYZE %I', new);
        UPDATE chatd_compactions c SET state = 'swap', rows = n WHERE c.part = cur.part;
        step := 'copied';
        RETURN NEXT;
        RETURN;
    END IF;

    -- swap: first the notes so far, with no lock but the rows' (the month
    -- stays in use), so that few are left for under the lock.
    IF NOT chatd_compact_same(cur.part, new) THEN
        EXECUTE format('DROP TABLE %I', new);
        UPDATE chatd_compactions c SET state = 'copy' WHERE c.part = cur.part;
        step := 'started';   -- copy again
        RETURN NEXT;
        RETURN;
    END IF;
    n := chatd_compact_apply(cur.part, new);
    BEGIN
        PERFORM set_config('lock_timeout', greatest(p_lock_ms, 1) || 'ms', true);
        -- Every statement of chatd over messages locks the parent first:
        -- with it held, none is in flight and no note can come.
        LOCK TABLE ONLY messages IN ACCESS EXCLUSIVE MODE;
        t_lock := clock_timestamp();
        IF NOT chatd_compact_same(cur.part, new) THEN  -- changed since the check above
            EXECUTE format('DROP TABLE %I', new);
            UPDATE chatd_compactions c SET state = 'copy' WHERE c.part = cur.part;
            step := 'started';
            RETURN NEXT;
            RETURN;
        END IF;
        n := n + chatd_compact_apply(cur.part, new);
        EXECUTE format('ALTER TABLE messages DETACH PARTITION %I', cur.part);
        EXECUTE format('DROP TABLE %I', cur.part);
        EXECUTE format('ALTER TABLE %I RENAME TO %I', new, cur.part);
        EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', cur.part, new || '_bound', cur.part || '_bound');
        FOR r IN SELECT ic.relname::text AS iname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = cur.part::regclass AND ic.relname LIKE 'c\_%' LOOP
            -- An index's rename renames its constraint too.
            EXECUTE format('ALTER INDEX %I RENAME TO %I', r.iname, substr(r.iname, 3));
        END LOOP;
        EXECUTE format('ALTER TABLE messages ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', cur.part, lo, hi);
    EXCEPTION WHEN lock_not_available THEN
        step := 'busy';
        RETURN NEXT;
        RETURN;
    END;
    UPDATE chatd_compactions c SET state = 'done', finished = now(), noted = n,
        locked_ms = extract(epoch FROM clock_timestamp() - t_lock) * 1000 WHERE c.part = cur.part;
    step := 'done';
    RETURN NEXT;
END $$;
