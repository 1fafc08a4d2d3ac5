/* The client requests of docs/PROTOCOL.md: parse, check, act, reply.
 * Each async step carries the connection id, not a pointer: a connection
 * may be gone when a backend answers, and then the answer is dropped. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/slab.h"
#include "roles/gateway_internal.h"
#include "store/db.h"

/* One request waiting for a backend. */
struct gw_pending {
    gateway_t *g;
    struct gw_conn *c;            /* held: see struct gw_conn */
    enum proto_op op;
    char rid[PROTO_RID_MAX + 3];
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
    char cid[PROTO_CID_MAX + 1];
    char id[MSG_ID_LEN + 1];
    char target[AUTH_USER_MAX + 1]; /* add, remove: the member; edit, delete: the message id */
    int64_t after;
    int64_t head;                 /* join: the Redis counter, before it is capped by the stored head */
    int limit;
    int inserted;                 /* join/leave changed the membership */
};

/* Thousands can be in flight in a join storm; a slab keeps them out of the
 * heap pages the storm's long-lived objects land in (lib/slab.h). */
SLAB_DEFINE(gw_pendings, SLAB_INIT("gw_pending", struct gw_pending));

/* Requests that wait for PostgreSQL or Redis: one user's are capped across
 * its connections (--max-inflight-per-user), since the per-connection rate
 * limit times 32 connections let one user queue minutes of work on the
 * gateway's single PostgreSQL connection ahead of everyone else's. A send
 * waits for Kafka and has its own bounds. */
static int gw_op_is_backend(enum proto_op op) { return op != OP_SEND && op != OP_TYPING; }

static void gw_pending_free(struct gw_pending *p)
{
    if (gw_op_is_backend(p->op) && p->c->u) { /* once closed, the connection gave its count back */
        p->c->u->inflight--;
        p->c->backend--;
    }
    gw_conn_unref(p->c);
    slab_free(&gw_pendings, p);
}

static struct gw_pending *gw_pending_new(struct gw_conn *c, const struct proto_req *r)
{
    struct gw_pending *p = slab_alloc(&gw_pendings);
    CHATD_ASSERT(p != NULL);
    p->g = c->g;
    p->c = c;
    c->pending++;
    if (gw_op_is_backend(r->op)) {
        c->u->inflight++;
        c->backend++;
    }
    p->op = r->op;
    strcpy(p->rid, r->rid);
    strcpy(p->room, r->room);
    strcpy(p->user, c->u->id);
    strcpy(p->cid, r->cid);
    strcpy(p->target, r->op == OP_EDIT || r->op == OP_DELETE ? r->target : r->user);
    p->after = r->after;
    p->limit = r->limit;
    return p;
}

void gw_send_buf(struct gw_conn *c, struct jbuf *b)
{
    if (b->failed) {
        log_error("reply_failed", "user=%s err=nomem", c->u->id);
    } else if (ws_conn_send_text(c->ws, b->p, b->len) == ERR_TOO_LARGE) {
        log_info("slow_consumer", "user=%s queued=%zu", c->u->id, ws_conn_queued_bytes(c->ws));
    }
    jbuf_free(b);
}

void gw_send_error(struct gw_conn *c, const char *rid, int err, const char *why)
{
    struct jbuf b;
    int idx = -err;
    if (idx > 0 && idx < 8 && c->g->m.errors[idx])
        metric_inc(c->g->m.errors[idx]);
    jbuf_init(&b, 160);
    proto_error(&b, rid, err, why);
    gw_send_buf(c, &b);
}

/* The connection a pending request belongs to, or NULL if it has closed
 * (then p is freed). */
static struct gw_conn *gw_pending_conn(struct gw_pending *p)
{
    if (p->c->ws)
        return p->c;
    gw_pending_free(p);
    return NULL;
}

static void gw_reply_ok(struct gw_conn *c, const char *rid, const char *room, int64_t seq)
{
    struct jbuf b;
    jbuf_init(&b, 160);
    proto_reply_open(&b, "ok", rid);
    if (room)
        jbuf_kv_strz(&b, "room", room);
    if (seq >= 0)
        jbuf_kv_int(&b, "seq", seq);
    jbuf_obj_close(&b);
    gw_send_buf(c, &b);
}

