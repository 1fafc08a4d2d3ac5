-- chatd schema v8 (issue 24): retention per room, set by the server API
-- (PUT /v1/rooms/{room} {"retention_seconds"}), enforced by the
-- classifiers' hourly upkeep (docs/ARCHITECTURE.md, section 5, "Retention").
--
-- A month's partition holds every room, so a room's own retention cannot
-- drop partitions: its old messages are deleted by an indexed range delete
-- on the room's (room, seq, ts) primary key, oldest seq first, in bounded
-- batches (chatd_rooms_expire), never a scan of the table. The deployment's
-- --retention still drops whole months for every room: a room's retention
-- can only make it shorter. The room's head (rooms.head) is not touched:
-- its seqs go on after its messages are gone (migrations 003, 007).
--
-- retention_s NULL: the room has none of its own (the deployment's).
-- In place: a nullable column (no rewrite) and an index of the rooms that
-- have one (empty at first), so the upkeep never reads the other rooms.
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS retention_s bigint;
CREATE INDEX IF NOT EXISTS rooms_with_retention ON rooms (room) WHERE retention_s IS NOT NULL;

-- One bounded step of the rooms' retention: the rooms with a retention
-- after p_after (by id; NULL: from the first), at most p_rooms of them, and
-- at most p_rows messages deleted in all. In each room the rows are taken
-- in seq order from its oldest and deleted up to the first one not yet
-- older than its retention: a message is never deleted early; one with a
-- later ts than a following one (gateways' clocks apart) holds those back
-- until it expires itself. Returns (rooms visited, or -1 when another
-- upkeep holds the lock; rows deleted; more: call again with p_after =
-- next_room, which may be NULL). One caller at a time: the lock of
-- chatd_messages_maintain, so a delete never waits on a partition's drop.
CREATE OR REPLACE FUNCTION chatd_rooms_expire(p_after text, p_rooms int, p_rows int)
RETURNS TABLE (rooms int, deleted bigint, next_room text, more boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    now_ms bigint := (extract(epoch FROM now()) * 1000)::bigint;
    r record;
    cutoff bigint;
    stop bigint;
    n bigint;
BEGIN
    rooms := 0;
    deleted := 0;
    next_room := p_after;
    more := false;
    p_rows := greatest(p_rows, 1);
    IF NOT pg_try_advisory_xact_lock(7161966135432865128) THEN
        rooms := -1;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR r IN SELECT x.room, x.retention_s FROM rooms x
             WHERE x.retention_s IS NOT NULL AND (p_after IS NULL OR x.room > p_after)
             ORDER BY x.room LIMIT greatest(p_rooms, 1) LOOP
        rooms := rooms + 1;
        cutoff := now_ms - r.retention_s * 1000;
        -- The first seq to keep among the room's oldest rows (an index-only
        -- read of the primary key, (room, seq, ts)), at most what is left of
        -- the budget.
        SELECT coalesce(min(b.seq) FILTER (WHERE b.ts >= cutoff), max(b.seq) + 1) INTO stop
        FROM (SELECT m.seq, m.ts FROM messages m WHERE m.room = r.room
              ORDER BY m.seq LIMIT p_rows - deleted) b;
        IF stop IS NOT NULL THEN
            -- Every row below stop is expired; ts < cutoff prunes the months
            -- that cannot hold one.
            DELETE FROM messages m WHERE m.room = r.room AND m.seq < stop AND m.ts < cutoff;
            GET DIAGNOSTICS n = ROW_COUNT;
            deleted := deleted + n;
        END IF;
        IF deleted >= p_rows THEN
            -- The budget is spent: the next step starts at this room again
            -- (next_room is still the one before it).
            more := true;
            RETURN NEXT;
            RETURN;
        END IF;
        next_room := r.room;
    END LOOP;
    -- p_rooms visited: there may be more after the last one.
    more := rooms >= greatest(p_rooms, 1);
    RETURN NEXT;
END $$;

-- members with room for HOT updates (issue 24): a read mark updates
-- members.read_seq, a column no index holds, so the new row version can
-- stay on its page without new index entries (a HOT update) if the page has
-- room. Full pages (joins fill them) sent 4.9 % of the marks to another page
-- with two index inserts each; with 20 % of each page kept free, 0.6 %, for
-- 5 % more pages (bench/storage/members_hot.py, docs/PERFORMANCE.md,
-- "Storage"). In place: no rewrite, pages written from now on keep the room
-- (VACUUM FULL or CLUSTER would apply it to the old ones, locking the table).
ALTER TABLE members SET (fillfactor = 80);
