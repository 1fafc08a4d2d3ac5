/* redis: async Redis client on the libuv loop. See redis.h for the contract.
 *
 * Every command is a struct redis_cmd, hiredis's privdata. While hiredis
 * holds it, it sits in the client's FIFO (hiredis answers in order, so the
 * head is always the oldest command and the only deadline the timer needs to
 * watch). hiredis calls the reply callback exactly once per command: with the
 * reply, or with NULL when the context is freed. Success replies reach the
 * caller right there (the reply is only valid then); every failure goes
 * through the deferred queue, drained by a 0 ms timer, so the caller's code
 * never runs inside hiredis's free path nor inside redis_command().
 *
 * hiredis 0.14 gotchas handled here: redisAsyncConnect() does not watch the
 * socket until a command is queued, so the connect callback would never fire
 * on an idle client (we arm the write watcher ourselves); the connect
 * callback is not wrapped in REDIS_IN_CALLBACK, so no user code runs from it;
 * the disconnect callback fires only for contexts that were connected.
 * The stock adapters/libuv.h drops uv_poll's error status (libuv reports
 * POLLERR, e.g. a refused connect, as UV_EBADF and stops the handle), which
 * leaves hiredis waiting forever; our own adapter below hands it to hiredis.
 */
#include "store/redis.h"

#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <openssl/sha.h>

#include "lib/err.h"
#include "lib/hex.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/slab.h"
#include "store/sentinel.h"

#define REDIS_CLIENT_MAGIC 0x52434c49u
#define REDIS_CMD_MAGIC 0x52434d44u
#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
/* With Sentinels every attempt asks them first, and the master they name
 * while a failover runs is down: a short cap follows the switch within a
 * second (fault 15: the gateways connected 2.2 s after it with the 5 s cap). */
#define REDIS_SENTINEL_BACKOFF_MAX_MS 1000
/* While connected, the Sentinels are asked this often whether the master
 * moved: a failover that left our connection up (a partition between the
 * old master and the Sentinels, chatd still reaching it) would otherwise
 * keep chatd writing where nobody reads until the partition heals. */
#define REDIS_SENTINEL_CHECK_MS 5000
#define REDIS_CONNECT_MIN_MS 1000 /* connect deadline floor: a short command deadline is no reason to give up on TCP */

enum redis_state {
    REDIS_ST_DOWN,       /* waiting for the reconnect timer */
    REDIS_ST_RESOLVING,  /* uv_getaddrinfo in flight */
    REDIS_ST_CONNECTING, /* TCP connect, then the setup: AUTH, SELECT */
    REDIS_ST_UP,
    REDIS_ST_CLOSING,
};

struct redis_cmd {
    unsigned magic;
    redis_client_t *r;
    redis_reply_cb cb;
    void *user;
    uint64_t deadline_ms; /* uv_now() scale */
    uint64_t start_ns;
    int err;  /* deferred delivery only */
    int done; /* the caller already has its callback (timeout) */
    int internal;
    /* Scripts: the EVAL form of the command, owned, for the NOSCRIPT retry. */
    int eval_argc;
    const char **eval_argv;
    size_t *eval_argvlen;
    struct redis_cmd *next;
};

struct redis_client {
    unsigned magic;
    uv_loop_t *loop;
    enum redis_state state;
    struct redis_url url;         /* host, port, db, AUTH credentials */
    int setup;                    /* REDIS_SETUP_*: where the connection's setup is */
    size_t setup_script;          /* REDIS_SETUP_SCRIPTS: next script to load */
    unsigned timeout_ms;
    redis_connect_cb on_connect;
    void *user;
    sentinel_t *sentinel;         /* NULL: url's host and port; else the master they name */
    redisAsyncContext *ac;
    uint64_t connect_deadline_ms;
    uint64_t timer_due_ms; /* when deadline_timer fires, if active */
    unsigned attempts;
    int notify_connect;
    int resolving;
    uv_getaddrinfo_t gai;
    uv_timer_t deadline_timer;
    uv_timer_t reconnect_timer;
    uv_timer_t check_timer; /* Sentinels only: is the master still where we are? */
    uv_timer_t defer_timer;
    int open_handles;
    struct redis_cmd *fifo_head, *fifo_tail;   /* held by hiredis */
    struct redis_cmd *defer_head, *defer_tail; /* failed, callback pending */
};

static metric_t *redis_m_errors, *redis_m_seconds, *redis_m_up;
static uint64_t redis_rng;

static void redis_connect_start(redis_client_t *r);
static void redis_on_reply(redisAsyncContext *ac, void *reply, void *priv);
static void redis_on_defer_timer(uv_timer_t *t);
static void redis_on_reconnect_timer(uv_timer_t *t);
static void redis_on_deadline(uv_timer_t *t);

static void redis_metrics_init(void)
{
    if (redis_m_errors)
        return;
    redis_m_errors = metrics_counter("chatd_redis_errors_total",
                                     "Redis commands failed (timeout, connection lost, error reply).", NULL);
    redis_m_seconds = metrics_histogram("chatd_redis_seconds", "Redis command latency.", NULL);
    redis_m_up = metrics_gauge("chatd_redis_up", "1 when the Redis connection is up.", NULL);
}

