/* sentinel: master discovery through Redis Sentinels. See sentinel.h.
 *
 * Each Sentinel asked is an attempt: a malloc'd object owning its resolver
 * request and TCP handle, so an attempt given up (deadline, error) is
 * marked dead and frees itself when libuv is done with it, while the query
 * moves on to the next Sentinel at once. The sentinel_t only holds the
 * deadline timer and the current attempt.
 */
#include "store/sentinel.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"

#define SENTINEL_MAGIC 0x53454e54u
#define SENTINEL_REPLY_MAX 4096 /* a get-master-addr-by-name reply is ~40 bytes */

struct sentinel_try {
    sentinel_t *s;
    const struct sentinel_addr *addr;
    int dead;      /* given up: no callback may touch s */
    int resolving; /* gai in flight: freed by its callback */
    int tcp_open;  /* tcp initialised: freed by its close callback */
    size_t got;    /* reply bytes fed to the reader */
    int replies;   /* read so far: AUTH's (ignored), then the answer */
    redisReader *rd;
    uv_getaddrinfo_t gai;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    char buf[512];
};

struct sentinel {
    unsigned magic;
    uv_loop_t *loop;
    struct sentinel_addr addrs[SENTINEL_MAX];
    size_t n;
    size_t first; /* the Sentinel that answered last: asked first */
    size_t tried; /* of this query */
    char master[128];
    char req[1024]; /* [AUTH [user] password] + SENTINEL get-master-addr-by-name */
    size_t req_len;
    int nreplies;
    unsigned timeout_ms;
    sentinel_cb cb;
    void *user;
    int busy;
    struct sentinel_try *cur;
    uv_timer_t timer; /* the attempt's deadline, or 0 ms to start the query */
};

static void sentinel_next(sentinel_t *s);

int sentinel_list_parse(const char *list, struct sentinel_addr *out, size_t cap, size_t *n)
{
    *n = 0;
    if (!list || !*list)
        return ERR_BAD_REQUEST;
    const char *p = list;
    for (;;) {
        size_t len = strcspn(p, ",");
        const char *h = p, *he, *e = p + len;
        if (*n >= cap || len == 0)
            return ERR_BAD_REQUEST;
        struct sentinel_addr *a = &out[*n];
        const char *q;
        if (*h == '[') { /* [v6]:port */
            h++;
            he = memchr(h, ']', (size_t)(e - h));
            if (!he)
                return ERR_BAD_REQUEST;
            q = he + 1;
        } else {
            he = memchr(h, ':', (size_t)(e - h));
            if (!he)
                he = e;
            q = he;
        }
        size_t hl = (size_t)(he - h);
        if (hl == 0 || hl >= sizeof a->host || memchr(h, ' ', hl))
            return ERR_BAD_REQUEST;
        long port = SENTINEL_DEFAULT_PORT;
        if (q < e) {
            if (*q != ':' || q + 1 == e)
                return ERR_BAD_REQUEST;
            port = 0;
            for (q++; q < e; q++) {
                if (*q < '0' || *q > '9' || (port = port * 10 + (*q - '0')) > 65535)
                    return ERR_BAD_REQUEST;
            }
            if (port == 0)
                return ERR_BAD_REQUEST;
        }
        memcpy(a->host, h, hl);
        a->host[hl] = '\0';
        a->port = (int)port;
        (*n)++;
        if (!*e)
            return 0;
        p = e + 1;
    }
}

int sentinel_reply_parse(const redisReply *reply, char *host, size_t cap, int *port)
{
    if (!reply)
        return ERR_BAD_REQUEST;
    if (reply->type == REDIS_REPLY_NIL)
        return ERR_NOT_FOUND;
    if (reply->type == REDIS_REPLY_ERROR)
        return ERR_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_STRING)
        return ERR_BAD_REQUEST;
    const redisReply *h = reply->element[0], *p = reply->element[1];
    if (h->len == 0 || h->len >= cap || memchr(h->str, '\0', h->len) || p->len == 0 || p->len > 5)
        return ERR_BAD_REQUEST;
    long v = 0;
    for (size_t i = 0; i < p->len; i++) {
        if (p->str[i] < '0' || p->str[i] > '9')
            return ERR_BAD_REQUEST;
        v = v * 10 + (p->str[i] - '0');
    }
    if (v < 1 || v > 65535)
        return ERR_BAD_REQUEST;
    memcpy(host, h->str, h->len);
    host[h->len] = '\0';
    *port = (int)v;
    return 0;
}

/* ---- one attempt ---- */

static void sentinel_try_free(struct sentinel_try *t)
{
    if (t->rd)
        redisReaderFree(t->rd);
    free(t);
}

static void sentinel_try_on_closed(uv_handle_t *h)
{
    sentinel_try_free(h->data);
}