/* ---- events through chat-send (typing, read, joined, left) ---- */

struct gw_acks {
    int pending; /* records in flight, + 1 until gw_acks_arm */
    int err;     /* the first failure */
    gw_acks_cb cb;
    void *ud;
};

struct gw_acks *gw_acks_new(gw_acks_cb cb, void *ud)
{
    struct gw_acks *a = malloc(sizeof *a);
    CHATD_ASSERT(a != NULL);
    *a = (struct gw_acks){ .pending = 1, .cb = cb, .ud = ud };
    return a;
}

static void gw_acks_done(struct gw_acks *a, int err)
{
    if (err && !a->err)
        a->err = err;
    if (--a->pending > 0)
        return;
    a->cb(a->err, a->ud);
    free(a);
}

void gw_acks_arm(struct gw_acks *a) { gw_acks_done(a, 0); }

static void gw_on_event_dr(int err, void *opaque)
{
    if (err)
        log_warn("event_produce_failed", "err=%s", err_code(err));
    if (opaque)
        gw_acks_done(opaque, err);
}

int gw_produce_event(gateway_t *g, char type, const char *room, const char *user,
                     struct jbuf *frame, struct gw_acks *a)
{
    struct kafka_hdrs h = { .version = RECORD_VERSION, .type = type };
    if (type == REC_JOINED || type == REC_LEFT) {
        h.user = user;
        h.user_len = strlen(user);
    }
    if (a) /* counted before the produce: its report must find it */
        a->pending++;
    int rc = frame->failed ? ERR_NOMEM
                           : kafka_produce(g->producer, g->conf->topic_send, -1, room, strlen(room),
                                           frame->p, frame->len, &h, gw_on_event_dr, a);
    jbuf_free(frame);
    if (rc) {
        log_warn("event_produce_failed", "room=%s type=%c err=%s", room, type, err_code(rc));
        if (a)
            gw_acks_done(a, rc);
    }
    return rc;
}

/* quiet: the request changed nothing (already a member, not a member, or
 * the retry of a request whose reply was lost): the record is not shown to
 * clients, it only makes the user's gateways check (GW_QUIET_TAIL). */
void gw_member_frame(struct jbuf *b, const char *op, const char *room, const char *user, int quiet)
{
    jbuf_init(b, 112);
    jbuf_obj_open(b);
    jbuf_kv_strz(b, "op", op);
    jbuf_kv_strz(b, "room", room);
    jbuf_kv_strz(b, "user", user);
    if (quiet) {
        jbuf_key(b, "quiet");
        jbuf_bool(b, 1);
    }
    jbuf_obj_close(b);
}

void gw_member_changed(gateway_t *g, const char *op, const char *room, const char *user, int quiet,
                       struct gw_acks *a)
{
    struct jbuf b;
    gw_member_frame(&b, op, room, user, quiet);
    gw_produce_event(g, op[0] == 'j' ? REC_JOINED : REC_LEFT, room, user, &b, a);
}

/* ---- join: membership (PostgreSQL), route then head (Redis) ---- */

/* A direct message must reach its recipient, who cannot know the room
 * exists: the first join of dm:A:B makes the other user a member too, in
 * the same statement (db_join), and its `joined` (user = the other)
 * reaches that user's sessions through the classifier's per-user routes,
 * which makes their gateways check and add the room. Writes the peer of
 * user in room to peer, or returns 0 for a room that is not a DM. */
static int gw_dm_peer(const char *room, const char *user, char peer[AUTH_USER_MAX + 1])
{
    if (strncmp(room, "dm:", 3) != 0)
        return 0;
    /* proto checked the form dm:A:B and that user is A or B */
    const char *a = room + 3, *colon = strchr(a, ':');
    CHATD_ASSERT(colon != NULL);
    size_t alen = (size_t)(colon - a);
    int user_is_a = strlen(user) == alen && memcmp(user, a, alen) == 0;
    const char *src = user_is_a ? colon + 1 : a;
    size_t plen = user_is_a ? strlen(colon + 1) : alen;
    if (plen == 0 || plen > AUTH_USER_MAX)
        return 0;
    memcpy(peer, src, plen);
    peer[plen] = 0;
    return 1;
}

