/* Edits and deletes of stored messages (gateway_internal.h,
 * gw_change_submit), for the client ops `edit` and `delete` and the server
 * API's moderation.
 *
 * Who may change what is decided here, from PostgreSQL: a stored message's
 * room, sender and kind never change, so a check against its row holds when
 * the change is applied later. What may change meanwhile (a delete that
 * comes first) is settled by the classifier, which applies changes in seq
 * order once they are stored (store/db.h, db_apply_changes) and checks the
 * target again there. A target that is not stored yet (its send
 * was acknowledged a moment ago) is looked up again, as a history page
 * waits for its head (gateway_history.c), for at most wait_ms (a client op:
 * --backend-timeout-ms; the server API: not at all, it answers 404 "not
 * stored yet" as its GET of a message does): either way the classifier
 * finds the target stored before the change. The first lookup reads the
 * months newest first down to the oldest (an edit of an old message); the
 * lookups again only those a message acked a moment ago can be in
 * (store/db.h, db_msg_target), not every month kept, each time. */
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"
#include "roles/gateway_internal.h"
#include "store/db.h"

#define GW_CHANGE_POLL_MIN_MS 20
#define GW_CHANGE_POLL_MAX_MS 200

struct gw_change {
    gateway_t *g;
    gw_change_cb cb;
    gw_change_wanted wanted;
    void *ud;
    char kind;
    int mod;
    char *text;                     /* edit: the new text */
    size_t text_len;
    uint64_t deadline_ms;           /* uv_now: stop waiting for the target */
    unsigned poll_ms;
    int64_t since_ms;               /* db_msg_target's since_ms: 0, then recent months only */
    int timer_on;                   /* poll initialised (closed before c is freed) */
    uv_timer_t poll;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
    char target[MSG_ID_LEN + 1];
    char cid[PROTO_CID_MAX + 1];
    char id[MSG_ID_LEN + 1];
};

static void gw_change_freed(uv_handle_t *t)
{
    struct gw_change *c = t->data;
    free(c->text);
    free(c);
}

static void gw_change_finish(struct gw_change *c, int err, const char *why)
{
    c->cb(err, why, c->id, c->ud);
    if (c->timer_on) {
        uv_close((uv_handle_t *)&c->poll, gw_change_freed);
    } else {
        free(c->text);
        free(c);
    }
}

static void gw_on_change_dr(int err, void *opaque)
{
    gw_change_finish(opaque, err, NULL);
}

static void gw_change_lookup(struct gw_change *c);

static void gw_on_change_poll(uv_timer_t *t)
{
    struct gw_change *c = t->data;
    if (c->g->closing) /* the PostgreSQL client is closed */
        gw_change_finish(c, ERR_UNAVAILABLE, NULL);
    else
        gw_change_lookup(c);
}

static void gw_on_change_target(int err, PGresult *res, void *ud)
{
    struct gw_change *c = ud;
    if (err) {
        gw_change_finish(c, ERR_UNAVAILABLE, NULL);
        return;
    }
    uv_loop_t *loop = c->g->loop;
    /* No waiting for a client that left: an id that is no message would
     * make each of its changes poll PostgreSQL for wait_ms after it. */
    if (PQntuples(res) == 0 && uv_now(loop) < c->deadline_ms && !c->g->closing &&
        (!c->wanted || c->wanted(c->ud))) {
        if (!c->timer_on) {
            uv_timer_init(loop, &c->poll);
            c->poll.data = c;
            c->timer_on = 1;
        }
        /* Stored since, it was received a moment ago (by any gateway:
         * their clocks a day apart at most, as the classifier's resend
         * lookup assumes). */
        c->since_ms = (int64_t)gw_now_ms() - DB_RESEND_AFTER_MS;
        uv_timer_start(&c->poll, gw_on_change_poll, c->poll_ms, 0);
        if (c->poll_ms < GW_CHANGE_POLL_MAX_MS)
            c->poll_ms *= 2;
        return;
    }
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 1), "m") != 0) {
        gw_change_finish(c, ERR_NOT_FOUND, "no such message in this room");
        return;
    }
    if (!c->mod && strcmp(PQgetvalue(res, 0, 0), c->user) != 0) {
        gw_change_finish(c, ERR_FORBIDDEN, "only its sender may edit or delete a message");
        return;
    }
    if (PQgetvalue(res, 0, 2)[0] == 't') {
        if (c->kind == MSG_KIND_EDIT) {
            gw_change_finish(c, ERR_NOT_FOUND, "the message was deleted");
            return;
        }
        /* Deleted already (maybe by this very request, retried): done, and
         * nothing more goes into the room. */
        record_change_id(c->id, c->room, strlen(c->room), c->user, c->cid[0] ? c->cid : NULL,
                         c->kind, c->target);
        gw_change_finish(c, 0, NULL);
        return;
    }
    int rc = gw_produce_change(c->g, c->room, c->user, c->cid[0] ? c->cid : NULL, c->kind,
                               c->target, c->mod, c->text ? c->text : "", c->text_len, c->id,
                               gw_on_change_dr, c);
    if (rc)
        gw_change_finish(c, rc, NULL);
}

static void gw_change_lookup(struct gw_change *c)
{
    db_msg_target(gw_pg(c->g, c->user), c->room, c->target, c->since_ms, gw_on_change_target, c);
}

void gw_change_submit(gateway_t *g, const char *room, const char *user, int mod, char kind,
                      const char *target, const char *cid, const char *text, size_t text_len,
                      unsigned wait_ms, gw_change_cb cb, gw_change_wanted wanted, void *ud)
{
    struct gw_change *c = calloc(1, sizeof *c);
    CHATD_ASSERT(c != NULL);
    c->g = g;
    c->cb = cb;
    c->wanted = wanted;
    c->ud = ud;
    c->kind = kind;
    c->mod = mod;
    if (kind == MSG_KIND_EDIT) {
        c->text = malloc(text_len + 1);
        CHATD_ASSERT(c->text != NULL);
        memcpy(c->text, text, text_len);
        c->text[text_len] = 0;
        c->text_len = text_len;
    }
    c->poll_ms = GW_CHANGE_POLL_MIN_MS;
    c->deadline_ms = uv_now(g->loop) + wait_ms;
    strcpy(c->room, room);
    strcpy(c->user, user);
    strcpy(c->target, target);
    if (cid)
        strcpy(c->cid, cid);
    gw_change_lookup(c);
}
