#include "store/routes.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/slab.h"

#define ROUTES_EPOCH_MAX 40
#define ROUTES_KEY_MAX 320

struct routes {
    uv_loop_t *loop;
    redis_client_t *redis;
    int n_gw;
    unsigned dedup_ttl_s;
    char (*live)[ROUTES_EPOCH_MAX];   /* live epoch per gateway id, "" = dead */
    int live_known;
    int live_pending;                 /* GETs of the current refresh in flight */
    uv_timer_t live_timer;
    struct redis_script assign, join, join_many, seed;
};

/* Assigns seqs to a room's messages of one batch, in order, in one call:
 * a call is atomic, so no other connection's commands (and no NOSCRIPT
 * retry) can slip between two messages of a room.
 * KEYS: seq, then one id key per message. ARGV: ttl, floor, then per
 * message its known seq (or '') and its tag. Who gets the messages live is
 * read after they are stored (routes_dests), not here: roles/classifier.c.
 * The floor is the room's max stored seq, exact because only the holder of
 * the partition's fence stores into the room. The counter is set to it,
 * down as well as up: a seq above the floor was handed out and never
 * stored (a failed attempt, a zombie's INCR, a counter restored from a
 * stale floor), and counting on from it left a hole nobody fills (issue 15
 * review). For each message, in order:
 *   - PostgreSQL's seq for the id (known) wins: the counter rises to it;
 *     with no id key left (Redis restarted, the key expired), or one that
 *     names this record under another seq (an unstored attempt, a zombie's
 *     INCR), nothing says another record had it, so it is this record's and
 *     delivered: a stored batch whose produce failed, retried after Redis
 *     lost or a zombie rewrote its keys, was committed and never delivered
 *     live (a resent cid may then be delivered twice, under its one seq:
 *     clients dedupe by seq);
 *   - else an id already given a seq in this call keeps it (a resent cid
 *     in the same batch);
 *   - else INCR: an id key left from an earlier call names a seq that was
 *     never stored, so it is not reused (the same record retried from the
 *     same floor gets the same seq anyway).
 * dup: 0 new, 2 the id key was this record's (deliver), 1 another's. */
static const char routes_assign_lua[] =
    "local ttl, floor = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "redis.call('SET', KEYS[1], floor)\n"
    "local cur, seen, out = floor, {}, {}\n"
    "for i = 2, #KEYS do\n"
    "  local known, tag = ARGV[2 * i - 1], ARGV[2 * i]\n"
    "  local seq, t\n"
    "  local s = redis.call('GET', KEYS[i])\n"
    "  if s then\n"
    "    local a, b = string.match(s, '^(%d+)|?(.*)$')\n"
    "    seq, t = tonumber(a), b\n"
    "  end\n"
    "  local dup\n"
    "  if known ~= '' then\n"
    "    if not s then t = tag end\n"
    "    if seq ~= tonumber(known) then\n"
    "      if t ~= tag then t = 'pg' end\n"
    "      seq = tonumber(known)\n"
    "      redis.call('SET', KEYS[i], known .. '|' .. t, 'EX', ttl)\n"
    "    end\n"
    "    if seq > cur then redis.call('SET', KEYS[1], seq); cur = seq end\n"
    "    dup = (t == tag) and 2 or 1\n"
    "  elseif seen[KEYS[i]] then\n"
    "    dup = (t == tag) and 2 or 1\n"
    "  else\n"
    "    dup = (seq and t == tag) and 2 or 0\n"
    "    seq = redis.call('INCR', KEYS[1])\n"
    "    cur = seq\n"
    "    redis.call('SET', KEYS[i], seq .. '|' .. tag, 'EX', ttl)\n"
    "  end\n"
    "  seen[KEYS[i]] = true\n"
    "  out[#out + 1] = seq\n"
    "  out[#out + 1] = dup\n"
    "end\n"
    "return out\n";

/* Register the route, then read the head: the order is the invariant. */
static const char routes_join_lua[] =
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('SADD', KEYS[2], ARGV[3])\n"
    "local s = redis.call('GET', KEYS[3])\n"
    "if s then return tonumber(s) end\n"
    "return -1\n";

