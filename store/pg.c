/* pg: async PostgreSQL client on the libuv loop. See pg.h for the contract.
 *
 * Each pg_query is PQsendQueryParams + PQpipelineSync, so the results of one
 * query arrive as: result, NULL, PGRES_PIPELINE_SYNC. A pg_query_stmt whose
 * statement this connection has not prepared yet sends PQsendPrepare first,
 * inside the same sync: its results are then prepare result, NULL, result,
 * NULL, PGRES_PIPELINE_SYNC. Queries sit in a FIFO
 * in the order they were sent; the head is the one whose results come next
 * and the oldest deadline, the only one the timer watches.
 *
 * Failures (not connected, connection reset, close) are delivered from the
 * deferred queue, drained by a 0 ms timer, never from inside pg_query().
 *
 * Host names: a single non-numeric `host` is resolved with uv_getaddrinfo and
 * handed to libpq as `hostaddr` (all addresses, libpq tries them in turn), so
 * PQconnectPoll never blocks on DNS. Not covered: several comma-separated
 * hosts, and a host taken from PGHOST / service files rather than conninfo;
 * libpq resolves those itself, blocking (give IP addresses, or names the
 * resolver answers from its cache).
 *
 * Several hosts (host=a,b port=x,y target_session_attrs=read-write, a
 * primary and its standbys): libpq tries them in order within one attempt,
 * skipping refused and read-only ones, so a switchover is followed by the
 * next reconnect. But in non-blocking mode libpq enforces no
 * connect_timeout: a host that swallows packets (a dead node's address)
 * holds the attempt until our connect deadline, and an attempt restarted
 * from the same first host never reached the others. So each attempt lists
 * the hosts from host_first on, and a connect timeout moves host_first to
 * the next one.
 *
 * The socket may change between PQconnectPoll calls (libpq retries another
 * address or drops SSL), and a new socket can reuse the old fd number, so
 * while connecting the uv_poll handle is re-created after every step.
 */
#include "store/pg.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"

#define PG_CLIENT_MAGIC 0x50474331u
#define PG_QUERY_MAGIC 0x50475152u
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_CONNECT_MIN_MS 2000
#define PG_STATEMENT_GRACE_DIV 4 /* statement_timeout: the deadline + a quarter */
#define PG_ABANDON_GRACE_MS 2000 /* for the server's cancel of a timed-out query to arrive */
#define PG_MAX_ADDRS 8
#define PG_MAX_HOSTS 16

enum pg_state { PG_ST_DOWN, PG_ST_RESOLVING, PG_ST_CONNECTING, PG_ST_UP, PG_ST_CLOSING };

struct pg_query_req {
    unsigned magic;
    pg_result_cb cb;
    void *user;
    uint64_t deadline_ms;
    uint64_t start_ns;
    int err;          /* deferred delivery only */
    int synced;       /* saw the NULL that ends the results; the sync comes next */
    int abandoned;    /* timed out: the caller was answered, the results are dropped */
    uint64_t preparing; /* bit of the statement whose PREPARE's results come first, or 0 */
    PGresult *res;    /* first result */
    struct pg_query_req *next;
};

/* A comma-separated conninfo value split in place (host, port, hostaddr). */
struct pg_list {
    char buf[1024];
    const char *v[PG_MAX_HOSTS];
    int n;
};

struct pg_client {
    unsigned magic;
    uv_loop_t *loop;
    enum pg_state state;
    unsigned timeout_ms;
    PQconninfoOption *opts;
    const char *resolve_host; /* points into opts, or NULL */
    char hostaddr[PG_MAX_ADDRS * 48];
    char hostlist[PG_MAX_ADDRS * 256];
    PGconn *conn;
    uv_poll_t *poll; /* malloc'd: closed and replaced while connecting */
    int poll_events;
    unsigned gen; /* bumped on every reset: a callback may have reset us */
    uint64_t connect_deadline_ms;
    uint64_t timer_due_ms; /* when deadline_timer fires, if active */
    unsigned attempts;
    int counted_up;               /* counted in pg_n_up (chatd_pg_up) */
    int want_reset;
    int resolving;
    uv_getaddrinfo_t gai;
    uv_timer_t deadline_timer, reconnect_timer, defer_timer;
    int open_handles;
    unsigned inflight;
    uint64_t prepared; /* bit i: statement id i+1 is prepared on this connection */
    char options[512]; /* the conninfo's options plus statement_timeout */
    struct pg_list hosts, ports, hostaddrs; /* n > 1: rotated by host_first */
    int host_first;
    char rot_host[1024], rot_port[1024], rot_hostaddr[1024];
    struct pg_query_req *fifo_head, *fifo_tail;
    struct pg_query_req *defer_head, *defer_tail;
};