static unsigned redis_backoff_ms(redis_client_t *r)
{
    if (redis_rng == 0)
        redis_rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    redis_rng ^= redis_rng << 13;
    redis_rng ^= redis_rng >> 7;
    redis_rng ^= redis_rng << 17;
    unsigned shift = r->attempts < 6 ? r->attempts : 6;
    unsigned cap = REDIS_BACKOFF_MIN_MS << shift;
    unsigned max = r->sentinel ? REDIS_SENTINEL_BACKOFF_MAX_MS : REDIS_BACKOFF_MAX_MS;
    if (cap > max)
        cap = max;
    r->attempts++;
    /* Full range [cap/2, cap]: spreads a herd of clients after a restart. */
    return cap / 2 + (unsigned)(redis_rng % (cap / 2 + 1));
}

/* Percent-decodes src[0..n) into dst (size cap, NUL-terminated). A NUL byte
 * or a bad escape is refused: AUTH's arguments are plain strings. */
static int redis_url_decode(const char *src, size_t n, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= n || (hi = hex_digit(src[i + 1])) < 0 || (lo = hex_digit(src[i + 2])) < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return -1;
        dst[o++] = (char)c;
    }
    dst[o] = 0;
    return 0;
}

/* [USER]:PASSWORD before the last '@' of the authority. */
static int redis_url_userinfo(const char *ui, size_t n, struct redis_url *out)
{
    const char *colon = memchr(ui, ':', n);
    if (!colon) /* a bare word is ambiguous (user or password?): refused */
        return -1;
    size_t ul = (size_t)(colon - ui), pl = n - ul - 1;
    if (pl == 0 || redis_url_decode(ui, ul, out->user, sizeof out->user) < 0 ||
        redis_url_decode(colon + 1, pl, out->password, sizeof out->password) < 0)
        return -1;
    return 0;
}

int redis_url_parse(const char *url, struct redis_url *out)
{
    static const char scheme[] = "redis://";
    memset(out, 0, sizeof *out);
    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
        return ERR_BAD_REQUEST;
    const char *p = url + sizeof scheme - 1, *h, *he;
    size_t ui = strcspn(p, "/");
    while (ui > 0 && p[ui - 1] != '@')
        ui--;
    if (ui > 0) { /* user info: up to the last '@' before the path */
        if (redis_url_userinfo(p, ui - 1, out) < 0)
            return ERR_BAD_REQUEST;
        p += ui;
    }
    if (*p == '[') { /* [v6]:port */
        h = p + 1;
        he = strchr(h, ']');
        if (!he)
            return ERR_BAD_REQUEST;
        p = he + 1;
    } else {
        h = p;
        he = h + strcspn(h, ":/");
        p = he;
    }
    size_t hl = (size_t)(he - h);
    if (hl == 0 || hl >= sizeof out->host || memchr(h, '@', hl) || memchr(h, ' ', hl))
        return ERR_BAD_REQUEST;
    long pv = 6379, dv = 0;
    if (*p == ':') {
        p++;
        if (*p < '0' || *p > '9')
            return ERR_BAD_REQUEST;
        for (pv = 0; *p >= '0' && *p <= '9'; p++)
            if ((pv = pv * 10 + (*p - '0')) > 65535)
                return ERR_BAD_REQUEST;
        if (pv == 0)
            return ERR_BAD_REQUEST;
    }
    if (*p == '/') {
        p++;
        for (; *p >= '0' && *p <= '9'; p++)
            if ((dv = dv * 10 + (*p - '0')) > 1000000)
                return ERR_BAD_REQUEST;
    }
    if (*p != '\0')
        return ERR_BAD_REQUEST;
    memcpy(out->host, h, hl);
    out->host[hl] = '\0';
    out->port = (int)pv;
    out->db = (int)dv;
    return 0;
}

/* ---- hiredis event adapter (see the top comment) ---- */

struct redis_ev {
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    uv_poll_t poll;
    int events;
};

static void redis_ev_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_ev *p = h->data;
    if (status < 0) {
        /* Let hiredis read the socket error itself: a failed connect or a
         * reset connection, reported through its callbacks. */
        if (p->ac && !(p->ac->c.flags & REDIS_CONNECTED))
            redisAsyncHandleWrite(p->ac);
        else if (p->ac)
            redisAsyncHandleRead(p->ac);
        return;
    }
    if (p->ac && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void redis_ev_update(struct redis_ev *p, int events)
{
    p->events = events;
    if (events)
        uv_poll_start(&p->poll, events, redis_ev_on_poll);
    else
        uv_poll_stop(&p->poll);
}

static void redis_ev_add_read(void *d) { struct redis_ev *p = d; redis_ev_update(p, p->events | UV_READABLE); }
static void redis_ev_del_read(void *d) { struct redis_ev *p = d; redis_ev_update(p, p->events & ~UV_READABLE); }
static void redis_ev_add_write(void *d) { struct redis_ev *p = d; redis_ev_update(p, p->events | UV_WRITABLE); }
static void redis_ev_del_write(void *d) { struct redis_ev *p = d; redis_ev_update(p, p->events & ~UV_WRITABLE); }

static void redis_ev_on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void redis_ev_cleanup(void *d)
{
    struct redis_ev *p = d;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, redis_ev_on_closed);
}