/* A user's rooms at an upgrade, one batch per call: the route and the
 * member of each, as routes_join_lua without reading the heads (a new
 * connection syncs). KEYS: gw:N:rooms, then room:R:gw and room:R:on per
 * room. ARGV: gw, epoch, member, then the rooms. */
static const char routes_join_many_lua[] =
    "local n = (#KEYS - 1) / 2\n"
    "for i = 1, n do\n"
    "  redis.call('SADD', KEYS[1], ARGV[3 + i])\n"
    "  redis.call('HSET', KEYS[2 * i], ARGV[1], ARGV[2])\n"
    "  redis.call('SADD', KEYS[2 * i + 1], ARGV[3])\n"
    "end\n"
    "return n\n";

static const char routes_seed_lua[] =
    "redis.call('SET', KEYS[1], ARGV[1], 'NX')\n"
    "return tonumber(redis.call('GET', KEYS[1]))\n";

/* One in-flight call: what to call back and with what. */
struct routes_op {
    routes_t *rt;
    void *user;
    union {
        routes_done_cb done;
        routes_head_cb head;
        routes_assign_cb assign;
        routes_dests_cb dests;
        routes_presence_cb presence;
    } cb;
    int gw;
    int pending;                      /* replies still expected (dests) */
    int err;
    size_t n_gws;
    int *gws;                         /* n_gw slots, for assign and dests */
    struct routes_assign_item *items; /* assign: the caller's, filled in */
    size_t n_items;
    char key[ROUTES_KEY_MAX];
};

/* A connection storm has thousands in flight: from a slab, apart from the
 * long-lived heap objects (lib/slab.h). */
SLAB_DEFINE(routes_ops, SLAB_INIT("routes_op", struct routes_op));

static struct routes_op *routes_op_new(routes_t *rt, void *user)
{
    struct routes_op *op = slab_alloc(&routes_ops);
    CHATD_ASSERT(op != NULL);
    op->rt = rt;
    op->user = user;
    return op;
}

static struct routes_op *routes_op_new_gws(routes_t *rt, void *user)
{
    struct routes_op *op = routes_op_new(rt, user);
    op->gws = calloc((size_t)rt->n_gw, sizeof *op->gws);
    CHATD_ASSERT(op->gws != NULL);
    return op;
}

static void routes_op_free(struct routes_op *op)
{
    free(op->gws);
    slab_free(&routes_ops, op);
}

static void routes_key(char *out, const char *kind, const char *id, const char *suffix)
{
    snprintf(out, ROUTES_KEY_MAX, "{%s:%s}:%s", kind, id, suffix);
}

/* ---- live gateway cache ---- */

#define ROUTES_LIVE_MS 1000      /* refresh period */
#define ROUTES_LIVE_FIRST_MS 20  /* retry of the first refresh */

static void routes_on_live(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    routes_t *rt = op->rt;
    if (err == 0 && op->gw < rt->n_gw) {
        if (r->type == REDIS_REPLY_STRING && r->len < ROUTES_EPOCH_MAX)
            memcpy(rt->live[op->gw], r->str, r->len + 1);
        else
            rt->live[op->gw][0] = 0;
    }
    if (--rt->live_pending == 0 && err == 0)
        rt->live_known = 1;
    routes_op_free(op);
}

/* Until the first refresh has answered, a classifier stores nothing (every
 * route would look dead), and Redis is seldom connected at the first tick:
 * retried every ROUTES_LIVE_FIRST_MS rather than a whole period later (a
 * started classifier's first batch waited ~1 s for it, docs/RELIABILITY.md,
 * fault 13). */
static void routes_on_live_timer(uv_timer_t *t)
{
    routes_t *rt = t->data;
    if (!rt->live_known)
        uv_timer_start(t, routes_on_live_timer, ROUTES_LIVE_FIRST_MS, ROUTES_LIVE_MS);
    if (rt->live_pending || !redis_client_ready(rt->redis))
        return;
    for (int gw = 0; gw < rt->n_gw; gw++) {
        struct routes_op *op = routes_op_new(rt, NULL);
        op->gw = gw;
        rt->live_pending++;
        redis_command(rt->redis, routes_on_live, op, "GET gw:%d", gw);
    }
}