static metric_t *pg_m_errors, *pg_m_seconds, *pg_m_up;
static uint64_t pg_rng;

static void pg_on_defer_timer(uv_timer_t *t);
static void pg_on_deadline(uv_timer_t *t);
static void pg_on_reconnect_timer(uv_timer_t *t);
static void pg_on_poll(uv_poll_t *h, int status, int events);

/* chatd_pg_up is one gauge for the process's connections (a gateway has
 * --pg-conns, a classifier one): 1 only while all of them are up. */
static int pg_n_clients, pg_n_up;

static void pg_up_set(pg_client_t *c, int up)
{
    if (c->counted_up != up) {
        pg_n_up += up ? 1 : -1;
        c->counted_up = up;
    }
    metric_set(pg_m_up, pg_n_clients > 0 && pg_n_up == pg_n_clients);
}

static void pg_metrics_init(void)
{
    if (pg_m_errors)
        return;
    pg_m_errors = metrics_counter("chatd_pg_errors_total",
                                  "PostgreSQL queries failed (rejected, timeout, connection lost).", NULL);
    pg_m_seconds = metrics_histogram("chatd_pg_seconds", "PostgreSQL query latency.", NULL);
    pg_m_up = metrics_gauge("chatd_pg_up", "1 when every PostgreSQL connection of the process is up.", NULL);
}

static unsigned pg_backoff_ms(pg_client_t *c)
{
    if (pg_rng == 0)
        pg_rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x2545f4914f6cdd1dull;
    pg_rng ^= pg_rng << 13;
    pg_rng ^= pg_rng >> 7;
    pg_rng ^= pg_rng << 17;
    unsigned shift = c->attempts < 6 ? c->attempts : 6;
    unsigned cap = PG_BACKOFF_MIN_MS << shift;
    if (cap > PG_BACKOFF_MAX_MS)
        cap = PG_BACKOFF_MAX_MS;
    c->attempts++;
    return cap / 2 + (unsigned)(pg_rng % (cap / 2 + 1));
}

static const char *pg_errmsg(PGconn *conn)
{
    const char *m = conn ? PQerrorMessage(conn) : "no connection";
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    return log_q(m, n);
}

static void pg_on_notice(void *arg, const char *msg)
{
    (void)arg;
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        n--;
    log_debug("pg_notice", "msg=%s", log_q(msg, n));
}

/* ---- queues ---- */

static void pg_defer_kick(pg_client_t *c)
{
    if (!uv_is_active((uv_handle_t *)&c->defer_timer))
        uv_timer_start(&c->defer_timer, pg_on_defer_timer, 0, 0);
}

static void pg_defer(pg_client_t *c, struct pg_query_req *q, int err)
{
    q->err = err;
    q->next = NULL;
    if (q->res) {
        PQclear(q->res);
        q->res = NULL;
    }
    if (c->defer_tail)
        c->defer_tail->next = q;
    else
        c->defer_head = q;
    c->defer_tail = q;
    pg_defer_kick(c);
}

static struct pg_query_req *pg_fifo_pop(pg_client_t *c)
{
    struct pg_query_req *q = c->fifo_head;
    if (q) {
        c->fifo_head = q->next;
        if (!c->fifo_head)
            c->fifo_tail = NULL;
        q->next = NULL;
        c->inflight--;
    }
    return q;
}

/* One timer for the FIFO head (and the connect deadline): arms it for due
 * unless it already fires earlier. Deadlines grow along the FIFO, so a push
 * costs O(1); pg_on_deadline re-arms for the next head. */
static void pg_timer_arm(pg_client_t *c, uint64_t due)
{
    uint64_t now = uv_now(c->loop);
    if (uv_is_active((uv_handle_t *)&c->deadline_timer) && c->timer_due_ms <= due)
        return;
    c->timer_due_ms = due;
    uv_timer_start(&c->deadline_timer, pg_on_deadline, due > now ? due - now : 0, 0);
}

