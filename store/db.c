#include "store/db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"

void db_user_rooms(pg_client_t *pg, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { user };
    static struct pg_stmt st = { "SELECT room FROM members WHERE user_id = $1" };
    pg_query_stmt(pg, &st, 1, p, cb, ud);
}

void db_join(pg_client_t *pg, const char *room, const char *user, const char *peer, int max_rooms,
             pg_result_cb cb, void *ud)
{
    char cap[16];
    snprintf(cap, sizeof cap, "%d", max_rooms);
    const char *p[] = { room, user, peer, cap };
    /* Neither the room nor the membership is written past the cap. Under the
     * cap, no row inserted means a member already (maybe added by a
     * concurrent statement its snapshot does not see: the dm peer's join on
     * another gateway); at the cap, the snapshot says whether it was one.
     * Concurrent joins of one user can each pass the count: the cap is
     * exceeded by at most the joins in flight. */
    /* A private or archived room takes no join (migrations/004): only its
     * members, added by the server API or the owner, are in it. */
    static struct pg_stmt st = {
        "WITH ok AS (SELECT count(*) < $4::int AS ok FROM members WHERE user_id = $2), "
        "cl AS (SELECT EXISTS (SELECT 1 FROM rooms WHERE room = $1 AND (private OR archived)) AS closed), "
        "r AS (INSERT INTO rooms (room) SELECT $1 WHERE (SELECT ok FROM ok) ON CONFLICT DO NOTHING), "
        "m AS (INSERT INTO members (room, user_id) SELECT $1, $2 WHERE (SELECT ok FROM ok) "
        "AND NOT (SELECT closed FROM cl) ON CONFLICT DO NOTHING RETURNING 1), "
        "p AS (INSERT INTO members (room, user_id) SELECT $1, $3::text FROM m "
        "WHERE $3::text IS NOT NULL AND "
        "(SELECT count(*) FROM members WHERE user_id = $3::text) < $4::int "
        "ON CONFLICT DO NOTHING RETURNING 1) "
        "SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM p), (SELECT ok FROM ok), "
        "EXISTS (SELECT 1 FROM members WHERE room = $1 AND user_id = $2), (SELECT closed FROM cl)",
    };
    pg_query_stmt(pg, &st, 4, p, cb, ud);
}

int db_join_result(const PGresult *res)
{
    if (PQntuples(res) != 1)
        return DB_JOIN_FULL;
    if (strcmp(PQgetvalue(res, 0, 0), "0") != 0)
        return DB_JOIN_INSERTED;
    if (PQgetvalue(res, 0, 3)[0] == 't')
        return DB_JOIN_MEMBER;
    if (PQnfields(res) > 4 && PQgetvalue(res, 0, 4)[0] == 't')
        return DB_JOIN_CLOSED;
    return PQgetvalue(res, 0, 2)[0] == 't' ? DB_JOIN_MEMBER : DB_JOIN_FULL;
}

void db_leave(pg_client_t *pg, const char *room, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { room, user };
    pg_query(pg, "DELETE FROM members WHERE room = $1 AND user_id = $2 RETURNING 1", 2, p, cb, ud);
}

void db_is_member(pg_client_t *pg, const char *room, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { room, user };
    pg_query(pg, "SELECT 1 FROM members WHERE room = $1 AND user_id = $2", 2, p, cb, ud);
}

void db_history(pg_client_t *pg, const char *room, int64_t after, int limit, pg_result_cb cb,
                void *ud)
{
    char a[24], l[16];
    snprintf(a, sizeof a, "%" PRId64, after);
    snprintf(l, sizeof l, "%d", limit);
    const char *p[] = { room, a, l };
    pg_query(pg,
             "SELECT seq, id, user_id, cid, body, ts, kind, target, edited IS NOT NULL, deleted "
             "FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3",
             3, p, cb, ud);
}

void db_rooms(pg_client_t *pg, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { user };
    pg_query(pg,
             /* read capped at the head: marks stored before db_read capped
              * them. The head is the room row's (migration 003): one index
              * read per membership, not a max(seq) probe of messages. */
             "SELECT m.room, r.head, LEAST(m.read_seq, r.head) FROM members m "
             "JOIN rooms r ON r.room = m.room WHERE m.user_id = $1 ORDER BY m.room",
             1, p, cb, ud);
}