static int routes_is_live(const routes_t *rt, const char *gw_s, size_t gw_len, const char *epoch,
                          size_t ep_len, int *gw_out)
{
    char tmp[16];
    if (gw_len == 0 || gw_len >= sizeof tmp)
        return 0;
    memcpy(tmp, gw_s, gw_len);
    tmp[gw_len] = 0;
    char *end;
    long gw = strtol(tmp, &end, 10);
    if (*end || gw < 0 || gw >= rt->n_gw)
        return 0;
    const char *live = rt->live[gw];
    if (strlen(live) != ep_len || memcmp(live, epoch, ep_len) != 0)
        return 0;
    *gw_out = (int)gw;
    return 1;
}

/* Collects live gateway ids from an HGETALL reply into gws (deduplicated). */
static size_t routes_collect(const routes_t *rt, const redisReply *h, int *gws, size_t n, size_t cap)
{
    if (!h || h->type != REDIS_REPLY_ARRAY)
        return n;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        int gw;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !routes_is_live(rt, k->str, k->len, v->str, v->len, &gw))
            continue;
        size_t j = 0;
        while (j < n && gws[j] != gw)
            j++;
        if (j == n && n < cap)
            gws[n++] = gw;
    }
    return n;
}

int routes_init(routes_t **out, uv_loop_t *loop, redis_client_t *redis, int n_gateways,
                unsigned dedup_ttl_s)
{
    routes_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return ERR_NOMEM;
    rt->live = calloc((size_t)n_gateways, sizeof *rt->live);
    if (!rt->live) {
        free(rt);
        return ERR_NOMEM;
    }
    rt->loop = loop;
    rt->redis = redis;
    rt->n_gw = n_gateways;
    rt->dedup_ttl_s = dedup_ttl_s;
    redis_script_init(&rt->assign, routes_assign_lua);
    redis_script_init(&rt->join, routes_join_lua);
    redis_script_init(&rt->join_many, routes_join_many_lua);
    redis_script_init(&rt->seed, routes_seed_lua);
    uv_timer_init(loop, &rt->live_timer);
    rt->live_timer.data = rt;
    uv_timer_start(&rt->live_timer, routes_on_live_timer, 0, ROUTES_LIVE_MS);
    *out = rt;
    return 0;
}

void routes_close(routes_t *rt) { uv_close((uv_handle_t *)&rt->live_timer, NULL); }

void routes_free(routes_t *rt)
{
    free(rt->live);
    free(rt);
}

int routes_live_known(const routes_t *rt) { return rt->live_known; }

/* ---- gateway side ---- */

static void routes_on_done(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    if (err == 0 && r->type == REDIS_REPLY_ERROR) {
        log_error("redis_error", "err=%s", log_q(r->str, r->len));
        err = ERR_UNAVAILABLE;
    }
    if (op->cb.done)
        op->cb.done(err, op->user);
    routes_op_free(op);
}

static void routes_on_logged(int err, redisReply *r, void *user)
{
    (void)user;
    if (err)
        log_warn("route_update_failed", "err=%s", err_code(err));
    else if (r->type == REDIS_REPLY_ERROR)
        log_warn("route_update_failed", "err=%s", log_q(r->str, r->len));
}

void routes_gateway_heartbeat(routes_t *rt, int gw, const char *epoch, int ttl_s,
                              routes_done_cb cb, void *user)
{
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.done = cb;
    redis_command(rt->redis, routes_on_done, op, "SET gw:%d %s EX %d", gw, epoch, ttl_s);
}

static void routes_on_cleanup_users(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    if (err == 0 && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            char key[ROUTES_KEY_MAX];
            routes_key(key, "user", r->element[i]->str, "gw");
            redis_command(op->rt->redis, routes_on_logged, NULL, "HDEL %s %d", key, op->gw);
        }
        redis_command(op->rt->redis, routes_on_logged, NULL, "DEL gw:%d:users", op->gw);
    }
    /* The DELs above are pipelined before this PING: its reply means done. */
    redis_command(op->rt->redis, routes_on_done, op, "PING");
}

