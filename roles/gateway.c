#include "roles/gateway.h"

#include <inttypes.h>
#include <stddef.h>
#ifdef __GLIBC__
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/rand.h>
#include <cJSON.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/slab.h"
#include "net/authkeys.h"
#include "net/assets.h"
#include "roles/gateway_internal.h"
#include "store/db.h"
#include "store/seen.h"

uint64_t gw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- local index: users, rooms, members ---- */

/* What each open connection keeps (lib/slab.h says why not malloc). */
SLAB_DEFINE(gw_conns, SLAB_INIT("gw_conn", struct gw_conn));
SLAB_DEFINE(gw_members, SLAB_INIT("gw_member", struct gw_member));
SLAB_DEFINE(gw_users_short, SLAB_INIT_SIZE("gw_user", sizeof(struct gw_user) + GW_USER_ID_SHORT));
SLAB_DEFINE(gw_users_long, SLAB_INIT_SIZE("gw_user_long", sizeof(struct gw_user) + AUTH_USER_MAX + 1));

SLAB_DEFINE(gw_rooms, SLAB_INIT("gw_room", struct gw_room));

static struct slab *gw_user_slab(const char *id)
{
    return strlen(id) < GW_USER_ID_SHORT ? &gw_users_short : &gw_users_long;
}

struct gw_user *gw_user_find(gateway_t *g, const char *id)
{
    struct gw_user *u;
    HASH_FIND_STR(g->users, id, u);
    return u;
}

/* g->members is keyed by the bytes of (u, r). */
#define GW_MEMBER_KEY_LEN (2 * sizeof(void *))
_Static_assert(offsetof(struct gw_member, r) == offsetof(struct gw_member, u) + sizeof(void *),
               "gw_member key is u then r");

static struct gw_member *gw_member_of(gateway_t *g, struct gw_user *u, struct gw_room *r)
{
    struct gw_member key = { .u = u, .r = r }, *m;
    HASH_FIND(hh, g->members, &key.u, GW_MEMBER_KEY_LEN, m);
    return m;
}

struct gw_member *gw_member_find(gateway_t *g, struct gw_user *u, const char *room)
{
    struct gw_room *r;
    HASH_FIND_STR(g->rooms, room, r);
    return r ? gw_member_of(g, u, r) : NULL;
}

/* Frees c once it is closed and no pending request holds it. */
static void gw_conn_release(struct gw_conn *c)
{
    if (c->pending > 0 || c->ws)
        return;
    c->magic = 0;
    free(c->rooms);
    slab_free(&gw_conns, c);
}

void gw_conn_unref(struct gw_conn *c)
{
    CHATD_ASSERT(c->magic == GW_CONN_MAGIC && c->pending > 0);
    c->pending--;
    gw_conn_release(c);
}

static void gw_on_route_head(int err, int64_t head, void *ud)
{
    (void)head;
    (void)ud;
    if (err)
        log_warn("route_register_failed", "err=%s", err_code(err));
}

struct gw_member *gw_member_add(gateway_t *g, struct gw_user *u, const char *room, int do_register)
{
    struct gw_member *m;
    struct gw_room *r;
    HASH_FIND_STR(g->rooms, room, r);
    if (r && (m = gw_member_of(g, u, r)))
        return m;
    if (!r) {
        r = slab_alloc(&gw_rooms);
        CHATD_ASSERT(r != NULL);
        strcpy(r->name, room);
        HASH_ADD_STR(g->rooms, name, r);
        metric_inc(g->m.rooms);
    }
    m = slab_alloc(&gw_members);
    CHATD_ASSERT(m != NULL);
    m->u = u;
    m->r = r;
    DL_APPEND(r->members, m);
    DL_APPEND2(u->rooms, m, uprev, unext);
    r->n_members++;
    HASH_ADD(hh, g->members, u, GW_MEMBER_KEY_LEN, m);
    if (do_register)
        routes_room_join(g->routes, room, g->conf->gateway_id, g->epoch, u->id, gw_on_route_head,
                         NULL);
    return m;
}

/* routes: also drop what Redis holds for it (not for a member whose route
 * was never registered). */
static void gw_member_unlink(gateway_t *g, struct gw_member *m, int routes)
{
    struct gw_room *r = m->r;
    struct gw_user *u = m->u;
    if (routes)
        routes_room_drop_user(g->routes, r->name, u->id, g->conf->gateway_id, g->epoch);
    HASH_DELETE(hh, g->members, m);
    DL_DELETE2(u->rooms, m, uprev, unext);
    DL_DELETE(r->members, m);
    slab_free(&gw_members, m);
    if (--r->n_members > 0)
        return;
    if (routes)
        routes_room_drop_gateway(g->routes, r->name, g->conf->gateway_id);
    HASH_DEL(g->rooms, r);
    slab_free(&gw_rooms, r);
    metric_add(g->m.rooms, -1);
}

void gw_member_remove(gateway_t *g, struct gw_member *m) { gw_member_unlink(g, m, !g->closing); }

static struct gw_user *gw_user_get(gateway_t *g, const char *id)
{
    struct gw_user *u = gw_user_find(g, id);
    if (u)
        return u;
    u = slab_alloc(gw_user_slab(id));
    CHATD_ASSERT(u != NULL);
    strcpy(u->id, id);
    HASH_ADD_STR(g->users, id, u);
    metric_inc(g->m.users);
    return u;
}

/* Frees the user once it has no connection and no handshake in flight. */
static void gw_user_release(gateway_t *g, struct gw_user *u)
{
    if (u->n_conns > 0 || u->pending > 0)
        return;
    struct gw_member *m, *tmp;
    DL_FOREACH_SAFE2(u->rooms, m, tmp, unext)
        gw_member_remove(g, m);
    if (!g->closing)
        routes_user_drop(g->routes, u->id, g->conf->gateway_id);
    HASH_DEL(g->users, u);
    slab_free(gw_user_slab(u->id), u);
    metric_add(g->m.users, -1);
}