static void pg_fifo_push(pg_client_t *c, struct pg_query_req *q)
{
    q->deadline_ms = uv_now(c->loop) + c->timeout_ms;
    q->next = NULL;
    if (c->fifo_tail)
        c->fifo_tail->next = q;
    else
        c->fifo_head = q;
    c->fifo_tail = q;
    c->inflight++;
    pg_timer_arm(c, q->deadline_ms);
}

/* Calls back and frees q. res (if any) is freed after the callback. */
static void pg_deliver(struct pg_query_req *q, int err)
{
    PGresult *res = q->res;
    if (q->abandoned) { /* answered ERR_TIMEOUT already, counted then */
        if (res)
            PQclear(res);
        q->magic = 0;
        free(q);
        return;
    }
    if (err == 0)
        metric_observe(pg_m_seconds, (double)(uv_hrtime() - q->start_ns) / 1e9);
    else if (err != ERR_CANCELLED)
        metric_inc(pg_m_errors);
    q->res = NULL;
    q->magic = 0;
    if (q->cb)
        q->cb(err, res, q->user);
    if (res)
        PQclear(res);
    free(q);
}

/* ---- socket watching ---- */

static void pg_on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void pg_poll_close(pg_client_t *c)
{
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, pg_on_poll_closed);
        c->poll = NULL;
    }
    c->poll_events = 0;
}

/* A fresh handle on PQsocket(): never trust the old one to be the same fd. */
static int pg_poll_fresh(pg_client_t *c, int events)
{
    pg_poll_close(c);
    int fd = PQsocket(c->conn);
    if (fd < 0)
        return -1;
    uv_poll_t *p = malloc(sizeof *p);
    CHATD_ASSERT(p != NULL);
    int rc = uv_poll_init(c->loop, p, fd);
    if (rc < 0) {
        log_error("pg_poll_failed", "fd=%d err=%s", fd, uv_strerror(rc));
        free(p);
        return -1;
    }
    p->data = c;
    c->poll = p;
    c->poll_events = events;
    uv_poll_start(p, events, pg_on_poll);
    return 0;
}

static void pg_poll_set(pg_client_t *c, int events)
{
    if (c->poll && events != c->poll_events) {
        c->poll_events = events;
        uv_poll_start(c->poll, events, pg_on_poll);
    }
}

/* ---- connection lifecycle ---- */

static void pg_schedule_reconnect(pg_client_t *c)
{
    if (c->state == PG_ST_CLOSING)
        return;
    c->state = PG_ST_DOWN;
    pg_up_set(c, 0);
    if (uv_is_active((uv_handle_t *)&c->reconnect_timer))
        return;
    unsigned ms = pg_backoff_ms(c);
    log_debug("pg_reconnect_in", "ms=%u", ms);
    uv_timer_start(&c->reconnect_timer, pg_on_reconnect_timer, ms, 0);
}

/* Closes the connection; queries in flight fail with err (deferred). */
static void pg_teardown(pg_client_t *c, int err)
{
    c->gen++;
    c->want_reset = 0;
    c->prepared = 0;
    pg_poll_close(c);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    struct pg_query_req *q;
    while ((q = pg_fifo_pop(c)) != NULL)
        pg_defer(c, q, err);
}

static void pg_reset(pg_client_t *c, const char *why)
{
    log_warn("pg_reset", "why=%s inflight=%u err=%s", why, c->inflight, pg_errmsg(c->conn));
    metric_inc(pg_m_errors);
    pg_teardown(c, ERR_UNAVAILABLE);
    pg_schedule_reconnect(c);
}

static int pg_list_split(struct pg_list *l, const char *s)
{
    l->n = 0;
    if (!s || !*s)
        return 0;
    if (strlen(s) >= sizeof l->buf)
        return -1;
    strcpy(l->buf, s);
    for (char *p = l->buf;;) {
        if (l->n == PG_MAX_HOSTS)
            return -1;
        l->v[l->n++] = p;
        char *comma = strchr(p, ',');
        if (!comma)
            return 0;
        *comma = '\0';
        p = comma + 1;
    }
}

/* l's entries from first on, wrapping: "b,c,a" for first 1. */
static const char *pg_list_rotated(const struct pg_list *l, int first, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < l->n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", l->v[(first + i) % l->n]);
    return out;
}

static const char *pg_opt(const pg_client_t *c, const char *kw)
{
    for (PQconninfoOption *o = c->opts; o->keyword; o++)
        if (strcmp(o->keyword, kw) == 0)
            return o->val;
    return NULL;
}