static void routes_on_cleanup_rooms(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    if (err) {
        routes_on_done(err, NULL, op);
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            char key[ROUTES_KEY_MAX];
            routes_key(key, "room", r->element[i]->str, "gw");
            redis_command(op->rt->redis, routes_on_logged, NULL, "HDEL %s %d", key, op->gw);
        }
        redis_command(op->rt->redis, routes_on_logged, NULL, "DEL gw:%d:rooms", op->gw);
    }
    redis_command(op->rt->redis, routes_on_cleanup_users, op, "SMEMBERS gw:%d:users", op->gw);
}

void routes_gateway_cleanup(routes_t *rt, int gw, routes_done_cb cb, void *user)
{
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.done = cb;
    op->gw = gw;
    redis_command(rt->redis, routes_on_cleanup_rooms, op, "SMEMBERS gw:%d:rooms", gw);
}

static void routes_on_head(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    int64_t head = 0;
    if (err == 0 && r->type == REDIS_REPLY_INTEGER)
        head = r->integer;
    else if (err == 0) {
        log_error("redis_script_failed", "reply_type=%d err=%s", r->type,
                  r->type == REDIS_REPLY_ERROR ? log_q(r->str, r->len) : "-");
        err = ERR_UNAVAILABLE;
    }
    op->cb.head(err, head, op->user);
    routes_op_free(op);
}

void routes_room_join(routes_t *rt, const char *room, int gw, const char *epoch, const char *user,
                      routes_head_cb cb, void *user_data)
{
    char k1[ROUTES_KEY_MAX], k2[ROUTES_KEY_MAX], k3[ROUTES_KEY_MAX], gws[16], member[160];
    routes_key(k1, "room", room, "gw");
    routes_key(k2, "room", room, "on");
    routes_key(k3, "room", room, "seq");
    snprintf(gws, sizeof gws, "%d", gw);
    snprintf(member, sizeof member, "%s@%d:%s", user, gw, epoch);
    const char *argv[] = { k1, k2, k3, gws, epoch, member };
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    struct routes_op *op = routes_op_new(rt, user_data);
    op->cb.head = cb;
    /* Cleanup bookkeeping first: it is pipelined ahead of the script. */
    redis_command(rt->redis, routes_on_logged, NULL, "SADD gw:%d:rooms %s", gw, room);
    redis_script_run(rt->redis, &rt->join, routes_on_head, op, 3, 6, argv, lens);
}

int routes_rooms_join(routes_t *rt, const char *const *rooms, size_t n, int gw, const char *epoch,
                      const char *user, routes_done_cb cb, void *user_data)
{
    CHATD_ASSERT(n > 0 && n <= ROUTES_BATCH_MAX);
    size_t argc = 1 + 2 * n + 3 + n;
    char (*keys)[ROUTES_KEY_MAX] = malloc((1 + 2 * n) * sizeof *keys);
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    char gws[16], member[160];
    if (!keys || !argv || !lens) {
        free(keys);
        free(argv);
        free(lens);
        return ERR_NOMEM;
    }
    snprintf(keys[0], sizeof keys[0], "gw:%d:rooms", gw);
    argv[0] = keys[0];
    for (size_t i = 0; i < n; i++) {
        routes_key(keys[1 + 2 * i], "room", rooms[i], "gw");
        routes_key(keys[2 + 2 * i], "room", rooms[i], "on");
        argv[1 + 2 * i] = keys[1 + 2 * i];
        argv[2 + 2 * i] = keys[2 + 2 * i];
        argv[1 + 2 * n + 3 + i] = rooms[i];
    }
    snprintf(gws, sizeof gws, "%d", gw);
    snprintf(member, sizeof member, "%s@%d:%s", user, gw, epoch);
    argv[1 + 2 * n] = gws;
    argv[2 + 2 * n] = epoch;
    argv[3 + 2 * n] = member;
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    struct routes_op *op = routes_op_new(rt, user_data);
    op->cb.done = cb;
    redis_script_run(rt->redis, &rt->join_many, routes_on_done, op, (int)(1 + 2 * n), (int)argc, argv, lens);
    free(keys);
    free(argv);
    free(lens);
    return 0;
}

static void routes_on_get_head(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    int64_t head = -1;
    if (err == 0 && r->type == REDIS_REPLY_STRING)
        head = strtoll(r->str, NULL, 10);
    else if (err == 0 && r->type != REDIS_REPLY_NIL)
        err = ERR_UNAVAILABLE;
    op->cb.head(err, head, op->user);
    routes_op_free(op);
}