/* ---- connections ---- */

static void gw_on_ws_close(ws_conn_t *ws, int code, void *user)
{
    struct gw_conn *c = user;
    CHATD_ASSERT(c && c->magic == GW_CONN_MAGIC);
    gateway_t *g = c->g;
    (void)ws;
    log_debug("conn_close", "user=%s conn=%" PRIu64 " code=%d", c->u->id, c->id, code);
    DL_DELETE(c->u->conns, c);
    c->u->n_conns--;
    c->u->inflight -= (int)c->backend;
    g->n_conns--;
    gw_user_release(g, c->u);
    c->ws = NULL;
    c->u = NULL;
    gw_conn_release(c);
}

static const struct ws_callbacks gw_ws_callbacks = {
    .on_text = gw_ops_on_text,
    .on_close = gw_on_ws_close,
};

struct gw_handshake {
    gateway_t *g;
    http_req_t *req;
    struct gw_user *u;
    int64_t exp_s;
    char *claim;                    /* the token's rooms claim, or NULL */
    int pending;                    /* route registrations in flight */
    int err;
    int banned;                     /* the server API banned the user (answered before the rooms) */
    char *rooms;                    /* the user's rooms, NUL-separated, registered in batches */
    size_t rooms_len, rooms_off;
};

/* The ban was checked before the rooms loaded: a ban made meanwhile found
 * no connection to close (its disconnect went to the gateways the user was
 * online on), so it is checked once more now that this one is open; a ban
 * made after this check finds it. */
static void gw_on_conn_banned(int err, PGresult *res, void *ud)
{
    struct gw_conn *c = ud;
    if (!err && PQntuples(res) > 0 && c->ws) {
        log_info("user_banned", "user=%s conn=%" PRIu64 " while_connecting=1", c->u->id, c->id);
        ws_conn_close(c->ws, 1008, "disconnected by the server");
    }
    gw_conn_unref(c);
}

static void gw_handshake_finish(struct gw_handshake *hs)
{
    gateway_t *g = hs->g;
    struct gw_user *u = hs->u;
    char hello[256];
    int n = snprintf(hello, sizeof hello,
                     "{\"op\":\"hello\",\"user\":\"%s\",\"gateway\":%d,\"heartbeat\":%d}", u->id,
                     g->conf->gateway_id, g->conf->heartbeat_s);
    struct gw_conn *c = slab_alloc(&gw_conns);
    CHATD_ASSERT(c != NULL);
    c->magic = GW_CONN_MAGIC;
    c->g = g;
    c->id = ++g->next_conn_id;
    c->u = u;
    c->tokens = g->conf->rate_burst;
    c->tokens_ms = gw_now_ms();
    c->exp_s = hs->exp_s;
    c->rooms = hs->claim;
    hs->claim = NULL;
    c->ws = ws_accept(hs->req, hello, (size_t)n, &gw_ws_callbacks, c);
    if (!c->ws) {
        free(c->rooms);
        slab_free(&gw_conns, c);
        return;
    }
    if (u->n_conns == 0)
        routes_user_add(g->routes, u->id, g->conf->gateway_id, g->epoch);
    DL_APPEND(u->conns, c);
    u->n_conns++;
    g->n_conns++;
    metric_inc(g->m.handshakes_ok);
    c->pending++;
    db_user_banned(gw_pg(g, u->id), u->id, (int64_t)time(NULL), gw_on_conn_banned, c);
    log_debug("conn_open", "user=%s conn=%" PRIu64 " peer=%s", u->id, c->id, ws_conn_peer(c->ws));
}

static void gw_handshake_done(struct gw_handshake *hs)
{
    gateway_t *g = hs->g;
    if (--hs->pending > 0)
        return;
    g->hs_inflight--;
    hs->u->pending--;
    if (hs->banned && !hs->err) {
        metric_inc(g->m.handshakes_403);
        log_info("user_banned", "user=%s", hs->u->id);
        http_respond_error(hs->req, 403, "banned", "this user is banned for now");
    } else if (hs->err == ERR_CANCELLED) { /* the client left while its rooms were loading */
        log_info("handshake_abandoned", "user=%s", hs->u->id);
        http_respond_error(hs->req, 503, "unavailable", "gone");
    } else if (hs->err || g->draining) {
        log_warn("handshake_failed", "user=%s err=%s", hs->u->id,
                 hs->err ? err_code(hs->err) : "draining");
        metric_inc(g->m.handshakes_503);
        http_respond_error(hs->req, 503, "unavailable", "a backend is unavailable, try again");
    } else {
        gw_handshake_finish(hs);
    }
    gw_user_release(g, hs->u);
    free(hs->rooms);
    free(hs->claim);
    free(hs);
}

/* Every room of the user is routed here before the 101 (and its hello), a
 * batch (one Redis round trip) at a time, and only while the client is still
 * there: an upgrade it gave up on costs at most one batch more (issue 16). */
static void gw_hs_register_next(struct gw_handshake *hs);

static void gw_on_hs_batch(int err, void *ud)
{
    struct gw_handshake *hs = ud;
    if (err)
        hs->err = err;
    gw_hs_register_next(hs);
}