static int redis_ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_ev *p = calloc(1, sizeof *p);
    CHATD_ASSERT(p != NULL);
    if (uv_poll_init(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->poll.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = redis_ev_add_read;
    ac->ev.delRead = redis_ev_del_read;
    ac->ev.addWrite = redis_ev_add_write;
    ac->ev.delWrite = redis_ev_del_write;
    ac->ev.cleanup = redis_ev_cleanup;
    return 0;
}

/* ---- command lists ---- */

/* Thousands in flight in a connection storm (lib/slab.h says why not malloc). */
SLAB_DEFINE(redis_cmds, SLAB_INIT("redis_cmd", struct redis_cmd));

static struct redis_cmd *redis_cmd_new(redis_client_t *r, redis_reply_cb cb, void *user)
{
    struct redis_cmd *e = slab_alloc(&redis_cmds);
    CHATD_ASSERT(e != NULL);
    e->magic = REDIS_CMD_MAGIC;
    e->r = r;
    e->cb = cb;
    e->user = user;
    e->start_ns = uv_hrtime();
    return e;
}

static void redis_cmd_free(struct redis_cmd *e)
{
    e->magic = 0;
    free(e->eval_argv);
    slab_free(&redis_cmds, e);
}

static void redis_fifo_unlink(redis_client_t *r, struct redis_cmd *e)
{
    struct redis_cmd **pp = &r->fifo_head, *prev = NULL;
    while (*pp && *pp != e) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    CHATD_ASSERT(*pp == e);
    *pp = e->next;
    if (r->fifo_tail == e)
        r->fifo_tail = prev;
    e->next = NULL;
}

static void redis_defer_kick(redis_client_t *r)
{
    if (!uv_is_active((uv_handle_t *)&r->defer_timer))
        uv_timer_start(&r->defer_timer, redis_on_defer_timer, 0, 0);
}

static void redis_defer(redis_client_t *r, struct redis_cmd *e, int err)
{
    e->err = err;
    e->next = NULL;
    if (r->defer_tail)
        r->defer_tail->next = e;
    else
        r->defer_head = e;
    r->defer_tail = e;
    redis_defer_kick(r);
}

static void redis_deliver(struct redis_cmd *e, int err, redisReply *reply)
{
    if (err == 0)
        metric_observe(redis_m_seconds, (double)(uv_hrtime() - e->start_ns) / 1e9);
    if ((err != 0 && err != ERR_CANCELLED) || (reply && reply->type == REDIS_REPLY_ERROR))
        metric_inc(redis_m_errors);
    if (e->cb)
        e->cb(err, reply, e->user);
}

/* ---- connection lifecycle ---- */

static void redis_set_up(int up)
{
    metric_set(redis_m_up, up ? 1 : 0);
}

static void redis_schedule_reconnect(redis_client_t *r)
{
    if (r->state == REDIS_ST_CLOSING)
        return;
    r->state = REDIS_ST_DOWN;
    redis_set_up(0);
    if (uv_is_active((uv_handle_t *)&r->reconnect_timer))
        return;
    unsigned ms = redis_backoff_ms(r);
    log_debug("redis_reconnect_in", "host=%s port=%d ms=%u", r->url.host, r->url.port, ms);
    uv_timer_start(&r->reconnect_timer, redis_on_reconnect_timer, ms, 0);
}

/* Drops the current context: its commands come back through redis_on_reply
 * with NULL and go to the deferred queue. Safe inside a hiredis callback
 * (hiredis then frees after the callback returns). */
static void redis_drop(redis_client_t *r)
{
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    redis_schedule_reconnect(r);
    if (ac)
        redisAsyncFree(ac);
}

/* One timer for the FIFO head (and the connect deadline): arms it for due
 * unless it already fires earlier. Deadlines grow along the FIFO, so pushing
 * a command costs O(1); redis_on_deadline re-arms for the next head. */
static void redis_timer_arm(redis_client_t *r, uint64_t due)
{
    uint64_t now = uv_now(r->loop);
    if (uv_is_active((uv_handle_t *)&r->deadline_timer) && r->timer_due_ms <= due)
        return;
    r->timer_due_ms = due;
    uv_timer_start(&r->deadline_timer, redis_on_deadline, due > now ? due - now : 0, 0);
}

static void redis_fifo_push(redis_client_t *r, struct redis_cmd *e)
{
    e->deadline_ms = uv_now(r->loop) + r->timeout_ms;
    e->next = NULL;
    if (r->fifo_tail)
        r->fifo_tail->next = e;
    else
        r->fifo_head = e;
    r->fifo_tail = e;
    redis_timer_arm(r, e->deadline_ms);
}

/* Hands e to hiredis. Failures are deferred, never called back from here. */
static void redis_send(redis_client_t *r, struct redis_cmd *e, int argc, const char **argv,
                       const size_t *argvlen)
{
    int ok_state = r->state == REDIS_ST_UP || (e->internal && r->state == REDIS_ST_CONNECTING);
    if (!ok_state || !r->ac) {
        redis_defer(r, e, r->state == REDIS_ST_CLOSING ? ERR_CANCELLED : ERR_UNAVAILABLE);
        return;
    }
    if (redisAsyncCommandArgv(r->ac, redis_on_reply, e, argc, argv, argvlen) != REDIS_OK) {
        redis_defer(r, e, ERR_UNAVAILABLE);
        return;
    }
    redis_fifo_push(r, e);
}

static void redis_on_check_timer(uv_timer_t *t);

static void redis_become_up(redis_client_t *r)
{
    if (r->sentinel)
        uv_timer_start(&r->check_timer, redis_on_check_timer, REDIS_SENTINEL_CHECK_MS,
                       REDIS_SENTINEL_CHECK_MS);
    r->state = REDIS_ST_UP;
    r->attempts = 0;
    r->notify_connect = 1;
    redis_set_up(1);
    log_info("redis_connected", "host=%s port=%d db=%d auth=%s", r->url.host, r->url.port, r->url.db,
             !r->url.password[0] ? "none" : r->url.user[0] ? "acl" : "password");
    redis_defer_kick(r);
}

/* Every script of the process, loaded on each new connection before it
 * counts as up: a restarted or failed-over Redis starts with an empty script
 * cache, and an EVALSHA answered NOSCRIPT is resent as EVAL after the
 * commands pipelined behind it have run, i.e. out of order. Callers that
 * need order across a flush (SCRIPT FLUSH on a live connection) keep
 * ordered work inside one script call (store/routes.h). */
#define REDIS_SCRIPTS_MAX 16
/* By value, keyed by sha: the struct redis_script a caller passes may live
 * in an object it frees (routes_t) or on its stack; only src must outlive
 * the process's clients (redis.h). */
static struct redis_script redis_scripts[REDIS_SCRIPTS_MAX];
static size_t redis_n_scripts;

/* A new connection is set up before callers may use it: AUTH when the URL
 * has a password, SELECT when db != 0, ROLE when the address came from the
 * Sentinels (they may still name a master that has just been demoted, or
 * the old master may be back as a replica), then SCRIPT LOAD of every
 * script: a promoted replica has none cached. */
enum { REDIS_SETUP_AUTH, REDIS_SETUP_SELECT, REDIS_SETUP_ROLE, REDIS_SETUP_SCRIPTS, REDIS_SETUP_DONE };

static void redis_on_setup(int err, redisReply *reply, void *user);

static int redis_role_is_master(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
           reply->element[0]->type == REDIS_REPLY_STRING && reply->element[0]->len == 6 &&
           memcmp(reply->element[0]->str, "master", 6) == 0;
}

static void redis_setup_next(redis_client_t *r)
{
    const char *argv[3];
    size_t argvlen[3];
    int argc = 0;
    char dbs[16];
    if (r->setup == REDIS_SETUP_AUTH && !r->url.password[0])
        r->setup = REDIS_SETUP_SELECT;
    if (r->setup == REDIS_SETUP_SELECT && r->url.db == 0)
        r->setup = REDIS_SETUP_ROLE;
    if (r->setup == REDIS_SETUP_ROLE && !r->sentinel)
        r->setup = REDIS_SETUP_SCRIPTS;
    if (r->setup == REDIS_SETUP_SCRIPTS && r->setup_script >= redis_n_scripts)
        r->setup = REDIS_SETUP_DONE;
    if (r->setup == REDIS_SETUP_DONE) {
        redis_become_up(r);
        return;
    }
    if (r->setup == REDIS_SETUP_AUTH) {
        argv[argc++] = "AUTH";
        if (r->url.user[0])
            argv[argc++] = r->url.user;
        argv[argc++] = r->url.password;
    } else if (r->setup == REDIS_SETUP_ROLE) {
        argv[argc++] = "ROLE";
    } else if (r->setup == REDIS_SETUP_SCRIPTS) {
        argv[argc++] = "SCRIPT";
        argv[argc++] = "LOAD";
        argv[argc++] = redis_scripts[r->setup_script].src;
    } else {
        snprintf(dbs, sizeof dbs, "%d", r->url.db);
        argv[argc++] = "SELECT";
        argv[argc++] = dbs;
    }
    for (int i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);
    struct redis_cmd *e = redis_cmd_new(r, redis_on_setup, r);
    e->internal = 1;
    redis_send(r, e, argc, argv, argvlen);
}

static void redis_on_setup(int err, redisReply *reply, void *user)
{
    redis_client_t *r = user;
    if (err == ERR_CANCELLED)
        return;
    if (r->setup == REDIS_SETUP_SCRIPTS && err == 0 && reply && reply->type == REDIS_REPLY_ERROR) {
        /* Not fatal: EVALSHA falls back to EVAL (e.g. an ACL without SCRIPT). */
        log_warn("redis_script_load_failed", "host=%s port=%d err=%s", r->url.host, r->url.port,
                 log_q(reply->str, reply->len));
        reply = NULL;
    } else if (err != 0 || !reply || reply->type == REDIS_REPLY_ERROR) {
        /* The reply (e.g. WRONGPASS) names the problem, never the password. */
        log_error(r->setup == REDIS_SETUP_AUTH     ? "redis_auth_failed"
                  : r->setup == REDIS_SETUP_SELECT ? "redis_select_failed"
                  : r->setup == REDIS_SETUP_ROLE   ? "redis_role_failed"
                                                   : "redis_script_load_failed",
                  "host=%s port=%d db=%d user=%s err=%s", r->url.host, r->url.port, r->url.db,
                  r->url.user[0] ? log_q(r->url.user, strlen(r->url.user)) : "default",
                  reply && reply->str ? log_q(reply->str, reply->len) : err_code(err));
        if (err == 0 && r->state == REDIS_ST_CONNECTING)
            redis_drop(r);
        return;
    }
    if (r->state != REDIS_ST_CONNECTING)
        return;
    if (r->setup == REDIS_SETUP_ROLE && !redis_role_is_master(reply)) {
        log_warn("redis_not_master", "host=%s port=%d role=%s", r->url.host, r->url.port,
                 reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
                         reply->element[0]->type == REDIS_REPLY_STRING
                     ? log_q(reply->element[0]->str, reply->element[0]->len)
                     : "unknown");
        metric_inc(redis_m_errors);
        redis_drop(r);
        return;
    }
    if (r->setup == REDIS_SETUP_SCRIPTS)
        r->setup_script++;
    else
        r->setup++;
    redis_setup_next(r);
}

static void redis_on_connected(const redisAsyncContext *ac, int status)
{
    redis_client_t *r = ac->data;
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    if (r->ac != ac)
        return;
    if (status != REDIS_OK) {
        log_warn("redis_connect_failed", "host=%s port=%d err=%s", r->url.host, r->url.port,
                 log_q(ac->errstr, strlen(ac->errstr)));
        r->ac = NULL; /* hiredis frees it when we return */
        metric_inc(redis_m_errors);
        redis_schedule_reconnect(r);
        return;
    }
    r->setup = REDIS_SETUP_AUTH;
    r->setup_script = 0;
    redis_setup_next(r);
}

static void redis_on_disconnected(const redisAsyncContext *ac, int status)
{
    redis_client_t *r = ac->data;
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    if (r->ac != ac)
        return; /* we dropped it ourselves */
    log_warn("redis_disconnected", "host=%s port=%d err=%s", r->url.host, r->url.port,
             status == REDIS_OK ? "none" : log_q(ac->errstr, strlen(ac->errstr)));
    r->ac = NULL;
    redis_schedule_reconnect(r);
}

static void redis_connect_ip(redis_client_t *r, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, r->url.port);
    CHATD_ASSERT(ac != NULL);
    if (ac->err) {
        log_warn("redis_connect_failed", "host=%s ip=%s port=%d err=%s", r->url.host, ip, r->url.port,
                 log_q(ac->errstr, strlen(ac->errstr)));
        redisAsyncFree(ac);
        metric_inc(redis_m_errors);
        redis_schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (redis_ev_attach(ac, r->loop) != 0) {
        log_error("redis_attach_failed", "host=%s port=%d", r->url.host, r->url.port);
        redisAsyncFree(ac);
        redis_schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, redis_on_connected);
    redisAsyncSetDisconnectCallback(ac, redis_on_disconnected);
    r->ac = ac;
    r->state = REDIS_ST_CONNECTING;
    unsigned cms = r->timeout_ms > REDIS_CONNECT_MIN_MS ? r->timeout_ms : REDIS_CONNECT_MIN_MS;
    r->connect_deadline_ms = uv_now(r->loop) + cms;
    redis_timer_arm(r, r->connect_deadline_ms);
    /* hiredis 0.14 waits for the first command before watching the socket. */
    redis_ev_add_write(ac->ev.data);
}

static void redis_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    redis_client_t *r = req->data;
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    r->resolving = 0;
    if (r->state == REDIS_ST_CLOSING) {
        if (res)
            uv_freeaddrinfo(res);
        redis_defer_kick(r);
        return;
    }
    if (status < 0 || !res) {
        log_warn("redis_resolve_failed", "host=%s err=%s", r->url.host, uv_strerror(status));
        metric_inc(redis_m_errors);
        redis_schedule_reconnect(r);
        return;
    }
    /* Prefer IPv4: a name like localhost often lists ::1 first while the
     * server listens on 127.0.0.1 only, and hiredis tries one address. */
    struct addrinfo *pick = res;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    char ip[64] = "";
    if (pick->ai_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)pick->ai_addr, ip, sizeof ip);
    else
        uv_ip6_name((struct sockaddr_in6 *)pick->ai_addr, ip, sizeof ip);
    uv_freeaddrinfo(res);
    redis_connect_ip(r, ip);
}