void db_read(pg_client_t *pg, const char *room, const char *user, int64_t seq, pg_result_cb cb,
             void *ud)
{
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, seq);
    const char *p[] = { room, user, s };
    pg_query(pg,
             /* Capped at the room's last stored seq: a mark beyond it
              * would show every later message as read. */
             "UPDATE members SET read_seq = LEAST(GREATEST(read_seq, $3), "
             "(SELECT head FROM rooms WHERE room = $1)) "
             "WHERE room = $1 AND user_id = $2 RETURNING read_seq",
             3, p, cb, ud);
}

void db_max_seq(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud)
{
    const char *p[] = { room };
    pg_query(pg, "SELECT COALESCE((SELECT head FROM rooms WHERE room = $1), 0)", 1, p, cb, ud);
}

void db_rooms_max(pg_client_t *pg, const char *rooms, pg_result_cb cb, void *ud)
{
    /* The classifier's floor: the head, which retention cannot lower, and
     * max(seq), so rows stored by anything but db_store_msgs (by hand, a
     * restore) are never handed out again (a collision repaired for good:
     * with the head alone the retry would collide for ever). */
    const char *p[] = { rooms };
    static struct pg_stmt st = {
        "SELECT r, GREATEST(COALESCE((SELECT head FROM rooms WHERE room = r), 0), "
        "COALESCE((SELECT max(seq) FROM messages WHERE room = r), 0)) "
        "FROM unnest($1::text[]) AS r",
    };
    pg_query_stmt(pg, &st, 1, p, cb, ud);
}

void db_known_ids(pg_client_t *pg, const char *rooms, const char *ids, const char *tss,
                  const char *resends, int64_t window_ms, pg_result_cb cb, void *ud)
{
    /* A window of 0 is every month: bounds no ts can reach. */
    const int64_t all = INT64_C(1) << 62;
    char before[24], after[24];
    snprintf(before, sizeof before, "%" PRId64, window_ms > 0 ? window_ms : all);
    snprintf(after, sizeof after, "%" PRId64, window_ms > 0 ? (int64_t)DB_RESEND_AFTER_MS : all);
    const char *p[] = { rooms, ids, tss, resends, before, after };
    /* A prepared statement keeps its first generic plan: as a plain join,
     * planned while messages was empty, that was a hash join over a
     * sequential scan (milliseconds per batch once the table grew). LATERAL
     * with LIMIT 1 cannot be flattened, so each pair stays an index probe.
     * The ts range prunes the partitions at run time, per pair: a record
     * without a cid can only be re-consumed (the same ts: one partition), a
     * cid's resend is looked for $5 before it and $6 after (with a window,
     * usually two months, not all of them).
     *
     * Two forms of the pairs: PostgreSQL plans a prepared statement anew (a
     * custom plan) while that looks cheaper than its generic plan, and an
     * unnest of a known array of fewer than 10 pairs (10: its estimate for
     * an unknown one) always did, so every small batch (a quiet room, low
     * rates) was planned again, 100-320 us on the partitioned table, more
     * than the lookup. By subscript the estimate is the same known or not,
     * so the generic plan wins after the first five; but a subscript of a
     * text array walks it from its start, quadratic in the batch (+1.5 ms
     * at 1,000 pairs, +23 ms at 4,000, measured), so batches from 10 pairs
     * keep unnest, whose custom plan never looks cheaper there. */
    #define DB_KNOWN_IDS_LATERAL \
        "CROSS JOIN LATERAL (SELECT seq FROM messages m WHERE m.room = k.room AND m.id = k.id " \
        "AND m.ts >= k.ts - CASE WHEN k.resend THEN $5::bigint ELSE 0 END " \
        "AND m.ts <= k.ts + CASE WHEN k.resend THEN $6::bigint ELSE 0 END " \
        "LIMIT 1) m"
    static struct pg_stmt small = {
        "SELECT k.room, k.id, m.seq FROM (SELECT ($1::text[])[i] AS room, ($2::text[])[i] AS id, "
        "($3::bigint[])[i] AS ts, ($4::boolean[])[i] AS resend "
        "FROM generate_subscripts($1::text[], 1) AS i) AS k " DB_KNOWN_IDS_LATERAL,
    };
    static struct pg_stmt large = {
        "SELECT k.room, k.id, m.seq FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[]) "
        "AS k(room, id, ts, resend) " DB_KNOWN_IDS_LATERAL,
    };
    #undef DB_KNOWN_IDS_LATERAL
    /* resends holds booleans ("{t,f}"): its commas count the pairs. */
    size_t n = resends[0] && resends[1] && resends[1] != '}';
    for (const char *c = resends; *c; c++)
        n += *c == ',';
    pg_query_stmt(pg, n < 10 ? &small : &large, 6, p, cb, ud);
}