static int pg_is_host_kw(const pg_client_t *c, const char *kw)
{
    return c->hosts.n > 1 &&
           (strcmp(kw, "host") == 0 || strcmp(kw, "port") == 0 || strcmp(kw, "hostaddr") == 0);
}

static void pg_connect_begin(pg_client_t *c)
{
    const char *kw[64], *val[64];
    int n = 0;
    /* The server cancels a statement running past the deadline itself: that
     * query fails alone and the connection every other query shares stays.
     * It does so a quarter of the deadline after it, not at it: a
     * statement about to commit when the caller gave up still commits, as it
     * would if only its reply were lost, and callers already make their
     * side effects follow the commit whatever the reply (issue 22); the
     * tests of that case rely on the window. Only a quarter: a query queued
     * behind the slow one waits for the cancel, and must still make its own
     * deadline. */
    const char *user_opts = "";
    for (PQconninfoOption *o = c->opts; o->keyword; o++)
        if (o->val && strcmp(o->keyword, "options") == 0)
            user_opts = o->val;
    snprintf(c->options, sizeof c->options, "%s%s-c statement_timeout=%u", user_opts,
             user_opts[0] ? " " : "", c->timeout_ms + c->timeout_ms / PG_STATEMENT_GRACE_DIV);
    kw[n] = "options", val[n++] = c->options;
    for (PQconninfoOption *o = c->opts; o->keyword && n < 60; o++)
        if (o->val && !(c->resolve_host && strcmp(o->keyword, "host") == 0) &&
            strcmp(o->keyword, "options") != 0 && !pg_is_host_kw(c, o->keyword)) {
            kw[n] = o->keyword;
            val[n++] = o->val;
        }
    if (c->resolve_host && c->hostaddr[0]) {
        kw[n] = "host", val[n++] = c->hostlist;
        kw[n] = "hostaddr", val[n++] = c->hostaddr;
    } else if (c->resolve_host) {
        kw[n] = "host", val[n++] = c->resolve_host;
    } else if (c->hosts.n > 1) {
        /* One port (or hostaddr) for all hosts is kept; a list that does
         * not match the hosts goes to libpq as given, which refuses it. */
        kw[n] = "host", val[n++] = pg_list_rotated(&c->hosts, c->host_first, c->rot_host, sizeof c->rot_host);
        if (c->ports.n == c->hosts.n)
            kw[n] = "port", val[n++] = pg_list_rotated(&c->ports, c->host_first, c->rot_port, sizeof c->rot_port);
        else if (c->ports.n > 0)
            kw[n] = "port", val[n++] = pg_opt(c, "port");
        if (c->hostaddrs.n == c->hosts.n)
            kw[n] = "hostaddr", val[n++] = pg_list_rotated(&c->hostaddrs, c->host_first, c->rot_hostaddr,
                                                          sizeof c->rot_hostaddr);
        else if (c->hostaddrs.n > 0)
            kw[n] = "hostaddr", val[n++] = pg_opt(c, "hostaddr");
    }
    kw[n] = NULL, val[n] = NULL;
    PGconn *conn = PQconnectStartParams(kw, val, 0);
    CHATD_ASSERT(conn != NULL);
    if (PQstatus(conn) == CONNECTION_BAD) {
        log_warn("pg_connect_failed", "err=%s", pg_errmsg(conn));
        PQfinish(conn);
        metric_inc(pg_m_errors);
        pg_schedule_reconnect(c);
        return;
    }
    /* Before anything is sent: in blocking mode pqFlush would wait. */
    PQsetnonblocking(conn, 1);
    PQsetNoticeProcessor(conn, pg_on_notice, c);
    c->conn = conn;
    c->state = PG_ST_CONNECTING;
    unsigned cms = c->timeout_ms > PG_CONNECT_MIN_MS ? c->timeout_ms : PG_CONNECT_MIN_MS;
    c->connect_deadline_ms = uv_now(c->loop) + cms;
    pg_timer_arm(c, c->connect_deadline_ms);
    /* PQconnectStart's contract: behave as if PQconnectPoll said WRITING. */
    if (pg_poll_fresh(c, UV_WRITABLE) < 0)
        pg_reset(c, "connect_socket");
}

