/* One page of a room's history for `sync` and the REST read
 * (gateway_internal.h).
 *
 * Membership is PostgreSQL's, not the local index's: the membership query
 * and the page query are pipelined on the gateway's connection (one round
 * trip) and answered in that order.
 *
 * "You have everything" must be true. A message gets its seq (Redis) before
 * it is stored (PostgreSQL), and a client that reconnects is routed only
 * from its handshake on: a message sequenced just before and stored just
 * after the page was read would reach it neither live nor by this page. So
 * the room's head ({room:R}:seq) is read too, at the same time as the page:
 * the request comes after the client's hello, so after its routes exist,
 * and every seq given before that is at most the head, whichever of the two
 * reads runs first. A page that is not full and ends below the head is read
 * again (10 ms, doubling to 100 ms) until the storage reaches the head, for
 * at most --backend-timeout-ms. Past that the page is answered with
 * more=true when it holds messages (the client asks again from its last
 * one), else `unavailable` (the client retries with backoff). A missing seq
 * key or a Redis failure skips the wait.
 *
 * Seqs the storage held and no longer holds (retention) are not waited
 * for, and the page says so. The room's stored head (rooms.head, raised by
 * every insert, never lowered) is read just before the page, on the same
 * connection: every seq up to it was stored before the page was read, and
 * a room's seqs are stored in order, so one of them missing from the page
 * (below its first row, or anywhere in an empty page) was deleted. The page
 * then carries `first`: seqs in (after, first) are gone for good, and a
 * client moves its last seq up to first - 1 instead of asking again. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"
#include "roles/gateway_internal.h"
#include "store/db.h"

#define GW_HIST_POLL_MIN_MS 10
#define GW_HIST_POLL_MAX_MS 100

struct gw_hist {
    gateway_t *g;
    gw_history_cb cb;
    void *ud;
    int64_t after;
    int limit;
    int waiting;                    /* answers outstanding (head, page) */
    int member;                     /* -1 until the membership query answered */
    int err;                        /* of the membership or page query */
    struct jbuf msgs;               /* the page's MSG objects */
    int n, more;
    int64_t last;                   /* the page's last seq (after when empty) */
    int64_t head;                   /* the room's last seq, -1 unknown */
    int64_t stored;                 /* its stored head (rooms.head), -1 unknown */
    int64_t first_row;              /* the page's first seq, 0 when empty */
    uint64_t deadline_ms;           /* uv_now: stop waiting for the head */
    unsigned poll_ms;
    int timer_on;                   /* poll initialised (closed before h is freed) */
    uv_timer_t poll;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
};

static void gw_hist_freed(uv_handle_t *t) { free(t->data); }

/* The first seq the room still holds above after, when seqs between were
 * deleted; else 0. */
static int64_t gw_hist_first(const struct gw_hist *h)
{
    if (h->first_row > h->after + 1)
        return h->first_row;
    if (h->n == 0 && !h->more && h->stored > h->after)
        return h->stored + 1;
    return 0;
}

static void gw_hist_finish(struct gw_hist *h, int err)
{
    if (!err && h->msgs.failed)
        err = ERR_INTERNAL;
    struct gw_page page = {
        .msgs = h->msgs.p ? h->msgs.p : "", .len = h->msgs.len, .more = h->more,
        .first = err ? 0 : gw_hist_first(h),
    };
    h->cb(err, &page, h->ud);
    jbuf_free(&h->msgs);
    if (h->timer_on)
        uv_close((uv_handle_t *)&h->poll, gw_hist_freed);
    else
        free(h);
}

static void gw_hist_query(struct gw_hist *h);

static void gw_on_hist_poll(uv_timer_t *t)
{
    struct gw_hist *h = t->data;
    if (h->g->closing) /* the PostgreSQL client is closed */
        gw_hist_finish(h, ERR_UNAVAILABLE);
    else
        gw_hist_query(h);
}