static void gw_join_reply(struct gw_pending *p, int err, int64_t head)
{
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err)
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
    else
        gw_reply_ok(c, p->rid, p->room, head);
    gw_pending_free(p);
}

static void gw_on_join_seeded(int err, int64_t head, void *ud) { gw_join_reply(ud, err, head); }

static void gw_on_join_max(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    if (err) {
        gw_join_reply(p, err, 0);
        return;
    }
    routes_room_seed(p->g->routes, p->room, strtoll(PQgetvalue(res, 0, 0), NULL, 10),
                     gw_on_join_seeded, p);
}

/* HEAD is at most what is stored. The Redis counter can stand above it
 * for a while (a zombie's INCR, set back only by the owner's next assign of
 * the room: issue 15), and seqs up to it then go to messages sent after
 * this join, which a client tracking from HEAD would drop as duplicates.
 * Read after the route is registered: a message stored before this read is
 * at or below the answer (sync has it), one stored after it is routed here
 * live. A HEAD below the counter only makes a client sync what it then
 * also gets live, deduplicated by seq. */
static void gw_on_join_stored_head(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    int64_t stored = err ? 0 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    gw_join_reply(p, err, stored < p->head ? stored : p->head);
}

static void gw_on_join_head(int err, int64_t head, void *ud)
{
    struct gw_pending *p = ud;
    if (err == 0 && head < 0) { /* the seq key is gone (Redis restarted): re-seed */
        db_max_seq(gw_pg(p->g, p->user), p->room, gw_on_join_max, p);
        return;
    }
    if (err) {
        gw_join_reply(p, err, 0);
        return;
    }
    p->head = head;
    db_max_seq(gw_pg(p->g, p->user), p->room, gw_on_join_stored_head, p);
}

/* Still a member once the records are in Kafka: the join goes on (local
 * index, route, head). A removal or leave committed after the join may
 * have overtaken its record (the join's gateway slow to produce): its
 * `left` was applied here already, and a local add now would deliver the
 * room after it, until the join's own record is checked (PROTOCOL
 * "Removed by the server"). The check runs on the user's connection,
 * after any check of that `left`. */
static void gw_on_join_confirmed(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err || PQntuples(res) == 0) {
        gw_send_error(c, p->rid, err ? ERR_UNAVAILABLE : ERR_NOT_MEMBER,
                      err ? "joined, but not confirmed: join again"
                          : "left or removed from the room since this join");
        gw_pending_free(p);
        return;
    }
    /* Local index first: a record for the room may arrive before the head. */
    gw_member_add(p->g, c->u, p->room, 0);
    routes_room_join(p->g->routes, p->room, p->g->conf->gateway_id, p->g->epoch, p->user,
                     gw_on_join_head, p);
}

/* The member's records in Kafka: the join goes on once PostgreSQL confirms
 * the membership, or is answered `unavailable` (its retry makes a quiet
 * record). */
static void gw_on_join_acked(int err, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, "joined, but not yet announced: join again");
        gw_pending_free(p);
        return;
    }
    db_is_member(gw_pg(p->g, p->user), p->room, p->user, gw_on_join_confirmed, p);
}

/* The side effects follow the committed statement, whether or not the
 * client is still there to hear the reply: a `joined` for the user (and the
 * DM peer), loud when the row is new, quiet otherwise, so the retry of a
 * join whose reply was lost still brings every gateway of the user (and of
 * the peer, whose row the first attempt created) up to date. */
static void gw_on_join_db(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    int j = err ? DB_JOIN_FULL : db_join_result(res);
    if (!err && j != DB_JOIN_FULL && j != DB_JOIN_CLOSED) {
        char peer[AUTH_USER_MAX + 1];
        struct gw_acks *a = gw_acks_new(gw_on_join_acked, p);
        p->inserted = j == DB_JOIN_INSERTED;
        gw_member_changed(p->g, "joined", p->room, p->user, !p->inserted, a);
        if (gw_dm_peer(p->room, p->user, peer))
            gw_member_changed(p->g, "joined", p->room, peer,
                              strtol(PQgetvalue(res, 0, 1), NULL, 10) == 0, a);
        gw_acks_arm(a);
        return;
    }
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
        gw_pending_free(p);
        return;
    }
    if (j == DB_JOIN_FULL) {
        gw_send_error(c, p->rid, ERR_FORBIDDEN, "in too many rooms (--max-rooms-per-user): leave one first");
        gw_pending_free(p);
        return;
    }
    gw_send_error(c, p->rid, ERR_FORBIDDEN, "this room is private (or archived): only members may join");
    gw_pending_free(p);
}