void db_array_add(struct jbuf *b, const char *s)
{
    jbuf_raw(b, b->len ? "," : "{", 1);
    if (!s) {
        jbuf_raw(b, "NULL", 4);
        return;
    }
    jbuf_raw(b, "\"", 1);
    for (const char *run = s;; s++) {
        if (*s == '"' || *s == '\\' || !*s) {
            jbuf_raw(b, run, (size_t)(s - run));
            if (!*s)
                break;
            jbuf_raw(b, "\\", 1);
            run = s;
        }
    }
    jbuf_raw(b, "\"", 1);
}

void db_array_int(struct jbuf *b, int64_t v)
{
    char n[24];
    int len = snprintf(n, sizeof n, "%s%" PRId64, b->len ? "," : "{", v);
    jbuf_raw(b, n, (size_t)len);
}

char *db_array_end(struct jbuf *b)
{
    jbuf_raw(b, b->len ? "}" : "{}", b->len ? 1 : 2);
    char *s = jbuf_take(b, NULL);
    CHATD_ASSERT(s != NULL);
    return s;
}

void db_fence_take(pg_client_t *pg, const char *topic, const char *owner, const char *parts,
                   pg_result_cb cb, void *ud)
{
    const char *p[] = { topic, owner, parts };
    static struct pg_stmt st = {
        "INSERT INTO partition_owners (topic, partition, epoch, owner) "
        "SELECT $1, p, 1, $2 FROM unnest($3::int[]) AS p "
        "ON CONFLICT (topic, partition) DO UPDATE SET epoch = partition_owners.epoch + 1, "
        "owner = EXCLUDED.owner, taken_at = now() RETURNING partition, epoch, next_offset",
    };
    pg_query_stmt(pg, &st, 3, p, cb, ud);
}

void db_lease_beat(pg_client_t *pg, const char *topic, const char *member, const char *held,
                   int draining, int lease_ms, pg_result_cb cb, void *ud)
{
    char ms[16];
    snprintf(ms, sizeof ms, "%d", lease_ms);
    const char *p[] = { topic, member, held, draining ? "t" : "f", ms };
    static struct pg_stmt st = {
        "WITH up AS (INSERT INTO classifier_members (topic, member, held, draining, expires_at) "
        "VALUES ($1, $2, $3::int[], $4::boolean, now() + $5::int * interval '1 millisecond') "
        "ON CONFLICT (topic, member) DO UPDATE SET held = EXCLUDED.held, "
        "draining = EXCLUDED.draining, expires_at = EXCLUDED.expires_at RETURNING 1), "
        "gc AS (DELETE FROM classifier_members WHERE topic = $1 "
        "AND expires_at < now() - interval '1 minute' RETURNING 1) "
        "SELECT member, held::text, draining, NULL::int, NULL::bigint FROM classifier_members "
        "WHERE topic = $1 AND member <> $2 AND expires_at > now() "
        "UNION ALL SELECT NULL, NULL, NULL, partition, next_offset FROM partition_owners "
        "WHERE topic = $1",
    };
    pg_query_stmt(pg, &st, 5, p, cb, ud);
}

void db_lease_leave(pg_client_t *pg, const char *topic, const char *member, pg_result_cb cb,
                    void *ud)
{
    const char *p[] = { topic, member };
    static struct pg_stmt st = {
        "DELETE FROM classifier_members WHERE topic = $1 AND member = $2",
    };
    pg_query_stmt(pg, &st, 2, p, cb, ud);
}

void db_offsets_save(pg_client_t *pg, const struct db_fence *f, pg_result_cb cb, void *ud)
{
    const char *p[] = { f->topic, f->parts, f->epochs, f->offsets ? f->offsets : "{}" };
    static struct pg_stmt st = {
        "UPDATE partition_owners o SET next_offset = x.n "
        "FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS x(p, e, n) "
        "WHERE o.topic = $1 AND o.partition = x.p AND o.epoch = x.e AND x.n > 0 "
        "RETURNING o.partition",
    };
    pg_query_stmt(pg, &st, 4, p, cb, ud);
}

#define DB_MSG_COLS 7
#define DB_CHANGE_COLS 2 /* kind, target: $11, $12 */