/* Both the head and the page are in: answer, or read the page again. */
static void gw_hist_step(struct gw_hist *h)
{
    if (--h->waiting > 0)
        return;
    if (h->err || h->g->closing) {
        gw_hist_finish(h, ERR_UNAVAILABLE);
        return;
    }
    if (h->member != 1) {
        gw_hist_finish(h, ERR_NOT_MEMBER);
        return;
    }
    /* Every seq up to the stored head is settled: on the page, or gone. */
    if (h->more || h->head <= h->last || h->head <= h->stored) {
        gw_hist_finish(h, 0);
        return;
    }
    /* Seqs up to the head are given but not all stored yet. */
    uv_loop_t *loop = h->g->loop;
    if (uv_now(loop) < h->deadline_ms) {
        if (!h->timer_on) {
            uv_timer_init(loop, &h->poll);
            h->poll.data = h;
            h->timer_on = 1;
        }
        h->waiting = 2; /* the stored head and the page */
        uv_timer_start(&h->poll, gw_on_hist_poll, h->poll_ms, 0);
        if (h->poll_ms < GW_HIST_POLL_MAX_MS)
            h->poll_ms *= 2;
        return;
    }
    log_warn("history_behind_head", "room=%s stored=%" PRId64 " head=%" PRId64, h->room, h->last,
             h->head);
    h->more = 1;
    gw_hist_finish(h, h->n ? 0 : ERR_UNAVAILABLE);
}

static void gw_on_hist_member(int err, PGresult *res, void *ud)
{
    struct gw_hist *h = ud;
    h->err = err;
    h->member = err ? -1 : PQntuples(res) > 0;
}

static void gw_on_hist_rows(int err, PGresult *res, void *ud)
{
    struct gw_hist *h = ud;
    jbuf_reset(&h->msgs);
    h->n = h->more = 0;
    h->first_row = 0;
    if (err)
        h->err = err;
    else if (!h->err && h->member == 1) {
        int n = PQntuples(res);
        h->more = n > h->limit;
        h->n = h->more ? h->limit : n;
        /* A page ends early (more) rather than pass the output bound. */
        int fit = db_history_json(&h->msgs, h->room, res, h->n, GW_REPLY_BUDGET(h->g) - 32);
        if (fit < h->n) {
            h->n = fit;
            h->more = 1;
        }
        h->last = h->n ? strtoll(PQgetvalue(res, h->n - 1, 0), NULL, 10) : h->after;
        h->first_row = n ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    }
    gw_hist_step(h);
}

static void gw_on_hist_stored(int err, PGresult *res, void *ud)
{
    struct gw_hist *h = ud;
    h->stored = err || PQntuples(res) < 1 ? -1 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    gw_hist_step(h);
}

static void gw_hist_query(struct gw_hist *h)
{
    h->member = -1;
    h->err = 0;
    if (!h->user[0]) /* the server API reads any room */
        h->member = 1;
    else
        db_is_member(gw_pg(h->g, h->user), h->room, h->user, gw_on_hist_member, h);
    /* The stored head before the page (same connection, in order): what
     * it counts as stored was there when the page was read. One row more
     * than asked tells whether there is more. */
    pg_client_t *pg = gw_pg(h->g, h->user[0] ? h->user : h->room);
    db_max_seq(pg, h->room, gw_on_hist_stored, h);
    db_history(pg, h->room, h->after, h->limit + 1, gw_on_hist_rows, h);
}

static void gw_on_hist_head(int err, int64_t head, void *ud)
{
    struct gw_hist *h = ud;
    if (err)
        log_warn("history_head_failed", "room=%s err=%s", h->room, err_code(err));
    h->head = err ? -1 : head;
    gw_hist_step(h);
}

void gw_history_read(gateway_t *g, const char *room, const char *user, int64_t after, int limit,
                     gw_history_cb cb, void *ud)
{
    struct gw_hist *h = calloc(1, sizeof *h);
    CHATD_ASSERT(h != NULL);
    h->g = g;
    h->cb = cb;
    h->ud = ud;
    h->after = after;
    h->limit = limit;
    h->last = after;
    h->stored = -1;
    h->poll_ms = GW_HIST_POLL_MIN_MS;
    h->deadline_ms = uv_now(g->loop) + (uint64_t)g->conf->backend_timeout_ms;
    jbuf_init(&h->msgs, 256);
    strcpy(h->room, room);
    strcpy(h->user, user);
    h->waiting = 3; /* the head (Redis), the stored head and the page */
    routes_room_head(g->routes, room, gw_on_hist_head, h);
    gw_hist_query(h);
}

void gw_history_page_fields(struct jbuf *b, const struct gw_page *page)
{
    jbuf_key(b, "messages");
    jbuf_arr_open(b);
    jbuf_raw(b, page->msgs, page->len);
    jbuf_arr_close(b);
    jbuf_key(b, "more");
    jbuf_bool(b, page->more);
    if (page->first > 0)
        jbuf_kv_int(b, "first", page->first);
}

void gw_history_page_json(struct jbuf *b, const char *room, const struct gw_page *page)
{
    jbuf_init(b, 128 + page->len);
    jbuf_obj_open(b);
    jbuf_kv_strz(b, "room", room);
    gw_history_page_fields(b, page);
    jbuf_obj_close(b);
}