static void gw_op_join(struct gw_conn *c, const struct proto_req *r)
{
    char peer[AUTH_USER_MAX + 1];
    int dm = gw_dm_peer(r->room, c->u->id, peer);
    db_join(gw_pg(c->g, c->u->id), r->room, c->u->id, dm ? peer : NULL, c->g->conf->max_rooms_per_user,
            gw_on_join_db, gw_pending_new(c, r));
}

/* ---- leave ---- */

/* An `ok` once the record is in Kafka (gw_acks_new). */
static void gw_on_member_acked(int err, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err)
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, "done, but not yet announced: send it again");
    else
        gw_reply_ok(c, p->rid, p->room, -1);
    gw_pending_free(p);
}

/* Like a join's, the side effects follow the committed statement: the
 * `left` (quiet when no row was deleted, e.g. the retry of a leave whose
 * reply was lost) and the local index, with or without the client. */
static void gw_on_leave_db(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    if (!err) {
        struct gw_user *u = p->c->ws ? p->c->u : gw_user_find(p->g, p->user);
        struct gw_member *m = u ? gw_member_find(p->g, u, p->room) : NULL;
        if (m)
            gw_member_remove(p->g, m);
        struct gw_acks *a = gw_acks_new(gw_on_member_acked, p);
        gw_member_changed(p->g, "left", p->room, p->user, PQntuples(res) == 0, a);
        gw_acks_arm(a);
        return;
    }
    struct gw_conn *c = gw_pending_conn(p);
    if (c) {
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
        gw_pending_free(p);
    }
}

/* ---- add, remove: the owner of a room manages its members ---- */

/* Like the server API's (roles/api.c): the record follows the committed
 * statement, and makes the member's gateways apply it. */
static void gw_on_owner_db(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    int owner = !err && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0;
    int changed = owner && strcmp(PQgetvalue(res, 0, 1), "0") != 0;
    /* The statement's snapshot does not see its own insert: changed, or a
     * member already. */
    int member = p->op == OP_ADD && owner && (changed || PQgetvalue(res, 0, 2)[0] == 't');
    if (owner && (p->op == OP_REMOVE || member)) {
        struct gw_acks *a = gw_acks_new(gw_on_member_acked, p);
        gw_member_changed(p->g, p->op == OP_ADD ? "joined" : "left", p->room, p->target, !changed, a);
        gw_acks_arm(a);
        return;
    }
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err)
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
    else if (!owner)
        gw_send_error(c, p->rid, ERR_FORBIDDEN, "only the room's owner may add or remove members");
    else
        gw_send_error(c, p->rid, ERR_FORBIDDEN, "the user is in too many rooms (--max-rooms-per-user)");
    gw_pending_free(p);
}

/* ---- send: produce, ack on Kafka's acknowledgement ---- */

/* A send Kafka did not acknowledge is `unavailable` either way; "stored"
 * tells a client whether the message may be stored anyway (the request
 * reached Kafka and its answer did not come back: ERR_IN_DOUBT). */
static void gw_send_failed(struct gw_conn *c, const char *rid, int err)
{
    int maybe = err == ERR_IN_DOUBT;
    struct jbuf b;
    metric_inc(c->g->m.errors[-ERR_UNAVAILABLE]);
    jbuf_init(&b, 200);
    proto_reply_open(&b, "error", rid);
    jbuf_kv_strz(&b, "code", err_code(ERR_UNAVAILABLE));
    jbuf_kv_strz(&b, "message", maybe ? "the message may have been stored: send it again with "
                                        "the same cid"
                                      : "the message was not stored, send it again");
    jbuf_kv_strz(&b, "stored", maybe ? "maybe" : "no");
    jbuf_obj_close(&b);
    gw_send_buf(c, &b);
}