static void redis_resolve_start(redis_client_t *r)
{
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->state = REDIS_ST_RESOLVING;
    r->gai.data = r;
    int rc = uv_getaddrinfo(r->loop, &r->gai, redis_on_resolved, r->url.host, NULL, &hints);
    if (rc < 0) {
        log_warn("redis_resolve_failed", "host=%s err=%s", r->url.host, uv_strerror(rc));
        redis_schedule_reconnect(r);
        return;
    }
    r->resolving = 1;
}

static void redis_on_sentinel(int err, const char *host, int port, void *user)
{
    redis_client_t *r = user;
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    if (r->state == REDIS_ST_CLOSING)
        return;
    if (err != 0) { /* logged by sentinel.c */
        metric_inc(redis_m_errors);
        redis_schedule_reconnect(r);
        return;
    }
    if (strcmp(host, r->url.host) != 0 || port != r->url.port) {
        log_info("redis_master_changed", "host=%s port=%d was=%s:%d", host, port,
                 r->url.host[0] ? r->url.host : "none", r->url.port);
        snprintf(r->url.host, sizeof r->url.host, "%s", host);
        r->url.port = port;
    }
    redis_resolve_start(r);
}

/* With Sentinels, every (re)connection asks them first: a connection that
 * failed or was refused a write may mean the master moved. */