static void pg_connect_step(pg_client_t *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        if (pg_poll_fresh(c, UV_READABLE) < 0)
            pg_reset(c, "connect_socket");
        return;
    case PGRES_POLLING_WRITING:
        if (pg_poll_fresh(c, UV_WRITABLE) < 0)
            pg_reset(c, "connect_socket");
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        pg_reset(c, "connect");
        return;
    }
    if (PQenterPipelineMode(c->conn) != 1 || pg_poll_fresh(c, UV_READABLE) < 0) {
        pg_reset(c, "pipeline_mode");
        return;
    }
    c->state = PG_ST_UP;
    c->attempts = 0;
    pg_up_set(c, 1);
    log_info("pg_connected", "host=%s port=%s server_version=%d backend_pid=%d",
             PQhost(c->conn) ? PQhost(c->conn) : "-", PQport(c->conn) ? PQport(c->conn) : "-",
             PQserverVersion(c->conn), PQbackendPID(c->conn));
}

static void pg_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    pg_client_t *c = req->data;
    CHATD_ASSERT(c && c->magic == PG_CLIENT_MAGIC);
    c->resolving = 0;
    if (c->state == PG_ST_CLOSING) {
        if (res)
            uv_freeaddrinfo(res);
        pg_defer_kick(c);
        return;
    }
    if (status < 0 || !res) {
        log_warn("pg_resolve_failed", "host=%s err=%s", c->resolve_host, uv_strerror(status));
        metric_inc(pg_m_errors);
        pg_schedule_reconnect(c);
        return;
    }
    /* host=h,h,... hostaddr=a1,a2,...: libpq tries each address in turn and
     * still checks certificates and .pgpass against the name. */
    size_t al = 0, hl = 0;
    int n = 0;
    c->hostaddr[0] = c->hostlist[0] = '\0';
    size_t hlen = strlen(c->resolve_host);
    for (struct addrinfo *ai = res; ai && n < PG_MAX_ADDRS; ai = ai->ai_next) {
        char ip[64];
        if (ai->ai_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
        else if (ai->ai_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
        else
            continue;
        if (al + strlen(ip) + 2 > sizeof c->hostaddr || hl + hlen + 2 > sizeof c->hostlist)
            break;
        al += (size_t)snprintf(c->hostaddr + al, sizeof c->hostaddr - al, "%s%s", n ? "," : "", ip);
        hl += (size_t)snprintf(c->hostlist + hl, sizeof c->hostlist - hl, "%s%s", n ? "," : "",
                               c->resolve_host);
        n++;
    }
    uv_freeaddrinfo(res);
    if (n == 0) {
        log_warn("pg_resolve_failed", "host=%s err=no_address", c->resolve_host);
        pg_schedule_reconnect(c);
        return;
    }
    pg_connect_begin(c);
}

static void pg_connect_start(pg_client_t *c)
{
    if (!c->resolve_host) {
        pg_connect_begin(c);
        return;
    }
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = PG_ST_RESOLVING;
    c->gai.data = c;
    int rc = uv_getaddrinfo(c->loop, &c->gai, pg_on_resolved, c->resolve_host, NULL, &hints);
    if (rc < 0) {
        log_warn("pg_resolve_failed", "host=%s err=%s", c->resolve_host, uv_strerror(rc));
        pg_schedule_reconnect(c);
        return;
    }
    c->resolving = 1;
}

/* ---- results ---- */

static int pg_result_err(const PGresult *res)
{
    if (!res)
        return ERR_INTERNAL;
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        return 0;
    default: /* FATAL_ERROR, PIPELINE_ABORTED, COPY_*: the caller reads res */
        return ERR_INTERNAL;
    }
}

/* Reads every complete result. Returns 0, or -1 when a callback reset or
 * closed the client (the caller must not touch the connection). */