static void gw_on_send_dr(int err, void *opaque)
{
    struct gw_pending *p = opaque;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_failed(c, p->rid, err);
        gw_pending_free(p);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 160);
    proto_reply_open(&b, "ack", p->rid);
    jbuf_kv_strz(&b, "room", p->room);
    jbuf_kv_strz(&b, "id", p->id);
    if (p->cid[0])
        jbuf_kv_strz(&b, "cid", p->cid);
    jbuf_obj_close(&b);
    metric_inc(p->g->m.acks);
    gw_send_buf(c, &b);
    gw_pending_free(p);
}

int gw_produce_msg(gateway_t *g, const char *room, const char *user, const char *cid,
                   const char *text, size_t text_len, char *id, kafka_delivery_cb dr,
                   void *opaque)
{
    return gw_produce_change(g, room, user, cid, MSG_KIND_MSG, NULL, 0, text, text_len, id, dr,
                             opaque);
}

int gw_produce_change(gateway_t *g, const char *room, const char *user, const char *cid, char kind,
                      const char *target, int mod, const char *text, size_t text_len, char *id,
                      kafka_delivery_cb dr, void *opaque)
{
    size_t room_len = strlen(room);
    if (kind == MSG_KIND_MSG)
        record_msg_id(id, room, room_len, user, cid);
    else
        record_change_id(id, room, room_len, user, cid, kind, target);
    struct chat_msg m = {
        .room = room, .room_len = room_len, .id = id, .from = user, .cid = cid,
        .text = text, .text_len = text_len, .ts = (int64_t)gw_now_ms(),
        .gw = g->conf->gateway_id, .kind = kind, .target = target, .mod = mod,
    };
    size_t len;
    char *val = record_send_encode(&m, &len);
    struct kafka_hdrs h = { .version = kind == MSG_KIND_MSG ? RECORD_VERSION : RECORD_VERSION_CHANGE,
                            .type = REC_MSG };
    int rc = val ? kafka_produce(g->producer, g->conf->topic_send, -1, room, room_len, val, len,
                                 &h, dr, opaque)
                 : ERR_NOMEM;
    free(val);
    return rc;
}

static void gw_op_send(struct gw_conn *c, const struct proto_req *r)
{
    gateway_t *g = c->g;
    struct gw_pending *p = gw_pending_new(c, r);
    int rc = gw_produce_msg(g, r->room, c->u->id, r->cid[0] ? r->cid : NULL, r->text,
                            r->text_len, p->id, gw_on_send_dr, p);
    if (rc) {
        if (rc == ERR_TOO_LARGE)
            gw_send_error(c, r->rid, ERR_TOO_LARGE, NULL);
        else
            gw_send_failed(c, r->rid, ERR_UNAVAILABLE);
        gw_pending_free(p);
        return;
    }
    metric_inc(g->m.sends);
}

/* ---- edit, delete: checked (gateway_change.c), then like a send ---- */

static int gw_change_wanted_by(void *ud) { return ((struct gw_pending *)ud)->c->ws != NULL; }

static void gw_on_change_done(int err, const char *why, const char *id, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err == ERR_NOT_FOUND || err == ERR_FORBIDDEN || err == ERR_TOO_LARGE) {
        gw_send_error(c, p->rid, err, why);
    } else if (err) {
        gw_send_failed(c, p->rid, err);
    } else {
        struct jbuf b;
        jbuf_init(&b, 200);
        proto_reply_open(&b, "ack", p->rid);
        jbuf_kv_strz(&b, "room", p->room);
        jbuf_kv_strz(&b, "id", id);
        if (p->cid[0])
            jbuf_kv_strz(&b, "cid", p->cid);
        jbuf_kv_strz(&b, "target", p->target);
        jbuf_obj_close(&b);
        gw_send_buf(c, &b);
    }
    gw_pending_free(p);
}

/* ---- sync ---- */

static void gw_on_sync_page(int err, const struct gw_page *page, void *ud)
{
    struct gw_pending *p = ud;
    p->g->hist_inflight--;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_error(c, p->rid, err,
                      err == ERR_NOT_MEMBER ? NULL : "history is unavailable, try again");
        gw_pending_free(p);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 128 + page->len);
    proto_reply_open(&b, "history", p->rid);
    jbuf_kv_strz(&b, "room", p->room);
    gw_history_page_fields(&b, page);
    jbuf_obj_close(&b);
    gw_send_buf(c, &b);
    gw_pending_free(p);
}

