-- chatd schema v7 (issue 24): rooms.head raised by a trigger on every
-- insert into messages, whoever makes it. db_store_msgs checks a row's
-- (room, seq) against the head and looks it up in messages only when the
-- seq is at or below it (a re-consumed record, a collision): a seq above
-- the head cannot be held. That holds only if no row is ever stored above
-- its room's head: db_store_msgs raised it in its statement, but rows
-- written another way (by hand, a restore, a tool) did not, and the store
-- would then put a second message at their seqs. The trigger makes the
-- head cover them all; db_store_msgs leaves it to the trigger (one update
-- per room and statement either way). Deletes never lower it (retention).
-- A restore with triggers disabled (pg_restore --disable-triggers,
-- session_replication_role = replica) must raise the heads itself: the
-- UPDATE below, run again (docs/DEPLOY.md).
CREATE OR REPLACE FUNCTION chatd_messages_raise_head() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Rooms in order: the rows are locked in the same order by every store.
    INSERT INTO rooms (room, head)
    SELECT room, max(seq) FROM chatd_new_messages GROUP BY room ORDER BY room
    ON CONFLICT (room) DO UPDATE SET head = EXCLUDED.head WHERE rooms.head < EXCLUDED.head;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS messages_raise_head ON messages;
CREATE TRIGGER messages_raise_head AFTER INSERT ON messages
REFERENCING NEW TABLE AS chatd_new_messages
FOR EACH STATEMENT EXECUTE FUNCTION chatd_messages_raise_head();

-- Rows stored around the head since 003 (by hand): one pass over the
-- primary key of every month, in place.
INSERT INTO rooms (room) SELECT DISTINCT room FROM messages ON CONFLICT (room) DO NOTHING;
UPDATE rooms r SET head = m.head
FROM (SELECT room, max(seq) AS head FROM messages GROUP BY room) m
WHERE m.room = r.room AND r.head < m.head;
