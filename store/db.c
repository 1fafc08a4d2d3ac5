#include "store/db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"

static void db_on_logged(int err, PGresult *res, void *ud)
{
    (void)ud;
    if (err)
        log_warn("pg_write_failed", "err=%s sqlstate=%s", err_code(err),
                 res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "-");
}

void db_user_rooms(pg_client_t *pg, const char *user, const char *name, pg_result_cb cb, void *ud)
{
    const char *p[] = { user, name && *name ? name : NULL };
    /* Not waited for: last_seen is informational, the membership read is not. */
    pg_query(pg,
             "INSERT INTO users (user_id, name) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE "
             "SET last_seen = now(), name = COALESCE(EXCLUDED.name, users.name)",
             2, p, db_on_logged, NULL);
    pg_query(pg, "SELECT room FROM members WHERE user_id = $1", 1, p, cb, ud);
}

void db_join(pg_client_t *pg, const char *room, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { room, user };
    pg_query(pg,
             "WITH r AS (INSERT INTO rooms (room) VALUES ($1) ON CONFLICT DO NOTHING) "
             "INSERT INTO members (room, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
             2, p, cb, ud);
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
             "SELECT seq, id, user_id, cid, body, ts FROM messages WHERE room = $1 AND seq > $2 "
             "ORDER BY seq LIMIT $3",
             3, p, cb, ud);
}

void db_rooms(pg_client_t *pg, const char *user, pg_result_cb cb, void *ud)
{
    const char *p[] = { user };
    pg_query(pg,
             "SELECT m.room, COALESCE((SELECT max(seq) FROM messages x WHERE x.room = m.room), 0), "
             "m.read_seq FROM members m WHERE m.user_id = $1 ORDER BY m.room",
             1, p, cb, ud);
}

void db_read(pg_client_t *pg, const char *room, const char *user, int64_t seq, pg_result_cb cb,
             void *ud)
{
    char s[24];
    snprintf(s, sizeof s, "%" PRId64, seq);
    const char *p[] = { room, user, s };
    pg_query(pg,
             "UPDATE members SET read_seq = GREATEST(read_seq, $3) WHERE room = $1 AND user_id = $2 "
             "RETURNING read_seq",
             3, p, cb, ud);
}

void db_max_seq(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud)
{
    const char *p[] = { room };
    pg_query(pg, "SELECT COALESCE(max(seq), 0) FROM messages WHERE room = $1", 1, p, cb, ud);
}

void db_rooms_max(pg_client_t *pg, const char *rooms, pg_result_cb cb, void *ud)
{
    const char *p[] = { rooms };
    pg_query(pg,
             "SELECT r, COALESCE((SELECT max(seq) FROM messages WHERE room = r), 0) "
             "FROM unnest($1::text[]) AS r",
             1, p, cb, ud);
}

void db_known_ids(pg_client_t *pg, const char *rooms, const char *ids, pg_result_cb cb, void *ud)
{
    const char *p[] = { rooms, ids };
    pg_query(pg,
             "SELECT m.room, m.id, m.seq FROM unnest($1::text[], $2::text[]) AS k(room, id) "
             "JOIN messages m ON m.room = k.room AND m.id = k.id",
             2, p, cb, ud);
}

#define DB_MSG_COLS 7

void db_store_msgs(pg_client_t *pg, const struct chat_msg *const *msgs, size_t n, pg_result_cb cb,
                   void *ud)
{
    /* One multi-row INSERT: one round trip per batch. */
    struct jbuf sql;
    jbuf_init(&sql, 96 + n * 48);
    jbuf_rawz(&sql, "INSERT INTO messages (room, seq, id, user_id, cid, body, ts) VALUES ");
    const char **p = calloc(n * DB_MSG_COLS, sizeof *p);
    char (*nums)[24] = calloc(n * 2, sizeof *nums);
    CHATD_ASSERT(p && nums);
    for (size_t i = 0; i < n; i++) {
        const struct chat_msg *m = msgs[i];
        char row[192];
        size_t b = i * DB_MSG_COLS;
        snprintf(row, sizeof row, "%s($%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu)", i ? "," : "", b + 1,
                 b + 2, b + 3, b + 4, b + 5, b + 6, b + 7);
        jbuf_rawz(&sql, row);
        snprintf(nums[2 * i], 24, "%" PRId64, m->seq);
        snprintf(nums[2 * i + 1], 24, "%" PRId64, m->ts);
        p[b] = m->room;
        p[b + 1] = nums[2 * i];
        p[b + 2] = m->id;
        p[b + 3] = m->from;
        p[b + 4] = m->cid;
        p[b + 5] = m->text;
        p[b + 6] = nums[2 * i + 1];
    }
    jbuf_rawz(&sql, " ON CONFLICT DO NOTHING");
    char *q = jbuf_take(&sql, NULL);
    CHATD_ASSERT(q != NULL);
    /* pg_query copies what it sends before returning (libpq buffers it). */
    pg_query(pg, q, (int)(n * DB_MSG_COLS), p, cb, ud);
    free(q);
    free(p);
    free(nums);
}

void db_history_json(struct jbuf *b, const char *room, const PGresult *res, int n)
{
    for (int i = 0; i < n; i++) {
        jbuf_comma(b);
        jbuf_obj_open(b);
        jbuf_kv_strz(b, "op", "msg");
        jbuf_kv_strz(b, "room", room);
        jbuf_key(b, "seq");
        jbuf_rawz(b, PQgetvalue(res, i, 0));
        b->need_comma = 1;
        jbuf_kv_strz(b, "id", PQgetvalue(res, i, 1));
        jbuf_kv_strz(b, "from", PQgetvalue(res, i, 2));
        if (!PQgetisnull(res, i, 3))
            jbuf_kv_strz(b, "cid", PQgetvalue(res, i, 3));
        jbuf_kv_str(b, "text", PQgetvalue(res, i, 4), (size_t)PQgetlength(res, i, 4));
        jbuf_key(b, "ts");
        jbuf_rawz(b, PQgetvalue(res, i, 5));
        b->need_comma = 1;
        jbuf_obj_close(b);
    }
}