static void gw_hs_register_next(struct gw_handshake *hs)
{
    gateway_t *g = hs->g;
    if (!hs->err && hs->rooms_off < hs->rooms_len && http_req_peer_gone(hs->req))
        hs->err = ERR_CANCELLED;
    if (hs->err || g->draining || hs->rooms_off >= hs->rooms_len) {
        /* Rooms not registered yet leave the local index without a word to
         * Redis when nothing else holds the user here: an upgrade given up
         * costs no more than the batches it sent. */
        struct gw_user *u = hs->u;
        while (hs->rooms_off < hs->rooms_len && u->n_conns == 0 && u->pending == 1) {
            const char *room = hs->rooms + hs->rooms_off;
            hs->rooms_off += strlen(room) + 1;
            struct gw_member *m = gw_member_find(g, u, room);
            if (m)
                gw_member_unlink(g, m, 0);
        }
        free(hs->rooms);
        hs->rooms = NULL;
        gw_handshake_done(hs);
        return;
    }
    const char *batch[ROUTES_BATCH_MAX];
    size_t n = 0;
    while (n < ROUTES_BATCH_MAX && hs->rooms_off < hs->rooms_len) {
        const char *room = hs->rooms + hs->rooms_off;
        hs->rooms_off += strlen(room) + 1;
        if (gw_member_find(g, hs->u, room)) /* else a check found it left meanwhile */
            batch[n++] = room;
    }
    if (n == 0) { /* the list is done */
        gw_hs_register_next(hs);
        return;
    }
    int rc = routes_rooms_join(g->routes, batch, n, g->conf->gateway_id, g->epoch, hs->u->id,
                               gw_on_hs_batch, hs);
    if (rc)
        gw_on_hs_batch(rc, hs);
}

static void gw_on_user_banned(int err, PGresult *res, void *ud)
{
    struct gw_handshake *hs = ud;
    if (err)
        hs->err = err;
    else
        hs->banned = PQntuples(res) > 0;
}

static void gw_on_user_rooms(int err, PGresult *res, void *ud)
{
    struct gw_handshake *hs = ud;
    if (!hs->err)
        hs->err = err;
    if (hs->banned) { /* nothing to route: refused in gw_handshake_done */
        gw_handshake_done(hs);
        return;
    }
    size_t len = 0;
    for (int i = 0; !err && i < PQntuples(res); i++)
        len += (size_t)PQgetlength(res, i, 0) + 1;
    if (len && !(hs->rooms = malloc(len)))
        hs->err = ERR_NOMEM;
    for (int i = 0; hs->rooms && i < PQntuples(res); i++) {
        size_t n = (size_t)PQgetlength(res, i, 0) + 1;
        memcpy(hs->rooms + hs->rooms_len, PQgetvalue(res, i, 0), n);
        hs->rooms_len += n;
        /* Every room into the local index now, not batch by batch: a
         * membership check answered between two batches (a `left` of a
         * leave committed after this read) would otherwise be undone by
         * the later batch's stale room. */
        gw_member_add(hs->g, hs->u, PQgetvalue(res, i, 0), 0);
    }
    gw_hs_register_next(hs);
}

/* 503 with Retry-After: a cap shed the request; the client retries soon. */
static void gw_respond_retry(http_req_t *req, const char *msg)
{
    struct jbuf b;
    jbuf_init(&b, 96);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "error", "unavailable");
    jbuf_kv_strz(&b, "message", msg);
    jbuf_obj_close(&b);
    http_respond(req, 503, "application/json", b.p, b.len, "Retry-After: 1\r\n");
    jbuf_free(&b);
}

/* Token from "Authorization: Bearer X" or, for browsers, "?token=X". */
static const char *gw_token(http_req_t *req, char *buf, size_t len)
{
    const char *h = http_req_header(req, "authorization");
    if (h && !strncasecmp(h, "Bearer ", 7))
        return h + 7;
    return http_req_query(req, "token", buf, len);
}

static int gw_authenticate(gateway_t *g, http_req_t *req, struct auth_identity *id)
{
    char buf[4096];
    const char *why;
    int rc = authkeys_verify(gw_token(req, buf, sizeof buf), (int64_t)time(NULL), id, &why);
    if (rc) {
        metric_inc(g->m.handshakes_401);
        log_info("auth_failed", "peer=%s path=%s why=%s", http_req_peer(req), http_req_path(req),
                 log_q(why, strlen(why)));
        static const char body[] = "{\"error\":\"unauthorized\",\"message\":\"missing or invalid token\"}";
        http_respond(req, 401, "application/json", body, sizeof body - 1, "WWW-Authenticate: Bearer\r\n");
    }
    return rc;
}

/* 1 if s[0..n) equals the value of Host (case-insensitive). */
static int gw_same_host(const char *s, size_t n, const char *host)
{
    return host && strlen(host) == n && !strncasecmp(s, host, n);
}

/* A browser sends Origin on every WebSocket upgrade; a page of another site
 * must not open sockets here with a token it got hold of. Clients that are
 * not browsers send none and are not concerned. */
static int gw_origin_allowed(gateway_t *g, http_req_t *req)
{
    const char *origin = http_req_header(req, "origin");
    const char *list = g->conf->origins;
    if (!origin || !strcmp(list, "*"))
        return 1;
    const char *sep = strstr(origin, "://");
    if (sep && gw_same_host(sep + 3, strlen(sep + 3), http_req_header(req, "host")))
        return 1;
    size_t olen = strlen(origin);
    for (const char *p = list; *p;) {
        p += strspn(p, " ,");
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && p[m - 1] == ' ')
            m--;
        if (m && m == olen && !strncasecmp(p, origin, m))
            return 1;
        p += n;
    }
    return 0;
}

