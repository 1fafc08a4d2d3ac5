-- chatd schema v12 (issue 24): a message looked up by id alone (the
-- gateway's check of an edit's or delete's target, the server API's GET of
-- a message) reads the months newest first and stops at the first that
-- holds it, instead of probing the id index of every month kept.
--
-- Why not an id that carries its month: an id sent with a cid is derived
-- from (room, user, cid) so that a resend, however long after, answers the
-- same id (docs/PROTOCOL.md, send; chatd's clients always send a cid); it
-- cannot say when the first send was. So the months are walked: a message
-- k months old costs k + 1 probes (the month ahead, made in advance and
-- empty, is one of them), one edited or read soon after it was sent one or
-- two, and an id stored nowhere every month, as before. A caller that
-- knows the message is recent (the gateway polling for a target acked a
-- moment ago) passes p_since: only months that end after it are read.
--
-- Each month is one statement with its bounds as constants, so it is
-- planned for that month alone: only that month is opened and locked (a
-- generic plan with run-time pruning still locks every month in
-- PostgreSQL 15), and a month locked by an upkeep (the compaction's swap,
-- a retention drop) stalls only lookups that reach it. The statements go
-- through the parent table, as every statement of chatd does (the swap of
-- migration 011 relies on that). Rows outside every month (the default
-- partition, which should stay empty) are read last.
CREATE OR REPLACE FUNCTION chatd_message_by_id(p_room text, p_id text, p_since bigint)
RETURNS TABLE (seq bigint, user_id text, ts bigint, kind text, deleted boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT x.lo, x.hi FROM (
                 SELECT (extract(epoch FROM m) * 1000)::bigint AS lo,
                        (extract(epoch FROM m + interval '1 month') * 1000)::bigint AS hi
                 FROM (SELECT to_date(substr(c.relname, 11), 'YYYYMM')::timestamp AS m
                       FROM pg_inherits inh JOIN pg_class c ON c.oid = inh.inhrelid
                       WHERE inh.inhparent = 'messages'::regclass
                         AND c.relname ~ '^messages_p[0-9]{6}$') months) x
             WHERE x.hi > p_since ORDER BY x.lo DESC LOOP
        RETURN QUERY EXECUTE format('SELECT m.seq, m.user_id, m.ts, m.kind, m.deleted FROM messages m '
                                    'WHERE m.room = $1 AND m.id = $2 AND m.ts >= %s AND m.ts < %s LIMIT 1',
                                    r.lo, r.hi) USING p_room, p_id;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
    IF to_regclass('messages_default') IS NOT NULL THEN
        RETURN QUERY EXECUTE 'SELECT m.seq, m.user_id, m.ts, m.kind, m.deleted FROM messages_default m '
                             'WHERE m.room = $1 AND m.id = $2 AND m.ts >= $3 LIMIT 1'
                     USING p_room, p_id, p_since;
    END IF;
END $$;