/* Gives t up; it frees itself once libuv holds nothing of it. */
static void sentinel_try_end(struct sentinel_try *t)
{
    t->dead = 1;
    t->s = NULL;
    if (t->tcp_open)
        uv_close((uv_handle_t *)&t->tcp, sentinel_try_on_closed);
    else if (t->resolving)
        uv_cancel((uv_req_t *)&t->gai); /* the callback frees it */
    else
        sentinel_try_free(t);
}

static void sentinel_finish(sentinel_t *s, int err, const char *host, int port)
{
    sentinel_cb cb = s->cb;
    void *user = s->user;
    s->busy = 0;
    s->cb = NULL;
    uv_timer_stop(&s->timer);
    cb(err, host, port, user);
}

static void sentinel_try_fail(struct sentinel_try *t, const char *why)
{
    sentinel_t *s = t->s;
    log_warn("redis_sentinel_failed", "sentinel=%s:%d master=%s err=%s", t->addr->host,
             t->addr->port, s->master, why);
    s->cur = NULL;
    sentinel_try_end(t);
    sentinel_next(s);
}

static void sentinel_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct sentinel_try *t = h->data;
    *buf = uv_buf_init(t->buf, sizeof t->buf);
}

static void sentinel_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct sentinel_try *t = st->data;
    if (t->dead)
        return;
    if (nread < 0) {
        sentinel_try_fail(t, nread == UV_EOF ? "closed" : uv_strerror((int)nread));
        return;
    }
    t->got += (size_t)nread;
    sentinel_t *s = t->s;
    void *reply = NULL;
    if (t->got > SENTINEL_REPLY_MAX || redisReaderFeed(t->rd, buf->base, (size_t)nread) != REDIS_OK) {
        sentinel_try_fail(t, "bad_reply");
        return;
    }
    for (;;) {
        if (redisReaderGetReply(t->rd, &reply) != REDIS_OK) {
            sentinel_try_fail(t, "bad_reply");
            return;
        }
        if (!reply)
            return; /* incomplete */
        if (++t->replies == s->nreplies)
            break;
        /* AUTH's: a Sentinel without a password refuses it and still
         * answers; one with another password answers the query NOAUTH. */
        freeReplyObject(reply);
    }
    char host[256];
    int port = 0;
    int rc = sentinel_reply_parse(reply, host, sizeof host, &port);
    if (rc != 0) {
        const redisReply *r = reply;
        log_warn("redis_sentinel_no_master", "sentinel=%s:%d master=%s reply=%s", t->addr->host,
                 t->addr->port, s->master,
                 rc == ERR_NOT_FOUND ? "nil" : r->type == REDIS_REPLY_ERROR ? log_q(r->str, r->len) : "unexpected");
        freeReplyObject(reply);
        s->cur = NULL;
        sentinel_try_end(t);
        sentinel_next(s);
        return;
    }
    freeReplyObject(reply);
    s->first = (size_t)(t->addr - s->addrs);
    s->cur = NULL;
    sentinel_try_end(t);
    log_debug("redis_sentinel_master", "master=%s host=%s port=%d", s->master, host, port);
    sentinel_finish(s, 0, host, port);
}

static void sentinel_on_write(uv_write_t *w, int status)
{
    struct sentinel_try *t = w->data;
    if (!t->dead && status < 0)
        sentinel_try_fail(t, uv_strerror(status));
}

static void sentinel_on_connect(uv_connect_t *c, int status)
{
    struct sentinel_try *t = c->data;
    if (t->dead)
        return;
    if (status < 0) {
        sentinel_try_fail(t, uv_strerror(status));
        return;
    }
    sentinel_t *s = t->s;
    uv_buf_t b = uv_buf_init(s->req, (unsigned)s->req_len); /* s->req outlives the write */
    t->wreq.data = t;
    int rc = uv_write(&t->wreq, (uv_stream_t *)&t->tcp, &b, 1, sentinel_on_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&t->tcp, sentinel_on_alloc, sentinel_on_read);
    if (rc < 0)
        sentinel_try_fail(t, uv_strerror(rc));
}

static void sentinel_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct sentinel_try *t = req->data;
    t->resolving = 0;
    if (t->dead) {
        if (res)
            uv_freeaddrinfo(res);
        sentinel_try_free(t);
        return;
    }
    if (status < 0 || !res) {
        if (res)
            uv_freeaddrinfo(res);
        sentinel_try_fail(t, uv_strerror(status < 0 ? status : UV_EAI_NONAME));
        return;
    }
    struct addrinfo *pick = res; /* IPv4 first, as store/redis.c */
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
    int rc = uv_tcp_init(t->s->loop, &t->tcp);
    if (rc == 0) {
        t->tcp_open = 1;
        t->tcp.data = t;
        t->creq.data = t;
        rc = uv_tcp_connect(&t->creq, &t->tcp, pick->ai_addr, sentinel_on_connect);
    }
    uv_freeaddrinfo(res);
    if (rc < 0)
        sentinel_try_fail(t, uv_strerror(rc));
}