void db_store_msgs(pg_client_t *pg, const struct db_fence *f, const struct chat_msg *const *msgs,
                   size_t n, pg_result_cb cb, void *ud)
{
    /* One statement per batch, whatever its size: the columns travel as
     * arrays, so the statement is prepared once instead of a VALUES list
     * parsed and planned per batch. The fence rows are share-locked: a
     * take (an UPDATE) waits for this statement, or this statement sees the
     * new epoch and stores nothing. messages is partitioned by month of ts
     * (migrations/006), so its unique keys hold per partition only and carry
     * ts: the statement checks (room, seq) itself. The room's head is the
     * highest seq ever stored in it (raised by a trigger on every insert,
     * whoever makes it, never lowered: migrations/007), so a seq above it
     * is free without looking; only a seq at or below it (a re-consumed
     * record, a collision: rare) is looked up in every partition (a scalar
     * subquery, evaluated only then). Stores into a room are one at a time
     * (its partition's fence holder, one batch's store after the other),
     * so the head read is not racing another store. Held by the same id:
     * the row is stored already (a re-consumed record), skipped whatever
     * its ts, as ON CONFLICT (room, id) skipped it; held by another id, or
     * twice in the batch: taken, a seq collision, nothing stored, as the
     * unique (room, seq) refused it. (room, id, ts) stays the conflict
     * target. The trigger raises each room's head in this statement, so it
     * is the last stored seq whatever is deleted later.
     *
     * The heads are read one room at a time by its key (LATERAL with LIMIT
     * 1 is never flattened into a join), as db_known_ids reads messages:
     * a prepared statement keeps its generic plan, and as a semi-join that
     * plan read the whole rooms table for every batch (a hash over a
     * sequential scan) while it held under about 4,000 rooms, 300-400 us
     * of PostgreSQL's CPU per batch by a long bench's end (docs/PERFORMANCE.md). */
    static struct pg_stmt st = {
        "WITH f AS (SELECT o.partition FROM partition_owners o "
        "JOIN unnest($8::int[], $9::bigint[]) AS x(p, e) ON o.partition = x.p AND o.epoch = x.e "
        "WHERE o.topic = $10 FOR SHARE OF o), "
        "ok AS (SELECT count(*) = cardinality($8::int[]) AS held FROM f), "
        "u AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::bigint[], $11::text[], $12::text[]) "
        "AS u(room, seq, id, user_id, cid, body, ts, kind, target)), "
        "h AS (SELECT d.room, r.head FROM (SELECT DISTINCT room FROM u) d "
        "CROSS JOIN LATERAL (SELECT head FROM rooms r WHERE r.room = d.room LIMIT 1) r), "
        "s AS (SELECT u.*, CASE WHEN u.seq <= COALESCE(h.head, 0) THEN (SELECT m.id FROM messages m "
        "WHERE m.room = u.room AND m.seq = u.seq LIMIT 1) END AS held_by "
        "FROM u LEFT JOIN h ON h.room = u.room), "
        "cl AS (SELECT EXISTS (SELECT 1 FROM s WHERE s.held_by <> s.id) "
        "OR EXISTS (SELECT 1 FROM u GROUP BY room, seq HAVING count(*) > 1) AS taken), "
        "ins AS (INSERT INTO messages (room, seq, id, user_id, cid, body, ts, kind, target) "
        "SELECT s.room, s.seq, s.id, s.user_id, s.cid, s.body, s.ts, s.kind, s.target FROM s, ok, cl "
        "WHERE ok.held AND NOT cl.taken AND s.held_by IS NULL "
        "ON CONFLICT (room, id, ts) DO NOTHING RETURNING room, seq), "
        /* The offsets done, only on rows f holds (share-locked, epoch
         * matched) and only if every fence holds: a refused batch (a
         * zombie) writes none (migrations/009). */
        "off AS (UPDATE partition_owners o SET next_offset = x.n "
        "FROM unnest($8::int[], $13::bigint[]) AS x(p, n) "
        "WHERE o.topic = $10 AND o.partition = x.p AND x.n > 0 "
        "AND o.partition IN (SELECT partition FROM f) AND (SELECT held FROM ok)) "
        "SELECT (SELECT held FROM ok), (SELECT count(*) FROM ins), "
        "ARRAY(SELECT DISTINCT p FROM unnest($8::int[]) AS p WHERE p NOT IN (SELECT partition FROM f)), "
        "(SELECT taken FROM cl)",
    };
    struct jbuf col[DB_MSG_COLS], ch[DB_CHANGE_COLS];
    for (int k = 0; k < DB_MSG_COLS; k++)
        jbuf_init(&col[k], k == 5 ? 96 * n : 32 * n);
    for (int k = 0; k < DB_CHANGE_COLS; k++)
        jbuf_init(&ch[k], 4 * n);
    for (size_t i = 0; i < n; i++) {
        const struct chat_msg *m = msgs[i];
        db_array_add(&col[0], m->room);
        db_array_int(&col[1], m->seq);
        db_array_add(&col[2], m->id);
        db_array_add(&col[3], m->from);
        db_array_add(&col[4], m->cid);
        db_array_add(&col[5], m->text);
        db_array_int(&col[6], m->ts);
        char kind[2] = { m->kind == MSG_KIND_EDIT || m->kind == MSG_KIND_DELETE ? m->kind : 'm', 0 };
        db_array_add(&ch[0], kind);
        db_array_add(&ch[1], kind[0] == 'm' ? NULL : m->target);
    }
    const char *p[DB_MSG_COLS + 3 + DB_CHANGE_COLS + 1];
    for (int k = 0; k < DB_MSG_COLS; k++)
        p[k] = db_array_end(&col[k]);
    p[DB_MSG_COLS + 3 + DB_CHANGE_COLS] = f->offsets ? f->offsets : "{}";
    p[DB_MSG_COLS] = f->parts;
    p[DB_MSG_COLS + 1] = f->epochs;
    p[DB_MSG_COLS + 2] = f->topic;
    for (int k = 0; k < DB_CHANGE_COLS; k++)
        p[DB_MSG_COLS + 3 + k] = db_array_end(&ch[k]);
    /* pg_query_stmt copies what it sends before returning (libpq buffers it). */
    pg_query_stmt(pg, &st, DB_MSG_COLS + 3 + DB_CHANGE_COLS + 1, p, cb, ud);
    for (int k = 0; k < DB_MSG_COLS; k++)
        free((char *)p[k]);
    for (int k = 0; k < DB_CHANGE_COLS; k++)
        free((char *)p[DB_MSG_COLS + 3 + k]);
}