static void redis_connect_start(redis_client_t *r)
{
    r->state = REDIS_ST_RESOLVING;
    if (r->sentinel)
        sentinel_query(r->sentinel, redis_on_sentinel, r);
    else
        redis_resolve_start(r);
}

/* ---- timers ---- */

static void redis_on_reconnect_timer(uv_timer_t *t)
{
    redis_client_t *r = t->data;
    if (r->state != REDIS_ST_DOWN)
        return;
    if (r->sentinel && sentinel_busy(r->sentinel)) { /* a check is asking: go right after it */
        uv_timer_start(&r->reconnect_timer, redis_on_reconnect_timer, 50, 0);
        return;
    }
    redis_connect_start(r);
}

static void redis_on_sentinel_check(int err, const char *host, int port, void *user)
{
    redis_client_t *r = user;
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    /* No answer: keep the master we have (the Sentinels may be the ones cut off). */
    if (err != 0 || r->state != REDIS_ST_UP)
        return;
    if (strcmp(host, r->url.host) == 0 && port == r->url.port)
        return;
    log_warn("redis_master_moved", "host=%s port=%d now=%s:%d", r->url.host, r->url.port, host, port);
    metric_inc(redis_m_errors);
    redis_drop(r);
}

static void redis_on_check_timer(uv_timer_t *t)
{
    redis_client_t *r = t->data;
    if (r->state != REDIS_ST_UP) {
        uv_timer_stop(t); /* restarted when up again */
        return;
    }
    if (!sentinel_busy(r->sentinel))
        sentinel_query(r->sentinel, redis_on_sentinel_check, r);
}

