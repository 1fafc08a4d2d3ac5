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
 * the room's head ({room:R}:seq) is read first (after the client's routes
 * exist: the request comes after its hello); a page that is not full and
 * ends below the head is read again (10 ms, doubling to 100 ms) until the
 * storage reaches the head, for at most --backend-timeout-ms. Past that the
 * page is answered with more=true when it holds messages (the client asks
 * again from its last one), else `unavailable` (the client retries with
 * backoff). A missing seq key or a Redis failure skips the wait. */
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
    int member;                     /* -1 until the membership query answered */
    int err;
    int64_t head;                   /* the room's last seq at the start, -1 unknown */
    uint64_t deadline_ms;           /* uv_now: stop waiting for the head */
    unsigned poll_ms;
    int timer_on;                   /* poll initialised (closed before h is freed) */
    uv_timer_t poll;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
};

static void gw_hist_freed(uv_handle_t *t) { free(t->data); }

static void gw_hist_finish(struct gw_hist *h, int err, const PGresult *res, int n, int more)
{
    h->cb(err, res, n, more, h->ud);
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
        gw_hist_finish(h, ERR_UNAVAILABLE, NULL, 0, 0);
    else
        gw_hist_query(h);
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
    if (err || h->err) {
        gw_hist_finish(h, ERR_UNAVAILABLE, NULL, 0, 0);
        return;
    }
    if (h->member != 1) {
        gw_hist_finish(h, ERR_NOT_MEMBER, NULL, 0, 0);
        return;
    }
    int n = PQntuples(res), more = n > h->limit, shown = more ? h->limit : n;
    int64_t last = shown ? strtoll(PQgetvalue(res, shown - 1, 0), NULL, 10) : h->after;
    if (!more && h->head > last) {
        /* Seqs up to the head are given but not all stored yet. */
        uv_loop_t *loop = h->g->loop;
        if (uv_now(loop) < h->deadline_ms && !h->g->closing) {
            if (!h->timer_on) {
                uv_timer_init(loop, &h->poll);
                h->poll.data = h;
                h->timer_on = 1;
            }
            uv_timer_start(&h->poll, gw_on_hist_poll, h->poll_ms, 0);
            if (h->poll_ms < GW_HIST_POLL_MAX_MS)
                h->poll_ms *= 2;
            return;
        }
        log_warn("history_behind_head", "room=%s stored=%" PRId64 " head=%" PRId64, h->room, last,
                 h->head);
        if (shown == 0) {
            gw_hist_finish(h, ERR_UNAVAILABLE, NULL, 0, 0);
            return;
        }
        more = 1;
    }
    gw_hist_finish(h, 0, res, shown, more);
}

static void gw_hist_query(struct gw_hist *h)
{
    h->member = -1;
    h->err = 0;
    db_is_member(h->g->pg, h->room, h->user, gw_on_hist_member, h);
    /* One row more than asked tells whether there is more. */
    db_history(h->g->pg, h->room, h->after, h->limit + 1, gw_on_hist_rows, h);
}

static void gw_on_hist_head(int err, int64_t head, void *ud)
{
    struct gw_hist *h = ud;
    if (err)
        log_warn("history_head_failed", "room=%s err=%s", h->room, err_code(err));
    if (h->g->closing) {
        gw_hist_finish(h, ERR_UNAVAILABLE, NULL, 0, 0);
        return;
    }
    h->head = err ? -1 : head;
    h->deadline_ms = uv_now(h->g->loop) + (uint64_t)h->g->conf->backend_timeout_ms;
    gw_hist_query(h);
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
    h->poll_ms = GW_HIST_POLL_MIN_MS;
    strcpy(h->room, room);
    strcpy(h->user, user);
    routes_room_head(g->routes, room, gw_on_hist_head, h);
}