void db_apply_changes(pg_client_t *pg, const char *rooms, const char *ids, const char *mods,
                      pg_result_cb cb, void *ud)
{
    const char *p[] = { rooms, ids, mods };
    /* Not prepared: planned with the arrays at hand (rare, small batches),
     * so a plan made while messages was small never makes these UPDATEs
     * scan it. Each step is idempotent: an edit applies only over an older
     * one (edited < seq), a delete and its erasure again change nothing, so
     * a retried batch (or a zombie's, reading rows the owner stored) may
     * run it again. The CTEs share one snapshot: the edits of a target
     * deleted in this batch are excluded from ed, and scrub erases the
     * edit rows stored before this statement (the batch's own included). */
    pg_query(pg,
             "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[]) AS x(room, id, mod)), "
             "c AS (SELECT s.room, s.seq, s.kind, s.target, s.body, s.user_id, x.mod FROM x "
             "CROSS JOIN LATERAL (SELECT * FROM messages s WHERE s.room = x.room AND s.id = x.id "
             "LIMIT 1) s WHERE s.kind <> 'm'), "
             "ok AS (SELECT c.*, t.deleted AS was_deleted FROM c CROSS JOIN LATERAL "
             "(SELECT deleted FROM messages t WHERE t.room = c.room AND t.id = c.target AND t.kind = 'm' "
             "AND (t.user_id = c.user_id OR c.mod) LIMIT 1) t), "
             "gone AS (SELECT DISTINCT room, target FROM ok WHERE kind = 'd' OR was_deleted), "
             "ed AS (UPDATE messages m SET body = e.body, edited = e.seq FROM "
             "(SELECT DISTINCT ON (room, target) room, target, seq, body FROM ok WHERE kind = 'e' "
             "ORDER BY room, target, seq DESC) e "
             "WHERE m.room = e.room AND m.id = e.target AND COALESCE(m.edited, 0) < e.seq "
             "AND NOT EXISTS (SELECT 1 FROM gone g WHERE g.room = e.room AND g.target = e.target)), "
             "del AS (UPDATE messages m SET body = '', deleted = true, edited = NULL FROM gone g "
             "WHERE m.room = g.room AND m.id = g.target AND NOT m.deleted), "
             "scrub AS (UPDATE messages m SET body = '' FROM gone g "
             "WHERE m.room = g.room AND m.target = g.target AND m.kind = 'e' AND m.body <> '') "
             "SELECT count(*) FROM ok",
             3, p, cb, ud);
}