static void gw_http_ws(gateway_t *g, http_req_t *req)
{
    struct auth_identity id;
    if (!gw_origin_allowed(g, req)) {
        const char *o = http_req_header(req, "origin");
        metric_inc(g->m.handshakes_403);
        log_info("origin_refused", "peer=%s origin=%s", http_req_peer(req), log_q(o, strlen(o)));
        http_respond_error(req, 403, "forbidden", "this Origin may not open WebSockets here");
        return;
    }
    /* Checked before the token: cheapest first when the gateway is full. */
    if (ws_conn_count() + (size_t)g->hs_inflight >= (size_t)g->conf->max_conns) {
        metric_inc(g->m.shed);
        metric_inc(g->m.handshakes_503);
        gw_respond_retry(req, "this gateway is full, retry or try another");
        return;
    }
    if (gw_authenticate(g, req, &id))
        return;
    struct gw_user *known = gw_user_find(g, id.user);
    if (known && known->n_conns + known->pending >= g->conf->max_conns_per_user) {
        metric_inc(g->m.handshakes_429);
        log_info("user_conns_refused", "user=%s conns=%d pending=%d", id.user, known->n_conns,
                 known->pending);
        static const char body[] =
            "{\"error\":\"rate_limited\",\"message\":\"too many connections for this user\"}";
        http_respond(req, 429, "application/json", body, sizeof body - 1, "Retry-After: 5\r\n");
        return;
    }
    if (!gateway_ready(g)) {
        metric_inc(g->m.handshakes_503);
        http_respond_error(req, 503, "unavailable", "this gateway is not serving; try another");
        return;
    }
    /* The rooms come from PostgreSQL: while it is down every gateway is in
     * the same place, so this one stays ready (its clients go on sending)
     * and a new client hears "retry" at once instead of a query failing. */
    if (!gateway_pg_ready(g)) {
        metric_inc(g->m.handshakes_503);
        gw_respond_retry(req, "a backend is unavailable, try again");
        return;
    }
    /* A reconnect storm is shed early and cheaply, rather than queued
     * behind PostgreSQL until clients time out. */
    if (g->hs_inflight >= g->conf->handshake_concurrency) {
        metric_inc(g->m.shed);
        metric_inc(g->m.handshakes_503);
        gw_respond_retry(req, "too many connections being set up, retry");
        return;
    }
    g->hs_inflight++;
    struct gw_handshake *hs = calloc(1, sizeof *hs);
    CHATD_ASSERT(hs != NULL);
    hs->g = g;
    hs->req = req;
    hs->u = gw_user_get(g, id.user);
    hs->exp_s = id.exp;
    if (id.has_rooms) {
        hs->claim = strdup(id.rooms);
        CHATD_ASSERT(hs->claim != NULL);
    }
    hs->u->pending++;
    hs->pending = 1;
    /* The user's rooms are loaded before the 101: once a client has its
     * hello, every room it is a member of is routed here. */
    /* Both on the one connection, answered in order: the ban first. */
    db_user_banned(gw_pg(g, id.user), id.user, (int64_t)time(NULL), gw_on_user_banned, hs);
    db_user_rooms(gw_pg(g, id.user), id.user, gw_on_user_rooms, hs);
    seen_note(g->seen, id.user, id.name);
}

/* ---- REST ---- */

struct gw_rest {
    gateway_t *g;
    http_req_t *req;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
    int64_t after;
    int limit;
};

static void gw_on_rest_page(int err, const struct gw_page *page, void *ud)
{
    struct gw_rest *rq = ud;
    rq->g->hist_inflight--;
    if (err) {
        if (err == ERR_NOT_MEMBER)
            http_respond_error(rq->req, 403, "not_member", "not a member of this room");
        else if (err == ERR_INTERNAL)
            http_respond_error(rq->req, 500, "internal", "out of memory");
        else
            http_respond_error(rq->req, 503, "unavailable", "history is unavailable, try again");
        free(rq);
        return;
    }
    struct jbuf b;
    gw_history_page_json(&b, rq->room, page);
    if (b.failed)
        http_respond_error(rq->req, 500, "internal", "out of memory");
    else
        http_respond(rq->req, 200, "application/json", b.p, b.len, NULL);
    jbuf_free(&b);
    free(rq);
}

/* A ban refuses the user's token here too, not only at the upgrade: else a
 * banned user would go on reading their rooms by REST. */
static void gw_on_rest_banned(int err, PGresult *res, void *ud)
{
    struct gw_rest *rq = ud;
    if (err || PQntuples(res) > 0) {
        rq->g->hist_inflight--;
        if (err)
            http_respond_error(rq->req, 503, "unavailable", "history is unavailable, try again");
        else
            http_respond_error(rq->req, 403, "banned", "this user is banned for now");
        free(rq);
        return;
    }
    gw_history_read(rq->g, rq->room, rq->user, rq->after, rq->limit, gw_on_rest_page, rq);
}