static void redis_on_deadline(uv_timer_t *t)
{
    redis_client_t *r = t->data;
    uint64_t now = uv_now(r->loop);
    if (r->state == REDIS_ST_CLOSING || !r->ac)
        return;
    if (r->state == REDIS_ST_CONNECTING && now >= r->connect_deadline_ms) {
        log_warn("redis_connect_timeout", "host=%s port=%d", r->url.host, r->url.port);
        metric_inc(redis_m_errors);
        redis_drop(r);
        return;
    }
    struct redis_cmd *e = r->fifo_head;
    if (e && e->deadline_ms <= now) {
        log_warn("redis_timeout", "host=%s port=%d timeout_ms=%u", r->url.host, r->url.port, r->timeout_ms);
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redis_schedule_reconnect(r);
        e->done = 1; /* hiredis's NULL callback will only free it */
        redis_deliver(e, ERR_TIMEOUT, NULL);
        redisAsyncFree(ac);
        return;
    }
    uint64_t next = e ? e->deadline_ms : UINT64_MAX;
    if (r->state == REDIS_ST_CONNECTING && r->connect_deadline_ms < next)
        next = r->connect_deadline_ms;
    if (next != UINT64_MAX)
        redis_timer_arm(r, next);
}

static void redis_on_handle_closed(uv_handle_t *h)
{
    redis_client_t *r = h->data;
    if (--r->open_handles == 0) {
        r->magic = 0;
        free(r);
    }
}