void db_messages_maintain(pg_client_t *pg, int ahead_months, int64_t retention_s, pg_result_cb cb,
                          void *ud)
{
    char a[16], r[24];
    snprintf(a, sizeof a, "%d", ahead_months);
    snprintf(r, sizeof r, "%" PRId64, retention_s);
    const char *p[] = { a, r };
    /* Not prepared: it runs DDL, hourly; the function holds the logic so a
     * test or an operator can call it by hand (docs/DEPLOY.md). */
    pg_query(pg, "SELECT created, dropped FROM chatd_messages_maintain($1::int, $2::bigint)", 2, p,
             cb, ud);
}

void db_messages_compact(pg_client_t *pg, int64_t min_age_s, int lock_ms, pg_result_cb cb, void *ud)
{
    char a[24], l[16];
    snprintf(a, sizeof a, "%" PRId64, min_age_s);
    snprintf(l, sizeof l, "%d", lock_ms);
    const char *p[] = { a, l };
    pg_query(pg, "SELECT part, step, n FROM chatd_messages_compact($1::bigint, $2::int)", 2, p, cb, ud);
}

void db_rooms_json(struct jbuf *b, const PGresult *res)
{
    jbuf_key(b, "rooms");
    jbuf_arr_open(b);
    for (int i = 0; i < PQntuples(res); i++) {
        jbuf_comma(b);
        jbuf_obj_open(b);
        jbuf_kv_strz(b, "room", PQgetvalue(res, i, 0));
        jbuf_kv_int(b, "seq", strtoll(PQgetvalue(res, i, 1), NULL, 10));
        jbuf_kv_int(b, "read", strtoll(PQgetvalue(res, i, 2), NULL, 10));
        jbuf_obj_close(b);
    }
    jbuf_arr_close(b);
}

int db_history_json(struct jbuf *b, const char *room, const PGresult *res, int n, size_t max_len)
{
    for (int i = 0; i < n; i++) {
        size_t len0 = b->len;
        int comma0 = b->need_comma;
        jbuf_comma(b);
        jbuf_obj_open(b);
        /* An edit or delete row is shown as the event it was delivered as
         * (its text '' once its target is deleted); a message as it is now:
         * its latest text, marked edited, or deleted with no text. */
        char kind = PQgetvalue(res, i, 6)[0];
        int change = kind == MSG_KIND_EDIT || kind == MSG_KIND_DELETE;
        jbuf_kv_strz(b, "op", record_kind_name(kind));
        jbuf_kv_strz(b, "room", room);
        jbuf_key(b, "seq");
        jbuf_rawz(b, PQgetvalue(res, i, 0));
        b->need_comma = 1;
        jbuf_kv_strz(b, "id", PQgetvalue(res, i, 1));
        jbuf_kv_strz(b, "from", PQgetvalue(res, i, 2));
        if (!PQgetisnull(res, i, 3))
            jbuf_kv_strz(b, "cid", PQgetvalue(res, i, 3));
        if (change)
            jbuf_kv_strz(b, "target", PQgetvalue(res, i, 7));
        if (kind != MSG_KIND_DELETE)
            jbuf_kv_str(b, "text", PQgetvalue(res, i, 4), (size_t)PQgetlength(res, i, 4));
        if (!change && PQgetvalue(res, i, 8)[0] == 't') {
            jbuf_key(b, "edited");
            jbuf_bool(b, 1);
        }
        if (!change && PQgetvalue(res, i, 9)[0] == 't') {
            jbuf_key(b, "deleted");
            jbuf_bool(b, 1);
        }
        jbuf_key(b, "ts");
        jbuf_rawz(b, PQgetvalue(res, i, 5));
        b->need_comma = 1;
        jbuf_obj_close(b);
        if (max_len && i > 0 && b->len > max_len && !b->failed) {
            b->len = len0; /* the page ends before this row */
            b->p[len0] = '\0';
            b->need_comma = comma0;
            return i;
        }
    }
    return n;
}

/* ---- the server API's queries (roles/api.h) ---- */