static int pg_drain(pg_client_t *c)
{
    unsigned gen = c->gen;
    int nulls = 0;
    while (c->fifo_head && !PQisBusy(c->conn)) {
        struct pg_query_req *q = c->fifo_head;
        PGresult *res = PQgetResult(c->conn);
        if (!res) {
            if (q->preparing) { /* the PREPARE's results ended; the query's come next */
                q->preparing = 0;
                nulls = 0;
                continue;
            }
            /* One NULL ends a query's results; two in a row would mean libpq
             * has nothing for us although it is not busy: wait for input. */
            if (q->synced || ++nulls > 1)
                break;
            q->synced = 1;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_PIPELINE_SYNC) {
            if (q->preparing && pg_result_err(res) == 0) {
                PQclear(res);
                continue;
            }
            if (q->preparing) /* the query fails with this error; prepare again next time */
                c->prepared &= ~q->preparing;
            if (!q->res && !q->synced)
                q->res = res;
            else
                PQclear(res);
            continue;
        }
        PQclear(res);
        pg_fifo_pop(c);
        int err = pg_result_err(q->res);
        if (err && q->res && !strcmp(PQresultErrorField(q->res, PG_DIAG_SQLSTATE) ?: "", "57014")) {
            PQclear(q->res); /* statement_timeout: the server cancelled it */
            q->res = NULL;
            err = ERR_TIMEOUT;
        }
        if (err && q->res)
            log_debug("pg_query_failed", "sqlstate=%s err=%s",
                      PQresultErrorField(q->res, PG_DIAG_SQLSTATE) ? PQresultErrorField(q->res, PG_DIAG_SQLSTATE) : "-",
                      log_q(PQresultErrorMessage(q->res), strlen(PQresultErrorMessage(q->res))));
        pg_deliver(q, err);
        if (c->gen != gen || c->state != PG_ST_UP)
            return -1;
    }
    return 0;
}