/* ---- rooms ---- */

static void gw_on_rooms_db(int err, PGresult *res, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
        gw_pending_free(p);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 128 + (size_t)PQntuples(res) * 64);
    proto_reply_open(&b, "rooms", p->rid);
    db_rooms_json(&b, res);
    jbuf_obj_close(&b);
    if (b.len > GW_REPLY_BUDGET(p->g)) { /* memberships from before --max-rooms-per-user */
        log_warn("rooms_reply_too_large", "user=%s rooms=%d bytes=%zu", c->u->id, PQntuples(res), b.len);
        jbuf_free(&b);
        gw_send_error(c, p->rid, ERR_TOO_LARGE, "more rooms than one reply can hold");
        gw_pending_free(p);
        return;
    }
    gw_send_buf(c, &b);
    gw_pending_free(p);
}

/* ---- read marks ---- */

static void gw_on_read_db(int err, int member, int64_t seq, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err || !member) {
        gw_send_error(c, p->rid, err ? ERR_UNAVAILABLE : ERR_NOT_MEMBER, NULL);
        gw_pending_free(p);
        return;
    }
    gw_reply_ok(c, p->rid, NULL, -1);
    struct jbuf b;
    jbuf_init(&b, 128);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "op", "read");
    jbuf_kv_strz(&b, "room", p->room);
    jbuf_kv_strz(&b, "from", p->user);
    jbuf_kv_int(&b, "seq", seq);
    jbuf_obj_close(&b);
    gw_produce_event(p->g, REC_EVENT, p->room, p->user, &b, NULL);
    gw_pending_free(p);
}

/* ---- presence ---- */

static void gw_on_presence(int err, char **users, size_t n, void *ud)
{
    struct gw_pending *p = ud;
    struct gw_conn *c = gw_pending_conn(p);
    if (!c)
        return;
    if (err) {
        gw_send_error(c, p->rid, ERR_UNAVAILABLE, NULL);
        gw_pending_free(p);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 128 + n * 24);
    proto_reply_open(&b, "presence", p->rid);
    jbuf_kv_strz(&b, "room", p->room);
    jbuf_key(&b, "online");
    jbuf_arr_open(&b);
    size_t i = 0; /* within the reply budget: a big room's list is cut (truncated) */
    for (; i < n && b.len + strlen(users[i]) + 64 <= GW_REPLY_BUDGET(p->g); i++) {
        jbuf_comma(&b);
        jbuf_strz(&b, users[i]);
    }
    jbuf_arr_close(&b);
    if (i < n) {
        jbuf_key(&b, "truncated");
        jbuf_bool(&b, 1);
    }
    jbuf_obj_close(&b);
    gw_send_buf(c, &b);
    gw_pending_free(p);
}

static void gw_op_typing(struct gw_conn *c, const struct proto_req *r)
{
    struct jbuf b;
    jbuf_init(&b, 96);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "op", "typing");
    jbuf_kv_strz(&b, "room", r->room);
    jbuf_kv_strz(&b, "from", c->u->id);
    jbuf_obj_close(&b);
    gw_produce_event(c->g, REC_EVENT, r->room, c->u->id, &b, NULL);
}

/* ---- dispatch ---- */

static int gw_rate_ok(struct gw_conn *c)
{
    const struct conf *conf = c->g->conf;
    uint64_t now = gw_now_ms();
    c->tokens += (double)(now - c->tokens_ms) / 1000.0 * conf->rate;
    if (c->tokens > conf->rate_burst)
        c->tokens = conf->rate_burst;
    c->tokens_ms = now;
    if (c->tokens < 1.0)
        return 0;
    c->tokens -= 1.0;
    return 1;
}