static void redis_on_defer_timer(uv_timer_t *t)
{
    redis_client_t *r = t->data;
    CHATD_ASSERT(r->magic == REDIS_CLIENT_MAGIC);
    if (r->notify_connect && r->state == REDIS_ST_UP) {
        r->notify_connect = 0;
        if (r->on_connect)
            r->on_connect(r, r->user);
    }
    /* Callbacks may queue more (a retry fails fast again): loop until empty. */
    while (r->defer_head) {
        struct redis_cmd *e = r->defer_head;
        r->defer_head = e->next;
        if (!r->defer_head)
            r->defer_tail = NULL;
        if (r->state == REDIS_ST_CLOSING)
            e->err = ERR_CANCELLED;
        redis_deliver(e, e->err, NULL);
        redis_cmd_free(e);
    }
    if (r->state == REDIS_ST_CLOSING && !r->ac && !r->resolving && !r->fifo_head &&
        r->open_handles == 4 && !uv_is_closing((uv_handle_t *)&r->defer_timer)) {
        uv_close((uv_handle_t *)&r->check_timer, redis_on_handle_closed);
        uv_close((uv_handle_t *)&r->deadline_timer, redis_on_handle_closed);
        uv_close((uv_handle_t *)&r->reconnect_timer, redis_on_handle_closed);
        uv_close((uv_handle_t *)&r->defer_timer, redis_on_handle_closed);
    }
}

/* ---- hiredis reply ---- */

static int redis_is_noscript(const redisReply *reply)
{
    return reply && reply->type == REDIS_REPLY_ERROR && reply->str &&
           strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* A write refused by a replica (READONLY, also inside a script), a replica
 * cut from its master (MASTERDOWN), or a master cut from its replicas
 * (NOREPLICAS, with min-replicas-to-write): the node we hold is no longer
 * (or soon not) the master, e.g. an old master rejoined as a replica after
 * a failover, or one isolated while the Sentinels promote another. */
static int redis_is_not_master(const redisReply *reply)
{
    if (!reply || reply->type != REDIS_REPLY_ERROR || !reply->str)
        return 0;
    return strncmp(reply->str, "READONLY", 8) == 0 || strncmp(reply->str, "MASTERDOWN", 10) == 0 ||
           strncmp(reply->str, "NOREPLICAS", 10) == 0 ||
           strstr(reply->str, "read only replica") != NULL;
}

static void redis_on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct redis_cmd *e = priv;
    CHATD_ASSERT(e && e->magic == REDIS_CMD_MAGIC);
    redis_client_t *r = e->r;
    redis_fifo_unlink(r, e);
    if (e->done) {
        redis_cmd_free(e);
        return;
    }
    if (!reply) {
        redis_defer(r, e, r->state == REDIS_ST_CLOSING ? ERR_CANCELLED : ERR_UNAVAILABLE);
        return;
    }
    if (e->eval_argv && redis_is_noscript(reply)) {
        /* The script cache is empty (restart, SCRIPT FLUSH): send the body once. */
        int argc = e->eval_argc;
        const char **argv = e->eval_argv;
        size_t *argvlen = e->eval_argvlen;
        e->eval_argv = NULL;
        redis_send(r, e, argc, argv, argvlen);
        free(argv);
        return;
    }
    if (redis_is_not_master(reply) && r->ac == ac && r->state == REDIS_ST_UP) {
        /* Reconnect (through the Sentinels, if any); the caller retries. */
        log_warn("redis_not_master", "host=%s port=%d err=%s", r->url.host, r->url.port,
                 log_q(((redisReply *)reply)->str, ((redisReply *)reply)->len));
        redis_drop(r);
    }
    redis_deliver(e, 0, reply);
    redis_cmd_free(e);
}

/* ---- public API ---- */

static int redis_client_new(redis_client_t **out, uv_loop_t *loop, const char *url,
                            const char *sentinels, const char *master, unsigned timeout_ms,
                            redis_connect_cb on_connect, void *user)
{
    *out = NULL;
    redis_client_t *r = calloc(1, sizeof *r);
    CHATD_ASSERT(r != NULL);
    if (redis_url_parse(url, &r->url) != 0) {
        /* Not the URL itself: it may hold a password. */
        log_error("redis_url_invalid", "want=\"redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]\"");
        free(r);
        return ERR_BAD_REQUEST;
    }
    if (sentinels && sentinel_init(&r->sentinel, loop, sentinels, master, r->url.user,
                                   r->url.password, timeout_ms) != 0) {
        free(r);
        return ERR_BAD_REQUEST;
    }
    if (r->sentinel) /* not a guess: the address comes from the Sentinels */
        r->url.host[0] = '\0', r->url.port = 0;
    redis_metrics_init();
    r->magic = REDIS_CLIENT_MAGIC;
    r->loop = loop;
    r->timeout_ms = timeout_ms ? timeout_ms : 1;
    r->on_connect = on_connect;
    r->user = user;
    uv_timer_init(loop, &r->deadline_timer);
    uv_timer_init(loop, &r->reconnect_timer);
    uv_timer_init(loop, &r->check_timer);
    r->check_timer.data = r;
    uv_timer_init(loop, &r->defer_timer);
    r->deadline_timer.data = r->reconnect_timer.data = r->defer_timer.data = r;
    r->open_handles = 4;
    redis_set_up(0);
    redis_connect_start(r);
    *out = r;
    return 0;
}

int redis_client_init(redis_client_t **out, uv_loop_t *loop, const char *url,
                      unsigned timeout_ms, redis_connect_cb on_connect, void *user)
{
    return redis_client_new(out, loop, url, NULL, NULL, timeout_ms, on_connect, user);
}