static int gw_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    if (!s || !*s)
        return -1;
    long long v = strtoll(s, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* GET /api/rooms/{room}/messages?after=S&limit=N */
static void gw_http_history(gateway_t *g, http_req_t *req, const char *room, size_t room_len)
{
    struct auth_identity id;
    if (gw_authenticate(g, req, &id))
        return;
    char a[32], l[32];
    const char *as = http_req_query(req, "after", a, sizeof a);
    const char *ls = http_req_query(req, "limit", l, sizeof l);
    int64_t after = 0, limit = 100;
    /* A value too long for its buffer is bad input, not an absent one. */
    if (!proto_room_valid(room, room_len) || (!as && http_req_query_has(req, "after")) ||
        (!ls && http_req_query_has(req, "limit")) ||
        (as && gw_parse_int(as, 0, INT64_MAX / 2, &after)) ||
        (ls && gw_parse_int(ls, 1, INT32_MAX, &limit))) {
        http_respond_error(req, 400, "bad_request",
                           "room must be a valid room id, after >= 0, limit >= 1");
        return;
    }
    if (g->hist_inflight >= g->conf->history_concurrency) {
        metric_inc(g->m.shed);
        gw_respond_retry(req, "too many history reads, retry");
        return;
    }
    g->hist_inflight++;
    struct gw_rest *rq = calloc(1, sizeof *rq);
    CHATD_ASSERT(rq != NULL);
    rq->g = g;
    rq->req = req;
    memcpy(rq->room, room, room_len);
    rq->after = after;
    rq->limit = limit > g->conf->history_max ? g->conf->history_max : (int)limit;
    strcpy(rq->user, id.user);
    db_user_banned(gw_pg(g, id.user), id.user, (int64_t)time(NULL), gw_on_rest_banned, rq);
}

static void gw_http_dev_token(gateway_t *g, http_req_t *req)
{
    size_t len;
    const char *body = http_req_body(req, &len);
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "user");
    if (!cJSON_IsString(u) || !auth_user_valid(u->valuestring, strlen(u->valuestring))) {
        cJSON_Delete(o);
        http_respond_error(req, 400, "bad_request", "body must be {\"user\":ID}, ID 1..64 of A-Za-z0-9_.-");
        return;
    }
    char *tok = auth_issue(g->conf->jwt_secret, u->valuestring, (int64_t)time(NULL), 86400);
    cJSON_Delete(o);
    if (!tok) {
        http_respond_error(req, 500, "internal", "could not issue a token");
        return;
    }
    struct jbuf b;
    jbuf_init(&b, strlen(tok) + 16);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "token", tok);
    jbuf_obj_close(&b);
    free(tok);
    http_respond(req, 200, "application/json", b.p, b.len, NULL);
    jbuf_free(&b);
}

int gateway_http(gateway_t *g, http_req_t *req)
{
    const char *path = http_req_path(req), *method = http_req_method(req);
    static const char api[] = "/api/rooms/", suffix[] = "/messages";
    size_t plen = strlen(path);
    if (!strcmp(path, "/ws")) {
        gw_http_ws(g, req);
    } else if (assets_serve(req)) {
        /* the browser page (web/) */
    } else if (!strcmp(path, "/api/dev/token") && g->conf->dev_tokens) {
        if (strcmp(method, "POST") != 0)
            http_respond_error(req, 405, "bad_request", "use POST");
        else
            gw_http_dev_token(g, req);
    } else if (!strncmp(path, api, sizeof api - 1) && plen > sizeof api - 1 + sizeof suffix - 1 &&
               !strcmp(path + plen - (sizeof suffix - 1), suffix)) {
        if (strcmp(method, "GET") != 0)
            http_respond_error(req, 405, "bad_request", "use GET");
        else
            gw_http_history(g, req, path + sizeof api - 1, plen - (sizeof api - 1) - (sizeof suffix - 1));
    } else {
        return 0;
    }
    return 1;
}

/* ---- fan-out: chat-receive records -> local sockets ---- */

/* skip_held: not to a member whose `left` is being checked (a removal):
 * what follows the removal in the log does not reach it meanwhile. */
static void gw_deliver(gateway_t *g, struct gw_room *r, const char *val, size_t len, int skip_held)
{
    ws_frame_t *f = ws_frame_text(val, len);
    if (!f) {
        log_error("deliver_failed", "room=%s err=nomem", r->name);
        return;
    }
    for (struct gw_member *m = r->members; m; m = m->next)
        for (struct gw_conn *c = m->u->conns; c && !(skip_held && m->held); c = c->next)
            if (ws_conn_send(c->ws, f) == 0)
                metric_inc(g->m.deliveries);
    ws_frame_unref(f);
}

/* Send one frame to every connection of u (a `joined` its sessions missed
 * because the membership was confirmed after the record was delivered). */
static void gw_deliver_user(gateway_t *g, struct gw_user *u, const char *val, size_t len)
{
    ws_frame_t *f = ws_frame_text(val, len);
    if (!f)
        return;
    for (struct gw_conn *c = u->conns; c; c = c->next)
        if (ws_conn_send(c->ws, f) == 0)
            metric_inc(g->m.deliveries);
    ws_frame_unref(f);
}

/* A joined/left record only says that (room, user) changed at some point.
 * Records of one membership come from different code paths and gateways
 * and reach this one in any order, so the record decides nothing by
 * itself: it makes the gateway ask PostgreSQL, where membership is
 * committed, and apply the answer. Queries on the gateway's one connection
 * are answered in the order they were sent, each from a snapshot taken
 * after the previous one's, and the record of a change is produced only
 * after the change committed; so the answer applied last is at least as new
 * as every change whose record has arrived (docs/ARCHITECTURE.md,
 * "Membership order"). */
struct gw_member_check {
    gateway_t *g;
    uv_timer_t retry;               /* initialised on the first retry only */
    int timer_on;
    char *frame;                    /* a loud `joined` the user's sessions did not get */
    size_t frame_len;
    int hold;                       /* a `left`'s check: the member is held until it answers */
    int loud;                       /* that `left`'s frame was delivered (not quiet) */
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1];
};

#define GW_MEMBER_CHECK_RETRY_MS 1000

static void gw_member_check_freed(uv_handle_t *h) { free(h->data); }

static void gw_member_check_free(struct gw_member_check *k)
{
    free(k->frame);
    if (k->timer_on)
        uv_close((uv_handle_t *)&k->retry, gw_member_check_freed);
    else
        free(k);
}

static void gw_member_check_send(struct gw_member_check *k);

static void gw_member_left_frame(gateway_t *g, struct gw_user *u, const char *room)
{
    struct jbuf b;
    gw_member_frame(&b, "left", room, u->id, 0);
    if (!b.failed)
        gw_deliver_user(g, u, b.p, b.len);
    jbuf_free(&b);
}

static void gw_on_member_check_retry(uv_timer_t *t)
{
    struct gw_member_check *k = t->data;
    if (k->g->closing) /* the PostgreSQL client is closed */
        gw_member_check_free(k);
    else
        gw_member_check_send(k);
}

