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
-- The months of messages, newest first, from the catalog (partitions are
-- named messages_pYYYYMM by chatd_messages_partition; the default
-- partition is not one). The statements that use it (store/db.c,
-- db_msg_target) join each month LATERAL with a LIMIT: one index probe per
-- month, pruned at run time, the walk stopped by the outer LIMIT at the
-- first month that answers.
CREATE OR REPLACE FUNCTION chatd_messages_months(p_since bigint) RETURNS TABLE (lo bigint, hi bigint)
LANGUAGE sql STABLE AS $$
    SELECT x.lo, x.hi FROM (
        SELECT (extract(epoch FROM m) * 1000)::bigint AS lo,
               (extract(epoch FROM m + interval '1 month') * 1000)::bigint AS hi
        FROM (SELECT to_date(substr(c.relname, 11), 'YYYYMM')::timestamp AS m
              FROM pg_inherits inh JOIN pg_class c ON c.oid = inh.inhrelid
              WHERE inh.inhparent = 'messages'::regclass
                AND c.relname ~ '^messages_p[0-9]{6}$') months) x
    WHERE x.hi > p_since
    ORDER BY x.lo DESC
$$;