static void gw_dispatch(struct gw_conn *c, const struct proto_req *r)
{
    gateway_t *g = c->g;
    /* sync and read are PostgreSQL reads: they ask PostgreSQL about the
     * membership too, as the REST read does, so all three agree. */
    if (r->op != OP_JOIN && r->op != OP_LEAVE && r->op != OP_ROOMS && r->op != OP_SYNC &&
        r->op != OP_READ && r->op != OP_ADD && r->op != OP_REMOVE && !gw_member_find(c->g, c->u, r->room)) {
        gw_send_error(c, r->rid, ERR_NOT_MEMBER, NULL);
        return;
    }
    if (gw_op_is_backend(r->op) && c->u->inflight >= g->conf->max_inflight_per_user) {
        metric_inc(g->m.user_inflight_refused);
        gw_send_error(c, r->rid, ERR_RATE_LIMITED, "too many requests in flight for this user, retry shortly");
        return;
    }
    switch (r->op) {
    case OP_JOIN:
        if (!auth_rooms_allow(c->rooms, c->rooms != NULL, r->room)) {
            gw_send_error(c, r->rid, ERR_FORBIDDEN, "your token does not allow this room");
            break;
        }
        gw_op_join(c, r);
        break;
    case OP_LEAVE:
        db_leave(gw_pg(g, c->u->id), r->room, c->u->id, gw_on_leave_db, gw_pending_new(c, r));
        break;
    case OP_SEND:
        gw_op_send(c, r);
        break;
    case OP_SYNC:
        if (g->hist_inflight >= g->conf->history_concurrency) {
            metric_inc(g->m.shed);
            gw_send_error(c, r->rid, ERR_UNAVAILABLE, "too many history reads, retry shortly");
            break;
        }
        g->hist_inflight++;
        gw_history_read(g, r->room, c->u->id, r->after, r->limit, gw_on_sync_page,
                        gw_pending_new(c, r));
        break;
    case OP_ROOMS:
        db_rooms(gw_pg(g, c->u->id), c->u->id, gw_on_rooms_db, gw_pending_new(c, r));
        break;
    case OP_TYPING:
        gw_op_typing(c, r);
        break;
    case OP_READ:
        readmarks_add(gw_reads(g, c->u->id), r->room, c->u->id, r->seq, gw_on_read_db,
                      gw_pending_new(c, r));
        break;
    case OP_PRESENCE:
        routes_presence(g->routes, r->room, gw_on_presence, gw_pending_new(c, r));
        break;
    case OP_ADD:
        db_owner_add(gw_pg(g, c->u->id), r->room, c->u->id, r->user, g->conf->max_rooms_per_user, gw_on_owner_db,
                     gw_pending_new(c, r));
        break;
    case OP_REMOVE:
        db_owner_remove(gw_pg(g, c->u->id), r->room, c->u->id, r->user, gw_on_owner_db, gw_pending_new(c, r));
        break;
    case OP_EDIT:
    case OP_DELETE:
        gw_change_submit(g, r->room, c->u->id, 0, r->op == OP_EDIT ? MSG_KIND_EDIT : MSG_KIND_DELETE,
                         r->target, r->cid[0] ? r->cid : NULL, r->text, r->text_len,
                         (unsigned)g->conf->backend_timeout_ms, gw_on_change_done,
                         gw_change_wanted_by, gw_pending_new(c, r));
        break;
    }
}

void gw_ops_on_text(ws_conn_t *ws, const char *data, size_t len, void *user)
{
    struct gw_conn *c = user;
    CHATD_ASSERT(c && c->magic == GW_CONN_MAGIC && c->ws == ws);
    metric_inc(c->g->m.requests);
    if (gw_conn_expired(c, gw_now_ms()))
        return;
    /* Every frame costs a token, malformed ones too; parsing still runs so
     * the refusal can echo the rid. */
    int allowed = gw_rate_ok(c);
    struct proto_req r;
    const char *why = NULL;
    int rc = proto_parse(data, len, &c->g->limits, c->u->id, &r, &why);
    if (!allowed) {
        rc = ERR_RATE_LIMITED;
        why = "too many requests, slow down";
    }
    if (rc) {
        log_debug("request_refused", "user=%s code=%s why=%s", c->u->id, err_code(rc),
                  why ? log_q(why, strlen(why)) : "-");
        gw_send_error(c, r.rid, rc, why);
    } else {
        gw_dispatch(c, &r);
    }
    proto_req_free(&r);
}