void db_room_put(pg_client_t *pg, const char *room, int private_, const char *name,
                 const char *owner, int64_t retention_s, pg_result_cb cb, void *ud)
{
    char ret[24];
    snprintf(ret, sizeof ret, "%" PRId64, retention_s);
    const char *priv = private_ < 0 ? NULL : private_ ? "t" : "f";
    const char *p[] = { room, priv, name, owner, retention_s >= 0 ? ret : NULL };
    /* xmax = 0: the row was inserted, not updated. The owner is a member
     * from the start (the room's first member of a private room). A
     * retention of 0 is none of the room's own (NULL), absent ($5 NULL)
     * keeps the room's; so does an absent private ($2 NULL): a PUT that
     * only renames a private room must not open it. */
    pg_query(pg,
             "WITH r AS (INSERT INTO rooms (room, private, name, owner, retention_s) "
             "VALUES ($1, COALESCE($2::boolean, false), $3, $4, NULLIF($5::bigint, 0)) "
             "ON CONFLICT (room) DO UPDATE SET private = COALESCE($2::boolean, rooms.private), "
             "name = COALESCE(EXCLUDED.name, rooms.name), owner = COALESCE(EXCLUDED.owner, rooms.owner), "
             "retention_s = CASE WHEN $5::bigint IS NULL THEN rooms.retention_s ELSE EXCLUDED.retention_s END, "
             "archived = false RETURNING xmax = 0 AS created, room, private, name, owner, archived, retention_s), "
             "o AS (INSERT INTO members (room, user_id) SELECT $1, $4 WHERE $4::text IS NOT NULL "
             "ON CONFLICT DO NOTHING RETURNING 1) "
             "SELECT created, room, private, name, owner, archived, "
             "(SELECT count(*) FROM o), retention_s FROM r",
             5, p, cb, ud);
}

void db_room_get(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud)
{
    const char *p[] = { room };
    pg_query(pg,
             "SELECT false, room, private, name, owner, archived, "
             "(SELECT count(*) FROM members WHERE room = $1), retention_s FROM rooms WHERE room = $1",
             1, p, cb, ud);
}

void db_rooms_expire(pg_client_t *pg, const char *after, int max_rooms, int max_rows, pg_result_cb cb,
                     void *ud)
{
    char nr[16], nm[16];
    snprintf(nr, sizeof nr, "%d", max_rooms);
    snprintf(nm, sizeof nm, "%d", max_rows);
    const char *p[] = { after, nr, nm };
    /* Not prepared: hourly, and the function's own statements are planned
     * (and cached) inside it. */
    pg_query(pg, "SELECT rooms, deleted, next_room, more FROM chatd_rooms_expire($1, $2::int, $3::int)",
             3, p, cb, ud);
}

void db_room_archive(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud)
{
    const char *p[] = { room };
    pg_query(pg,
             "WITH a AS (UPDATE rooms SET archived = true WHERE room = $1 RETURNING 1), "
             "d AS (DELETE FROM members WHERE room = $1 AND EXISTS (SELECT 1 FROM a) RETURNING user_id) "
             "SELECT NULL::text FROM a UNION ALL SELECT user_id FROM d",
             1, p, cb, ud);
}

void db_member_add(pg_client_t *pg, const char *room, const char *user, int max_rooms,
                   pg_result_cb cb, void *ud)
{
    char cap[16];
    snprintf(cap, sizeof cap, "%d", max_rooms);
    const char *p[] = { room, user, cap };
    pg_query(pg,
             "WITH r AS (SELECT archived FROM rooms WHERE room = $1), "
             "ok AS (SELECT count(*) < $3::int AS ok FROM members WHERE user_id = $2), "
             "m AS (INSERT INTO members (room, user_id) SELECT $1, $2 "
             "WHERE (SELECT NOT archived FROM r) AND (SELECT ok FROM ok) "
             "ON CONFLICT DO NOTHING RETURNING 1) "
             "SELECT (SELECT count(*) FROM r), (SELECT archived FROM r), (SELECT count(*) FROM m), "
             "(SELECT ok FROM ok), EXISTS (SELECT 1 FROM members WHERE room = $1 AND user_id = $2)",
             3, p, cb, ud);
}