static void gw_on_member_check(int err, PGresult *res, void *ud)
{
    struct gw_member_check *k = ud;
    gateway_t *g = k->g;
    struct gw_user *u = g->closing ? NULL : gw_user_find(g, k->user);
    if (u && err && err != ERR_CANCELLED) {
        /* In doubt until PostgreSQL answers: keep what we have, ask again. */
        log_warn("member_check_failed", "room=%s user=%s err=%s", k->room, k->user, err_code(err));
        if (!k->timer_on) {
            uv_timer_init(g->loop, &k->retry);
            k->retry.data = k;
            k->timer_on = 1;
        }
        uv_timer_start(&k->retry, gw_on_member_check_retry, GW_MEMBER_CHECK_RETRY_MS, 0);
        return;
    }
    if (u && !err) {
        struct gw_member *m = gw_member_find(g, u, k->room);
        int member = PQntuples(res) > 0;
        if (member && !m) {
            gw_member_add(g, u, k->room, 1);
        } else if (!member && m) {
            /* A check begun before a removal (by a `joined` that came in
             * the same batch as the room's next message, say) can answer
             * after it: the `left` record then finds no member here and
             * reaches nobody; a quiet `left` (the retry of a removal whose
             * record was lost) is delivered to nobody. So the user's
             * sessions hear it now, unless a loud `left` record was
             * delivered already (its check, or one pending). */
            if (!m->announced)
                gw_member_left_frame(g, u, k->room);
            gw_member_remove(g, m);
        }
        if (member && k->frame)
            gw_deliver_user(g, u, k->frame, k->frame_len);
    }
    struct gw_member *held = u && k->hold ? gw_member_find(g, u, k->room) : NULL;
    if (held && held->held > 0)
        held->held--;
    if (held && k->loud && held->announced > 0)
        held->announced--;
    gw_member_check_free(k);
}

static void gw_member_check_send(struct gw_member_check *k)
{
    db_is_member(gw_pg(k->g, k->user), k->room, k->user, gw_on_member_check, k);
}

/* Before the record's delivery: whether the user's sessions here get the
 * frame by the room's delivery depends on the membership at this point. */
static void gw_member_event(gateway_t *g, const struct kafka_rec *rec, const char *room, int quiet)
{
    if (!rec->user || !auth_user_valid(rec->user, rec->user_len))
        return;
    char user[AUTH_USER_MAX + 1];
    memcpy(user, rec->user, rec->user_len);
    user[rec->user_len] = 0;
    struct gw_user *u = gw_user_find(g, user);
    if (!u)
        return;
    if (rec->type == REC_LEFT && quiet &&
        memmem(rec->val, rec->val_len, GW_DISCONNECT_MARK, sizeof GW_DISCONNECT_MARK - 1)) {
        log_info("user_disconnected", "user=%s conns=%d", user, u->n_conns);
        for (struct gw_conn *c = u->conns; c; c = c->next)
            ws_conn_close(c->ws, 1008, "disconnected by the server");
        return;
    }
    struct gw_member_check *k = calloc(1, sizeof *k);
    CHATD_ASSERT(k != NULL);
    k->g = g;
    strcpy(k->room, room);
    strcpy(k->user, user);
    if (rec->type == REC_JOINED && !quiet && !gw_member_find(g, u, room)) {
        k->frame = malloc(rec->val_len ? rec->val_len : 1);
        CHATD_ASSERT(k->frame != NULL);
        memcpy(k->frame, rec->val, rec->val_len);
        k->frame_len = rec->val_len;
    }
    struct gw_member *m = rec->type == REC_LEFT ? gw_member_find(g, u, room) : NULL;
    if (m) {
        m->held++;
        k->hold = 1;
        k->loud = !quiet;
        m->announced += k->loud;
    }
    gw_member_check_send(k);
}

/* A quiet member record (GW_QUIET_TAIL) only makes gateways check. */
static int gw_member_quiet(const struct kafka_rec *rec)
{
    size_t n = sizeof GW_QUIET_TAIL - 1;
    return rec->val_len >= n && !memcmp(rec->val + rec->val_len - n, GW_QUIET_TAIL, n);
}

static void gw_on_records(kafka_consumer_t *kc, const struct kafka_rec *recs, size_t n, void *user)
{
    gateway_t *g = user;
    (void)kc;
    uint64_t now = gw_now_ms();
    for (size_t i = 0; i < n; i++) {
        const struct kafka_rec *rec = &recs[i];
        char room[PROTO_ROOM_MAX + 1];
        metric_inc(g->m.records);
        if (rec->version > RECORD_VERSION_MAX || rec->key_len == 0 || rec->key_len > PROTO_ROOM_MAX) {
            metric_inc(g->m.records_skipped);
            log_warn("record_skipped", "partition=%d offset=%" PRId64 " version=%d", rec->partition,
                     rec->offset, rec->version);
            continue;
        }
        memcpy(room, rec->key, rec->key_len);
        room[rec->key_len] = 0;
        if (rec->ts_ms > 0 && now >= (uint64_t)rec->ts_ms)
            metric_observe(g->m.hop_seconds, (double)(now - (uint64_t)rec->ts_ms) / 1000.0);
        if (rec->type == REC_MSG) {
            /* End to end: the sending gateway's receive time (in the frame)
             * to this fan-out; both are wall clocks, maybe of two nodes. */
            int64_t sent = record_msg_frame_ts(rec->val, rec->val_len);
            if (sent > 0 && now >= (uint64_t)sent)
                metric_observe(g->m.delivery_seconds, (double)(now - (uint64_t)sent) / 1000.0);
        }
        struct gw_room *r;
        int quiet = 0;
        if (rec->type == REC_JOINED || rec->type == REC_LEFT) {
            quiet = gw_member_quiet(rec);
            gw_member_event(g, rec, room, quiet);
        }
        HASH_FIND_STR(g->rooms, room, r);
        if (r && !quiet)
            gw_deliver(g, r, rec->val, rec->val_len,
                       rec->type != REC_JOINED && rec->type != REC_LEFT);
    }
}