void routes_room_head(routes_t *rt, const char *room, routes_head_cb cb, void *user)
{
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.head = cb;
    routes_key(op->key, "room", room, "seq");
    redis_command(rt->redis, routes_on_get_head, op, "GET %s", op->key);
}

void routes_room_seed(routes_t *rt, const char *room, int64_t seq, routes_head_cb cb, void *user)
{
    char k[ROUTES_KEY_MAX], v[24];
    routes_key(k, "room", room, "seq");
    snprintf(v, sizeof v, "%" PRId64, seq);
    const char *argv[] = { k, v };
    size_t lens[] = { strlen(k), strlen(v) };
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.head = cb;
    redis_script_run(rt->redis, &rt->seed, routes_on_head, op, 1, 2, argv, lens);
}

void routes_room_drop_gateway(routes_t *rt, const char *room, int gw)
{
    char k[ROUTES_KEY_MAX];
    routes_key(k, "room", room, "gw");
    redis_command(rt->redis, routes_on_logged, NULL, "HDEL %s %d", k, gw);
    redis_command(rt->redis, routes_on_logged, NULL, "SREM gw:%d:rooms %s", gw, room);
}

void routes_room_drop_user(routes_t *rt, const char *room, const char *user, int gw,
                           const char *epoch)
{
    char k[ROUTES_KEY_MAX];
    routes_key(k, "room", room, "on");
    redis_command(rt->redis, routes_on_logged, NULL, "SREM %s %s@%d:%s", k, user, gw, epoch);
}

void routes_user_add(routes_t *rt, const char *user, int gw, const char *epoch)
{
    char k[ROUTES_KEY_MAX];
    routes_key(k, "user", user, "gw");
    redis_command(rt->redis, routes_on_logged, NULL, "SADD gw:%d:users %s", gw, user);
    redis_command(rt->redis, routes_on_logged, NULL, "HSET %s %d %s", k, gw, epoch);
}

void routes_user_drop(routes_t *rt, const char *user, int gw)
{
    char k[ROUTES_KEY_MAX];
    routes_key(k, "user", user, "gw");
    redis_command(rt->redis, routes_on_logged, NULL, "HDEL %s %d", k, gw);
    redis_command(rt->redis, routes_on_logged, NULL, "SREM gw:%d:users %s", gw, user);
}

/* Members are "user@gw:epoch"; only live ones count, stale ones are removed. */
static int routes_strcmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void routes_on_presence(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    char **users = NULL;
    size_t n = 0;
    if (err == 0 && r->type != REDIS_REPLY_ARRAY)
        err = ERR_UNAVAILABLE;
    if (err == 0 && r->elements)
        users = calloc(r->elements, sizeof *users);
    for (size_t i = 0; users && i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const char *at = e->type == REDIS_REPLY_STRING ? memchr(e->str, '@', e->len) : NULL;
        const char *colon = at ? memchr(at, ':', e->len - (size_t)(at - e->str)) : NULL;
        int gw;
        if (!colon || !routes_is_live(op->rt, at + 1, (size_t)(colon - at - 1), colon + 1,
                                      e->len - (size_t)(colon + 1 - e->str), &gw)) {
            if (op->rt->live_known && e->type == REDIS_REPLY_STRING)
                redis_command(op->rt->redis, routes_on_logged, NULL, "SREM %s %b", op->key,
                              e->str, e->len);
            continue;
        }
        /* A user online on several gateways has several entries. */
        if ((users[n] = strndup(e->str, (size_t)(at - e->str))) != NULL)
            n++;
    }
    /* Duplicates removed after a sort: a big room's set is one reply, and a
     * pairwise scan was O(n^2) per presence request (issue 16). */
    if (n > 1) {
        qsort(users, n, sizeof *users, routes_strcmp);
        size_t k = 1;
        for (size_t i = 1; i < n; i++) {
            if (strcmp(users[i], users[k - 1]) == 0)
                free(users[i]);
            else
                users[k++] = users[i];
        }
        n = k;
    }
    op->cb.presence(err, users, n, op->user);
    for (size_t i = 0; i < n; i++)
        free(users[i]);
    free(users);
    routes_op_free(op);
}