int redis_client_init_sentinel(redis_client_t **out, uv_loop_t *loop, const char *url,
                               const char *sentinels, const char *master, unsigned timeout_ms,
                               redis_connect_cb on_connect, void *user)
{
    return redis_client_new(out, loop, url, sentinels, master, timeout_ms, on_connect, user);
}

int redis_client_ready(const redis_client_t *r)
{
    return r && r->state == REDIS_ST_UP;
}

void redis_command_argv(redis_client_t *r, redis_reply_cb cb, void *user, int argc,
                        const char **argv, const size_t *argvlen)
{
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    redis_send(r, redis_cmd_new(r, cb, user), argc, argv, argvlen);
}

void redis_command(redis_client_t *r, redis_reply_cb cb, void *user, const char *fmt, ...)
{
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    struct redis_cmd *e = redis_cmd_new(r, cb, user);
    if (r->state != REDIS_ST_UP || !r->ac) {
        redis_defer(r, e, r->state == REDIS_ST_CLOSING ? ERR_CANCELLED : ERR_UNAVAILABLE);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, redis_on_reply, e, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        redis_defer(r, e, ERR_UNAVAILABLE);
        return;
    }
    redis_fifo_push(r, e);
}

void redis_script_init(struct redis_script *s, const char *src)
{
    unsigned char md[SHA_DIGEST_LENGTH];
    static const char hex[] = "0123456789abcdef";
    s->src = src;
    SHA1((const unsigned char *)src, strlen(src), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) {
        s->sha[2 * i] = hex[md[i] >> 4];
        s->sha[2 * i + 1] = hex[md[i] & 15];
    }
    s->sha[40] = '\0';
    for (size_t i = 0; i < redis_n_scripts; i++)
        if (strcmp(redis_scripts[i].sha, s->sha) == 0)
            return;
    CHATD_ASSERT(redis_n_scripts < REDIS_SCRIPTS_MAX);
    redis_scripts[redis_n_scripts++] = *s;
}

/* s->src is referenced, not copied, until the retry is sent: scripts are
 * long-lived (static) objects. The caller's argv is copied. */
void redis_script_run(redis_client_t *r, const struct redis_script *s, redis_reply_cb cb,
                      void *user, int nkeys, int argc, const char **argv, const size_t *argvlen)
{
    CHATD_ASSERT(r && r->magic == REDIS_CLIENT_MAGIC);
    CHATD_ASSERT(argc >= 0 && nkeys >= 0 && nkeys <= argc);
    struct redis_cmd *e = redis_cmd_new(r, cb, user);
    char nk[16];
    int nkl = snprintf(nk, sizeof nk, "%d", nkeys);
    size_t n = (size_t)argc + 3, bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen[i];
    /* One block: argv pointers, lengths, the nkeys string, the arguments. */
    char *blk = malloc(n * (sizeof(char *) + sizeof(size_t)) + (size_t)nkl + 1 + bytes);
    CHATD_ASSERT(blk != NULL);
    const char **ev = (const char **)blk;
    size_t *evl = (size_t *)(blk + n * sizeof(char *));
    char *data = (char *)(evl + n);
    memcpy(data, nk, (size_t)nkl + 1);
    ev[0] = "EVAL", evl[0] = 4;
    ev[1] = s->src, evl[1] = strlen(s->src);
    ev[2] = data, evl[2] = (size_t)nkl;
    data += nkl + 1;
    for (int i = 0; i < argc; i++) {
        if (argvlen[i])
            memcpy(data, argv[i], argvlen[i]);
        ev[3 + i] = data, evl[3 + i] = argvlen[i];
        data += argvlen[i];
    }
    e->eval_argc = (int)n;
    e->eval_argv = ev;
    e->eval_argvlen = evl;
    /* EVALSHA: same vector with the first two entries swapped out. */
    const char *a0 = ev[0], *a1 = ev[1];
    size_t l0 = evl[0], l1 = evl[1];
    ev[0] = "EVALSHA", evl[0] = 7;
    ev[1] = s->sha, evl[1] = 40;
    redis_send(r, e, (int)n, ev, evl);
    ev[0] = a0, evl[0] = l0;
    ev[1] = a1, evl[1] = l1;
}

void redis_client_close(redis_client_t *r)
{
    if (!r)
        return;
    CHATD_ASSERT(r->magic == REDIS_CLIENT_MAGIC);
    CHATD_ASSERT(r->state != REDIS_ST_CLOSING);
    r->state = REDIS_ST_CLOSING;
    redis_set_up(0);
    uv_timer_stop(&r->reconnect_timer);
    uv_timer_stop(&r->check_timer);
    uv_timer_stop(&r->deadline_timer);
    if (r->resolving)
        uv_cancel((uv_req_t *)&r->gai);
    sentinel_close(r->sentinel); /* a query in flight: ERR_CANCELLED, ignored */
    r->sentinel = NULL;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac)
        redisAsyncFree(ac); /* pending commands -> deferred, ERR_CANCELLED */
    redis_defer_kick(r);
}