/* ---- lifecycle ---- */

static void gw_on_heartbeat_done(int err, void *ud)
{
    gateway_t *g = ud;
    if (err)
        log_warn("gateway_heartbeat_failed", "err=%s epoch=%s", err_code(err), g->epoch);
    else if (!g->live_since_ms)
        g->live_since_ms = uv_now(g->loop);
}

int gw_conn_expired(struct gw_conn *c, uint64_t now_ms)
{
    if ((int64_t)(now_ms / 1000) < c->exp_s)
        return 0;
    log_info("token_expired", "user=%s conn=%" PRIu64 " exp=%" PRId64, c->u->id, c->id, c->exp_s);
    metric_inc(c->g->m.expired);
    c->exp_s = INT64_MAX; /* once: the close handshake may take a while */
    ws_conn_close(c->ws, 1008, "token expired");
    return 1;
}

/* Once a second: an idle connection is closed within a second of its exp
 * (a request after exp is refused at once, gateway_ops.c). */
static void gw_on_expiry_sweep(uv_timer_t *t)
{
    gateway_t *g = t->data;
    uint64_t now = gw_now_ms();
    struct gw_user *u, *utmp;
    HASH_ITER(hh, g->users, u, utmp)
        for (struct gw_conn *c = u->conns; c; c = c->next)
            gw_conn_expired(c, now);
    seen_flush(g->seen);
}

static void gw_on_heartbeat(uv_timer_t *t)
{
    gateway_t *g = t->data;
    if (g->cleaned && redis_client_ready(g->redis))
        routes_gateway_heartbeat(g->routes, g->conf->gateway_id, g->epoch, g->conf->gateway_ttl_s,
                                 gw_on_heartbeat_done, g);
}

/* Redis came back (maybe empty): announce again and re-register every
 * route of the live connections. */
static void gw_reregister(gateway_t *g)
{
    int gw = g->conf->gateway_id;
    routes_gateway_heartbeat(g->routes, gw, g->epoch, g->conf->gateway_ttl_s, gw_on_heartbeat_done, g);
    struct gw_user *u, *tmp;
    size_t n = 0;
    HASH_ITER(hh, g->users, u, tmp) {
        if (u->n_conns == 0)
            continue;
        routes_user_add(g->routes, u->id, gw, g->epoch);
        for (struct gw_member *m = u->rooms; m; m = m->unext, n++)
            routes_room_join(g->routes, m->r->name, gw, g->epoch, u->id, gw_on_route_head, NULL);
    }
    log_info("routes_reregistered", "users=%u memberships=%zu", HASH_COUNT(g->users), n);
}

static void gw_on_cleaned(int err, void *ud)
{
    gateway_t *g = ud;
    if (err) {
        log_warn("gateway_cleanup_failed", "err=%s", err_code(err));
        return; /* retried on the next (re)connection */
    }
    g->cleaned = 1;
    log_info("gateway_cleanup_done", "epoch=%s", g->epoch);
    gw_reregister(g);
}

void gateway_on_redis_connect(gateway_t *g)
{
    if (!g->cleaned)
        routes_gateway_cleanup(g->routes, g->conf->gateway_id, gw_on_cleaned, g);
    else
        gw_reregister(g);
}

static void gw_metrics_init(gateway_t *g)
{
    g->m.handshakes_ok = metrics_counter("chatd_handshakes_total", "WebSocket upgrades by result", "result=\"ok\"");
    g->m.handshakes_401 = metrics_counter("chatd_handshakes_total", "WebSocket upgrades by result", "result=\"unauthorized\"");
    g->m.handshakes_503 = metrics_counter("chatd_handshakes_total", "WebSocket upgrades by result", "result=\"unavailable\"");
    g->m.handshakes_403 = metrics_counter("chatd_handshakes_total", "WebSocket upgrades by result", "result=\"forbidden_origin\"");
    g->m.handshakes_429 = metrics_counter("chatd_handshakes_total", "WebSocket upgrades by result", "result=\"too_many_user_conns\"");
    g->m.expired = metrics_counter("chatd_token_expired_closes_total",
                                   "connections closed with 1008 because their token expired", NULL);
    g->m.shed = metrics_counter("chatd_shed_total", "handshakes and history reads refused by a concurrency cap", NULL);
    g->m.user_inflight_refused = metrics_counter("chatd_user_inflight_refused_total",
                                                 "requests refused: their user had --max-inflight-per-user waiting for a backend", NULL);
    g->m.requests = metrics_counter("chatd_requests_total", "client requests received", NULL);
    g->m.sends = metrics_counter("chatd_messages_in_total", "send requests produced to Kafka", NULL);
    g->m.acks = metrics_counter("chatd_acks_total", "sends acknowledged to clients", NULL);
    g->m.deliveries = metrics_counter("chatd_messages_out_total", "frames queued to client sockets", NULL);
    g->m.records = metrics_counter("chatd_gateway_records_total", "chat-receive records consumed", NULL);
    g->m.records_skipped = metrics_counter("chatd_gateway_records_skipped_total", "records of an unknown format version", NULL);
    g->m.hop_seconds = metrics_histogram("chatd_receive_hop_seconds", "classifier produce to gateway consume", NULL);
    g->m.delivery_seconds = metrics_histogram("chatd_delivery_latency_seconds",
                                              "message received by a gateway to its fan-out on the destination gateway", NULL);
    g->m.users = metrics_gauge("chatd_users_online", "users with a connection on this gateway", NULL);
    g->m.rooms = metrics_gauge("chatd_rooms_online", "rooms with a member online on this gateway", NULL);
    static const char *const codes[] = { "bad_request", "not_member", "too_large", "rate_limited",
                                         "forbidden", "unavailable", "internal" };
    for (int i = 0; i < 7; i++) {
        char l[48];
        snprintf(l, sizeof l, "code=\"%s\"", codes[i]);
        g->m.errors[i + 1] = metrics_counter("chatd_errors_total", "error replies by code", l);
    }
}

