/* One page of a room's history for `sync` and the REST read
 * (gateway_internal.h). Membership is PostgreSQL's, not the local index's:
 * the membership query and the page query are pipelined on the gateway's
 * connection (one round trip) and answered in that order. */
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"
#include "roles/gateway_internal.h"
#include "store/db.h"

struct gw_hist {
    gateway_t *g;
    gw_history_cb cb;
    void *ud;
    int64_t after;
    int limit;
    int member;                     /* -1 until the membership query answered */
    int err;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
};

static void gw_hist_finish(struct gw_hist *h, int err, const PGresult *res, int n, int more)
{
    h->cb(err, res, n, more, h->ud);
    free(h);
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
    int n = PQntuples(res), more = n > h->limit;
    gw_hist_finish(h, 0, res, more ? h->limit : n, more);
}

static void gw_hist_query(struct gw_hist *h)
{
    h->member = -1;
    h->err = 0;
    db_is_member(h->g->pg, h->room, h->user, gw_on_hist_member, h);
    /* One row more than asked tells whether there is more. */
    db_history(h->g->pg, h->room, h->after, h->limit + 1, gw_on_hist_rows, h);
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
    strcpy(h->room, room);
    strcpy(h->user, user);
    gw_hist_query(h);
}