/* ---- the query ---- */

static void sentinel_on_timer(uv_timer_t *h)
{
    sentinel_t *s = h->data;
    CHATD_ASSERT(s->magic == SENTINEL_MAGIC);
    if (s->cur)
        sentinel_try_fail(s->cur, "timeout");
    else if (s->busy)
        sentinel_next(s);
}

/* Asks the next Sentinel not yet asked in this query, or fails it. */
static void sentinel_next(sentinel_t *s)
{
    if (s->tried == s->n) {
        log_warn("redis_sentinel_unavailable", "master=%s sentinels=%zu", s->master, s->n);
        sentinel_finish(s, ERR_UNAVAILABLE, NULL, 0);
        return;
    }
    const struct sentinel_addr *a = &s->addrs[(s->first + s->tried++) % s->n];
    struct sentinel_try *t = calloc(1, sizeof *t);
    CHATD_ASSERT(t != NULL);
    t->s = s;
    t->addr = a;
    t->rd = redisReaderCreate();
    CHATD_ASSERT(t->rd != NULL);
    t->gai.data = t;
    s->cur = t;
    uv_timer_start(&s->timer, sentinel_on_timer, s->timeout_ms, 0);
    char port[8];
    snprintf(port, sizeof port, "%d", a->port);
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(s->loop, &t->gai, sentinel_on_resolved, a->host, port, &hints);
    if (rc < 0) {
        sentinel_try_fail(t, uv_strerror(rc));
        return;
    }
    t->resolving = 1;
}

/* RESP for argv into buf; the length, or 0 if it does not fit. */
static size_t sentinel_resp(char *buf, size_t cap, int argc, const char *const *argv)
{
    size_t o = (size_t)snprintf(buf, cap, "*%d\r\n", argc);
    for (int i = 0; i < argc && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
    return o < cap ? o : 0;
}

int sentinel_init(sentinel_t **out, uv_loop_t *loop, const char *list, const char *master,
                  const char *user, const char *password, unsigned timeout_ms)
{
    *out = NULL;
    sentinel_t *s = calloc(1, sizeof *s);
    CHATD_ASSERT(s != NULL);
    size_t ml = master ? strlen(master) : 0;
    if (sentinel_list_parse(list, s->addrs, SENTINEL_MAX, &s->n) != 0) {
        log_error("redis_sentinels_invalid", "want=\"HOST[:PORT],...\" max=%d", SENTINEL_MAX);
        free(s);
        return ERR_BAD_REQUEST;
    }
    if (ml == 0 || ml >= sizeof s->master || strcspn(master, " \r\n") != ml) {
        log_error("redis_master_name_invalid", "name=%s", log_q(master ? master : "", ml));
        free(s);
        return ERR_BAD_REQUEST;
    }
    memcpy(s->master, master, ml + 1);
    size_t o = 0;
    if (password && password[0]) {
        const char *auth[3] = {"AUTH", user, password};
        int user_given = user && user[0];
        if (!user_given)
            auth[1] = password;
        o = sentinel_resp(s->req, sizeof s->req, user_given ? 3 : 2, auth);
        CHATD_ASSERT(o > 0); /* redis_url bounds user and password */
        s->nreplies = 1;
    }
    const char *q[3] = {"SENTINEL", "get-master-addr-by-name", master};
    size_t ql = sentinel_resp(s->req + o, sizeof s->req - o, 3, q);
    CHATD_ASSERT(ql > 0);
    s->req_len = o + ql;
    s->nreplies++;
    s->magic = SENTINEL_MAGIC;
    s->loop = loop;
    s->timeout_ms = timeout_ms ? timeout_ms : 1;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    *out = s;
    return 0;
}

void sentinel_query(sentinel_t *s, sentinel_cb cb, void *user)
{
    CHATD_ASSERT(s && s->magic == SENTINEL_MAGIC && !s->busy && cb);
    s->busy = 1;
    s->cb = cb;
    s->user = user;
    s->tried = 0;
    /* From the loop: every failure may be synchronous (no Sentinel resolves). */
    uv_timer_start(&s->timer, sentinel_on_timer, 0, 0);
}

int sentinel_busy(const sentinel_t *s)
{
    return s && s->busy;
}

static void sentinel_on_closed(uv_handle_t *h)
{
    sentinel_t *s = h->data;
    s->magic = 0;
    free(s);
}

void sentinel_close(sentinel_t *s)
{
    if (!s)
        return;
    CHATD_ASSERT(s->magic == SENTINEL_MAGIC);
    if (s->cur) {
        sentinel_try_end(s->cur);
        s->cur = NULL;
    }
    if (s->busy)
        sentinel_finish(s, ERR_CANCELLED, NULL, 0);
    uv_close((uv_handle_t *)&s->timer, sentinel_on_closed);
}