int gateway_init(gateway_t **out, const struct gateway_deps *d)
{
    gateway_t *g = calloc(1, sizeof *g);
    if (!g)
        return ERR_NOMEM;
    const struct conf *c = d->conf;
    g->loop = d->loop;
    g->conf = c;
    g->producer = d->producer;
    kafka_producer_warm(g->producer, d->conf->topic_send);
    g->routes = d->routes;
    g->redis = d->redis;
    g->limits.max_text = c->max_text;
    g->limits.history_max = c->history_max;
    unsigned char rnd[4];
    CHATD_ASSERT(RAND_bytes(rnd, sizeof rnd) == 1);
    snprintf(g->epoch, sizeof g->epoch, "%" PRIx64 "%02x%02x%02x%02x", gw_now_ms(), rnd[0], rnd[1],
             rnd[2], rnd[3]);
    gw_metrics_init(g);
    struct ws_limits wl = {
        .max_msg = c->max_frame,
        .max_queue_bytes = c->send_queue,
        .ping_interval_ms = (unsigned)c->heartbeat_s * 1000,
        .pong_timeout_ms = (unsigned)c->pong_timeout_s * 1000,
    };
    int rc = ws_init(d->loop, &wl);
    g->n_pg = c->pg_conns < 1 ? 1 : c->pg_conns > GW_PG_MAX ? GW_PG_MAX : c->pg_conns;
    for (int i = 0; rc == 0 && i < g->n_pg; i++)
        rc = pg_client_init(&g->pgs[i], d->loop, c->pg, (unsigned)c->backend_timeout_ms);
    g->pg = g->pgs[0];
    if (rc == 0 && !(g->seen = seen_new(g->pg)))
        rc = ERR_NOMEM;
    for (int i = 0; rc == 0 && i < g->n_pg; i++)
        rc = readmarks_init(&g->reads[i], d->loop, g->pgs[i]);
    if (rc == 0)
        rc = kafka_consumer_init_assigned(&g->consumer, d->loop, d->kafka, c->topic_receive,
                                          c->gateway_id, 10000, gw_on_records, g);
    if (rc) {
        log_error("gateway_init_failed", "err=%s", err_code(rc));
        seen_free(g->seen);
        for (int i = 0; i < g->n_pg; i++) {
            if (g->reads[i])
                readmarks_close(g->reads[i]);
            pg_client_close(g->pgs[i]);
        }
        free(g);
        return rc;
    }
    uv_timer_init(d->loop, &g->heartbeat);
    g->heartbeat.data = g;
    unsigned every = (unsigned)c->gateway_ttl_s * 1000 / 3;
    uv_timer_start(&g->heartbeat, gw_on_heartbeat, every, every);
    uv_timer_init(d->loop, &g->expiry);
    g->expiry.data = g;
    uv_timer_start(&g->expiry, gw_on_expiry_sweep, 1000, 1000);
    log_info("gateway_started", "epoch=%s partition=%d topic=%s", g->epoch, c->gateway_id,
             c->topic_receive);
    *out = g;
    return 0;
}

/* Classifiers refresh their cache of live gateway epochs every second
 * (store/routes.h); until they have seen this epoch they would drop its
 * routes, so clients are taken only after two refresh periods. */
#define GW_LIVE_SETTLE_MS 2000

int gateway_pg_ready(const gateway_t *g)
{
    for (int i = 0; i < g->n_pg; i++)
        if (!pg_client_ready(g->pgs[i]))
            return 0;
    return 1;
}

/* Not PostgreSQL: see gateway.h. */
int gateway_ready(const gateway_t *g)
{
    return !g->draining && g->cleaned && g->live_since_ms &&
           uv_now(g->loop) - g->live_since_ms >= GW_LIVE_SETTLE_MS && redis_client_ready(g->redis) &&
           kafka_producer_healthy(g->producer) && kafka_consumer_healthy(g->consumer);
}

size_t gateway_clients(const gateway_t *g) { return g->n_conns; }

void gateway_drain(gateway_t *g)
{
    g->draining = 1;
    /* Written while PostgreSQL is still there; a drain takes no new users. */
    seen_flush(g->seen);
    struct gw_user *u, *utmp;
    HASH_ITER(hh, g->users, u, utmp)
        for (struct gw_conn *c = u->conns; c; c = c->next)
            ws_conn_close(c->ws, 1012, "service restart");
    log_info("gateway_draining", "clients=%zu", g->n_conns);
}

void gateway_close(gateway_t *g)
{
    g->closing = 1;
    kafka_consumer_close(g->consumer);
    for (int i = 0; i < g->n_pg; i++) {
        readmarks_close(g->reads[i]);
        pg_client_close(g->pgs[i]);
    }
    /* Connections still open are cut; their on_close frees them. */
    ws_shutdown();
    uv_close((uv_handle_t *)&g->heartbeat, NULL);
    uv_close((uv_handle_t *)&g->expiry, NULL);
}

void gateway_free(gateway_t *g)
{
    CHATD_ASSERT(g->n_conns == 0);
    struct gw_user *u, *tmp;
    HASH_ITER(hh, g->users, u, tmp) {
        u->pending = 0;
        gw_user_release(g, u);
    }
    seen_free(g->seen);
    free(g);
}