void db_room_members(pg_client_t *pg, const char *room, const char *after, int limit,
                     pg_result_cb cb, void *ud)
{
    char l[16];
    snprintf(l, sizeof l, "%d", limit);
    const char *p[] = { room, after, l };
    /* First row: the room (NULL user when it exists); then its members. */
    pg_query(pg,
             "(SELECT NULL::text FROM rooms WHERE room = $1) UNION ALL "
             "(SELECT user_id FROM members WHERE room = $1 AND user_id > $2 ORDER BY user_id LIMIT $3)",
             3, p, cb, ud);
}

/* A message by id, newest month first (migrations/012): an id says nothing
 * of its month (a cid's id is derived from the cid alone). Prepared: one
 * plan; each month is an index probe pruned at run time (the generic plan
 * still locks every month, as db_known_ids does), and the LIMIT stops the
 * walk at the first month that answers. The subquery's order is the walk's
 * (a nested loop keeps its outer order). The default partition, which
 * should stay empty, last. */
#define DB_MSG_BY_ID(cols, since)                                                                \
    "SELECT " cols " FROM ((SELECT m.* FROM (SELECT lo, hi FROM chatd_messages_months(" since    \
    ")) r CROSS JOIN LATERAL (SELECT * FROM messages m WHERE m.room = $1 AND m.id = $2 "          \
    "AND m.ts >= r.lo AND m.ts < r.hi LIMIT 1) m) UNION ALL (SELECT * FROM messages_default "    \
    "WHERE room = $1 AND id = $2 LIMIT 1) LIMIT 1) m"

void db_msg_target(pg_client_t *pg, const char *room, const char *id, int64_t since_ms,
                   pg_result_cb cb, void *ud)
{
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, since_ms);
    const char *p[] = { room, id, s };
    static struct pg_stmt st = { DB_MSG_BY_ID("user_id, kind, deleted, ts", "$3::bigint") };
    pg_query_stmt(pg, &st, 3, p, cb, ud);
}

void db_msg_find(pg_client_t *pg, const char *room, const char *id, pg_result_cb cb, void *ud)
{
    const char *p[] = { room, id };
    static struct pg_stmt st = { DB_MSG_BY_ID("seq, user_id, ts", "0") };
    pg_query_stmt(pg, &st, 2, p, cb, ud);
}

void db_ban(pg_client_t *pg, const char *user, int64_t until, pg_result_cb cb, void *ud)
{
    char u[24];
    snprintf(u, sizeof u, "%" PRId64, until);
    const char *p[] = { user, u };
    pg_query(pg,
             "INSERT INTO bans (user_id, until) VALUES ($1, $2) "
             "ON CONFLICT (user_id) DO UPDATE SET until = EXCLUDED.until, created_at = now() RETURNING until",
             2, p, cb, ud);
}

void db_user_banned(pg_client_t *pg, const char *user, int64_t now_s, pg_result_cb cb, void *ud)
{
    char n[24];
    snprintf(n, sizeof n, "%" PRId64, now_s);
    const char *p[] = { user, n };
    static struct pg_stmt st = { "SELECT until FROM bans WHERE user_id = $1 AND until > $2::bigint" };
    pg_query_stmt(pg, &st, 2, p, cb, ud);
}

void db_owner_add(pg_client_t *pg, const char *room, const char *owner, const char *user,
                  int max_rooms, pg_result_cb cb, void *ud)
{
    char cap[16];
    snprintf(cap, sizeof cap, "%d", max_rooms);
    const char *p[] = { room, owner, user, cap };
    pg_query(pg,
             "WITH r AS (SELECT 1 FROM rooms WHERE room = $1 AND owner = $2 AND NOT archived), "
             "ok AS (SELECT count(*) < $4::int AS ok FROM members WHERE user_id = $3), "
             "m AS (INSERT INTO members (room, user_id) SELECT $1, $3 WHERE EXISTS (SELECT 1 FROM r) "
             "AND (SELECT ok FROM ok) ON CONFLICT DO NOTHING RETURNING 1) "
             "SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM m), "
             "EXISTS (SELECT 1 FROM members WHERE room = $1 AND user_id = $3)",
             4, p, cb, ud);
}

void db_owner_remove(pg_client_t *pg, const char *room, const char *owner, const char *user,
                     pg_result_cb cb, void *ud)
{
    const char *p[] = { room, owner, user };
    pg_query(pg,
             "WITH r AS (SELECT 1 FROM rooms WHERE room = $1 AND owner = $2), "
             "d AS (DELETE FROM members WHERE room = $1 AND user_id = $3 AND EXISTS (SELECT 1 FROM r) "
             "RETURNING 1) SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM d)",
             3, p, cb, ud);
}