static void pg_update_write_interest(pg_client_t *c)
{
    int f = PQflush(c->conn);
    if (f < 0) {
        pg_reset(c, "flush");
        return;
    }
    pg_poll_set(c, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void pg_on_poll(uv_poll_t *h, int status, int events)
{
    pg_client_t *c = h->data;
    CHATD_ASSERT(c && c->magic == PG_CLIENT_MAGIC);
    if (c->state == PG_ST_CONNECTING) {
        pg_connect_step(c);
        return;
    }
    if (c->state != PG_ST_UP)
        return;
    if (status < 0) {
        pg_reset(c, "poll");
        return;
    }
    if (events & UV_READABLE) {
        if (!PQconsumeInput(c->conn)) {
            pg_reset(c, "read");
            return;
        }
        if (pg_drain(c) < 0)
            return;
        if (PQstatus(c->conn) == CONNECTION_BAD) {
            pg_reset(c, "connection_bad");
            return;
        }
    }
    pg_update_write_interest(c);
}

/* ---- timers ---- */

static void pg_on_reconnect_timer(uv_timer_t *t)
{
    pg_client_t *c = t->data;
    if (c->state == PG_ST_DOWN)
        pg_connect_start(c);
}

static void pg_on_deadline(uv_timer_t *t)
{
    pg_client_t *c = t->data;
    uint64_t now = uv_now(c->loop);
    if (c->state == PG_ST_CONNECTING && now >= c->connect_deadline_ms) {
        if (c->hosts.n > 1) { /* the next attempt starts after the host that held this one */
            log_warn("pg_connect_timeout", "host=%s port=%s", PQhost(c->conn) ? PQhost(c->conn) : "-",
                     PQport(c->conn) ? PQport(c->conn) : "-");
            c->host_first = (c->host_first + 1) % c->hosts.n;
        }
        pg_reset(c, "connect_timeout");
        return;
    }
    if (c->state != PG_ST_UP && c->state != PG_ST_CONNECTING)
        return;
    struct pg_query_req *q = c->fifo_head;
    if (q && q->abandoned && q->deadline_ms <= now) {
        /* Not even the server's own cancel came back: the connection is
         * stuck. Not cancelled server-side: PQcancel blocks. */
        pg_fifo_pop(c);
        log_warn("pg_stuck", "timeout_ms=%u inflight=%u", c->timeout_ms, c->inflight);
        if (q->res) {
            PQclear(q->res);
            q->res = NULL;
        }
        metric_inc(pg_m_errors);
        pg_teardown(c, ERR_UNAVAILABLE);
        pg_schedule_reconnect(c);
        pg_deliver(q, ERR_TIMEOUT);
        return;
    }
    /* Every query past its deadline is answered ERR_TIMEOUT now and stays in
     * the FIFO, its results dropped when they come: the server cancels a
     * slow statement itself (statement_timeout), so one slow query does not
     * fail the others in flight (issue 16). Queries already answered are
     * skipped wherever they sit: with only the head looked at, a due query
     * behind an abandoned head re-armed this timer at 0 ms for ever (the
     * gateway's loop spun in its timers: test_pg_timeout_behind_abandoned). */
    unsigned gen = c->gen, n = 0;
    for (struct pg_query_req *p = q; p; p = p->next) {
        if (p->abandoned)
            continue;
        if (p->deadline_ms > now)
            break; /* deadlines grow along the FIFO */
        pg_result_cb cb = p->cb;
        void *user = p->user;
        p->abandoned = 1;
        p->cb = NULL;
        p->deadline_ms = now + c->timeout_ms + PG_ABANDON_GRACE_MS;
        metric_inc(pg_m_errors);
        n++;
        if (cb)
            cb(ERR_TIMEOUT, NULL, user);
        if (c->gen != gen || c->state != PG_ST_UP)
            return; /* the callback reset or closed the client */
    }
    if (n)
        log_warn("pg_timeout", "timeout_ms=%u timed_out=%u inflight=%u", c->timeout_ms, n, c->inflight);
    uint64_t next = q ? q->deadline_ms : UINT64_MAX;
    for (struct pg_query_req *p = q; p; p = p->next) /* the first one not timed out yet */
        if (!p->abandoned) {
            if (p->deadline_ms < next)
                next = p->deadline_ms;
            break;
        }
    if (c->state == PG_ST_CONNECTING && c->connect_deadline_ms < next)
        next = c->connect_deadline_ms;
    if (next != UINT64_MAX)
        pg_timer_arm(c, next);
}

static void pg_on_handle_closed(uv_handle_t *h)
{
    pg_client_t *c = h->data;
    if (--c->open_handles == 0) {
        PQconninfoFree(c->opts);
        c->magic = 0;
        free(c);
    }
}

static void pg_on_defer_timer(uv_timer_t *t)
{
    pg_client_t *c = t->data;
    CHATD_ASSERT(c->magic == PG_CLIENT_MAGIC);
    if (c->want_reset && c->state == PG_ST_UP)
        pg_reset(c, "send");
    while (c->defer_head) {
        struct pg_query_req *q = c->defer_head;
        c->defer_head = q->next;
        if (!c->defer_head)
            c->defer_tail = NULL;
        pg_deliver(q, c->state == PG_ST_CLOSING ? ERR_CANCELLED : q->err);
    }
    if (c->state == PG_ST_CLOSING && !c->resolving && c->open_handles == 3 &&
        !uv_is_closing((uv_handle_t *)&c->defer_timer)) {
        uv_close((uv_handle_t *)&c->deadline_timer, pg_on_handle_closed);
        uv_close((uv_handle_t *)&c->reconnect_timer, pg_on_handle_closed);
        uv_close((uv_handle_t *)&c->defer_timer, pg_on_handle_closed);
    }
}

/* ---- public API ---- */

static int pg_is_numeric_host(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

int pg_client_init(pg_client_t **out, uv_loop_t *loop, const char *conninfo, unsigned timeout_ms)
{
    *out = NULL;
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &errmsg);
    if (!opts) {
        log_error("pg_conninfo_invalid", "err=%s", errmsg ? log_q(errmsg, strlen(errmsg)) : "nomem");
        PQfreemem(errmsg);
        return ERR_BAD_REQUEST;
    }
    pg_client_t *c = calloc(1, sizeof *c);
    CHATD_ASSERT(c != NULL);
    pg_metrics_init();
    c->magic = PG_CLIENT_MAGIC;
    c->loop = loop;
    c->opts = opts;
    c->timeout_ms = timeout_ms ? timeout_ms : 1;
    const char *host = NULL, *hostaddr = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    if (host && *host && !(hostaddr && *hostaddr) && host[0] != '/' && host[0] != '@' &&
        !strchr(host, ',') && !pg_is_numeric_host(host))
        c->resolve_host = host;
    const char *port = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    if (host && strchr(host, ',') &&
        (pg_list_split(&c->hosts, host) < 0 || pg_list_split(&c->ports, port) < 0 ||
         pg_list_split(&c->hostaddrs, hostaddr) < 0)) {
        log_error("pg_conninfo_invalid", "err=\"more than %d hosts, or host/port lists too long\"",
                  PG_MAX_HOSTS);
        PQconninfoFree(opts);
        free(c);
        return ERR_BAD_REQUEST;
    }
    uv_timer_init(loop, &c->deadline_timer);
    uv_timer_init(loop, &c->reconnect_timer);
    uv_timer_init(loop, &c->defer_timer);
    c->deadline_timer.data = c->reconnect_timer.data = c->defer_timer.data = c;
    c->open_handles = 3;
    pg_n_clients++;
    pg_up_set(c, 0);
    pg_connect_start(c);
    *out = c;
    return 0;
}

int pg_client_ready(const pg_client_t *c)
{
    return c && c->state == PG_ST_UP;
}

unsigned pg_client_inflight(const pg_client_t *c)
{
    return c ? c->inflight : 0;
}

static struct pg_query_req *pg_req_new(pg_client_t *c, int nparams, pg_result_cb cb, void *user)
{
    CHATD_ASSERT(c && c->magic == PG_CLIENT_MAGIC);
    struct pg_query_req *q = calloc(1, sizeof *q);
    CHATD_ASSERT(q != NULL);
    q->magic = PG_QUERY_MAGIC;
    q->cb = cb;
    q->user = user;
    q->start_ns = uv_hrtime();
    if (c->state != PG_ST_UP || c->want_reset) {
        pg_defer(c, q, c->state == PG_ST_CLOSING ? ERR_CANCELLED : ERR_UNAVAILABLE);
        return NULL;
    }
    if (nparams < 0 || nparams > 65535) {
        pg_defer(c, q, ERR_BAD_REQUEST);
        return NULL;
    }
    return q;
}

static void pg_send_failed(pg_client_t *c, struct pg_query_req *q)
{
    log_warn("pg_send_failed", "err=%s", pg_errmsg(c->conn));
    pg_defer(c, q, ERR_UNAVAILABLE);
    if (PQstatus(c->conn) == CONNECTION_BAD) {
        c->want_reset = 1;
        pg_defer_kick(c);
    }
}

/* q's commands are queued in libpq: track q, end the pipeline unit, send. */
static void pg_sent(pg_client_t *c, struct pg_query_req *q)
{
    pg_fifo_push(c, q);
    /* PQpipelineSync also pushes the bytes out (libpq 14/15). A failure
     * leaves a query without its sync: reset, q fails with the rest. */
    if (!PQpipelineSync(c->conn)) {
        c->want_reset = 1;
        pg_defer_kick(c);
        return;
    }
    int f = PQflush(c->conn);
    if (f < 0) {
        c->want_reset = 1;
        pg_defer_kick(c);
    } else if (f == 1) {
        pg_poll_set(c, UV_READABLE | UV_WRITABLE);
    }
}

void pg_query(pg_client_t *c, const char *sql, int nparams, const char *const *params,
              pg_result_cb cb, void *user)
{
    struct pg_query_req *q = pg_req_new(c, nparams, cb, user);
    if (!q)
        return;
    if (!PQsendQueryParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0)) {
        pg_send_failed(c, q);
        return;
    }
    pg_sent(c, q);
}

void pg_query_stmt(pg_client_t *c, struct pg_stmt *stmt, int nparams, const char *const *params,
                   pg_result_cb cb, void *user)
{
    static unsigned pg_stmt_ids;
    if (stmt->id == 0) {
        CHATD_ASSERT(pg_stmt_ids < PG_STMTS_MAX);
        stmt->id = ++pg_stmt_ids;
    }
    struct pg_query_req *q = pg_req_new(c, nparams, cb, user);
    if (!q)
        return;
    char name[16];
    snprintf(name, sizeof name, "chatd_%u", stmt->id);
    uint64_t bit = (uint64_t)1 << (stmt->id - 1);
    if (!(c->prepared & bit)) {
        if (!PQsendPrepare(c->conn, name, stmt->sql, nparams, NULL)) {
            pg_send_failed(c, q);
            return;
        }
        c->prepared |= bit;
        q->preparing = bit;
    }
    if (!PQsendQueryPrepared(c->conn, name, nparams, params, NULL, NULL, 0)) {
        /* The PREPARE is queued without its query: only a reset resyncs. */
        c->want_reset = 1;
        pg_defer_kick(c);
        pg_defer(c, q, ERR_UNAVAILABLE);
        return;
    }
    pg_sent(c, q);
}

void pg_client_close(pg_client_t *c)
{
    if (!c)
        return;
    CHATD_ASSERT(c->magic == PG_CLIENT_MAGIC);
    CHATD_ASSERT(c->state != PG_ST_CLOSING);
    c->state = PG_ST_CLOSING;
    pg_n_clients--;
    pg_up_set(c, 0);
    uv_timer_stop(&c->reconnect_timer);
    uv_timer_stop(&c->deadline_timer);
    if (c->resolving)
        uv_cancel((uv_req_t *)&c->gai);
    pg_teardown(c, ERR_CANCELLED);
    pg_defer_kick(c);
}