void routes_presence(routes_t *rt, const char *room, routes_presence_cb cb, void *user)
{
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.presence = cb;
    routes_key(op->key, "room", room, "on");
    redis_command(rt->redis, routes_on_presence, op, "SMEMBERS %s", op->key);
}

/* ---- classifier side ---- */

static void routes_on_assign(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    struct routes_assign_item *items = op->items;
    size_t want = 2 * op->n_items;
    if (err == 0 && (r->type != REDIS_REPLY_ARRAY || r->elements != want)) {
        log_error("redis_script_failed", "script=assign items=%zu err=%s", op->n_items,
                  r->type == REDIS_REPLY_ERROR ? log_q(r->str, r->len) : "unexpected reply");
        err = ERR_UNAVAILABLE;
    }
    for (size_t i = 0; err == 0 && i < op->n_items; i++) {
        const redisReply *s = r->element[2 * i], *d = r->element[2 * i + 1];
        if (s->type != REDIS_REPLY_INTEGER || d->type != REDIS_REPLY_INTEGER) {
            log_error("redis_script_failed", "script=assign err=\"unexpected reply\"");
            err = ERR_UNAVAILABLE;
            break;
        }
        items[i].seq = s->integer;
        items[i].dup = (int)d->integer;
    }
    op->cb.assign(err, op->user);
    routes_op_free(op);
}

void routes_assign(routes_t *rt, const char *room, int64_t floor, struct routes_assign_item *items,
                   size_t n, routes_assign_cb cb, void *user)
{
    /* Keys and args, each in one block: seq, ids; ttl, floor, pairs. */
    size_t argc = 1 + n + 2 + 2 * n;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    char *keys = malloc((1 + n) * ROUTES_KEY_MAX);
    char *nums = malloc((2 + n) * 24);
    CHATD_ASSERT(argv && lens && keys && nums);
    size_t a = 0;
    routes_key(keys, "room", room, "seq");
    argv[a++] = keys;
    for (size_t i = 0; i < n; i++) {
        char idk[64], *k = keys + (1 + i) * ROUTES_KEY_MAX;
        snprintf(idk, sizeof idk, "id:%s", items[i].msg_id);
        routes_key(k, "room", room, idk);
        argv[a++] = k;
    }
    snprintf(nums, 24, "%u", rt->dedup_ttl_s);
    snprintf(nums + 24, 24, "%" PRId64, floor);
    argv[a++] = nums;
    argv[a++] = nums + 24;
    for (size_t i = 0; i < n; i++) {
        char *kn = nums + (2 + i) * 24;
        kn[0] = 0;
        if (items[i].known >= 0)
            snprintf(kn, 24, "%" PRId64, items[i].known);
        argv[a++] = kn;
        argv[a++] = items[i].tag;
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    struct routes_op *op = routes_op_new(rt, user);
    op->cb.assign = cb;
    op->items = items;
    op->n_items = n;
    redis_script_run(rt->redis, &rt->assign, routes_on_assign, op, (int)(1 + n), (int)argc, argv,
                     lens);
    free(argv);
    free(lens);
    free(keys);
    free(nums);
}

static void routes_on_dests(int err, redisReply *r, void *user)
{
    struct routes_op *op = user;
    if (err == 0 && r->type != REDIS_REPLY_ARRAY)
        err = ERR_UNAVAILABLE;
    if (err)
        op->err = err;
    else
        op->n_gws = routes_collect(op->rt, r, op->gws, op->n_gws, (size_t)op->rt->n_gw);
    if (--op->pending > 0)
        return;
    op->cb.dests(op->err, op->gws, op->err ? 0 : op->n_gws, op->user);
    routes_op_free(op);
}

void routes_dests(routes_t *rt, const char *room, const char *member, routes_dests_cb cb,
                  void *user)
{
    char k[ROUTES_KEY_MAX];
    struct routes_op *op = routes_op_new_gws(rt, user);
    op->cb.dests = cb;
    op->pending = member ? 2 : 1;
    routes_key(k, "room", room, "gw");
    redis_command(rt->redis, routes_on_dests, op, "HGETALL %s", k);
    if (member) {
        routes_key(k, "user", member, "gw");
        redis_command(rt->redis, routes_on_dests, op, "HGETALL %s", k);
    }
}
