/* http: see net/http.h for the contract.
 *
 * A connection is READING (parsing the next request), DISPATCHED (the handler
 * owns a request; the socket is not read), LINGER (a closing response was
 * queued: FIN after it, input discarded until the peer's FIN or a deadline, so
 * unread bytes never turn our close into a RST that eats the response) or
 * CLOSED (uv_close called; freed in its callback).
 *
 * Per-connection state stays small: the parser, a few pointers and the peer
 * address. The 16 KiB header buffer exists only while a request does, and
 * reads land in one shared buffer.
 */
#include "net/http.h"
#include "net/http_internal.h"

#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <utlist.h>

#include "lib/hex.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/slab.h"

#define HTTP_BODY_MAX (64 * 1024) /* 413 above */
#define HTTP_LINGER_MS 2000       /* wait this long for the peer's FIN after closing */
#define HTTP_BACKLOG 511
/* Unsent output per connection: past this, the next pipelined request is not
 * parsed (nor the socket read) until the peer has taken the responses, so a
 * client that pipelines requests and never reads holds at most this plus one
 * response (issue 16). */
#define HTTP_OUT_MAX (64 * 1024)

#define HTTP_SERVER_MAGIC 0x48535256u
#define HTTP_CONN_MAGIC 0x48434f4eu
#define HTTP_REQ_MAGIC 0x48524551u

enum http_state { HTTP_READING, HTTP_DISPATCHED, HTTP_LINGER, HTTP_CLOSED };
/* Which string the header buffer currently ends with. */
enum http_part { HTTP_PART_NONE, HTTP_PART_URL, HTTP_PART_FIELD, HTTP_PART_VALUE };

struct http_server {
    unsigned magic;
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uv_idle_t resume; /* re-arms keep-alive connections outside http_respond() */
    http_handler_cb cb;
    void *user;
    struct http_conn *conns;  /* every connection still in the HTTP phase */
    struct http_conn *resumes;
    struct http_limits lim;
    unsigned nconns;  /* connections in the HTTP phase */
    unsigned handles; /* open handles; freed at 0 once closing */
    int port;
    unsigned accepting : 1, closing : 1;
};

struct http_conn {
    unsigned magic;
    uint8_t state;
    uint8_t reading;
    uint8_t in_resume;
    uint8_t blocked;          /* unsent output over HTTP_OUT_MAX: parsing waits */
    uint16_t fail;            /* status to answer when a callback stopped the parser */
    uv_tcp_t *tcp;
    http_server_t *srv;
    http_req_t *req;          /* being parsed, or owned by the handler */
    char *leftover;           /* bytes after a complete request */
    size_t leftover_len;
    struct http_write *writes; /* responses libuv has not finished writing */
    double tokens;            /* request rate bucket (lim.rate, lim.rate_burst) */
    uint64_t tokens_ms;
    uint64_t deadline;        /* loop ms; idle (READING) or linger (LINGER) limit */
    struct http_conn *prev, *next, *resume_next;
    http_parser parser;
    char peer[INET6_ADDRSTRLEN];
};

struct http_req {
    unsigned magic;
    struct http_conn *conn; /* NULL once the connection is gone */
    const char *path, *query;
    char *body;
    size_t body_len, body_cap;
    size_t used;
    size_t cap;     /* of buf, the max_header of when the request began */
    size_t headers; /* offset of the first header name */
    unsigned nheaders;
    uint8_t part;
    uint8_t method;
    uint8_t keep_alive, upgrade, http10;
    uint8_t slab;   /* from http_reqs */
    uint8_t in_body; /* headers complete: what http-parser reports as headers now are trailers */
    char peer[INET6_ADDRSTRLEN];
    char buf[]; /* lim.max_header + 1: url\0 (name\0 value\0)* */
};

struct http_write {
    uv_write_t req;
    struct http_conn *conn; /* NULL once the socket changed owner */
    struct http_write *prev, *next;
    char data[];
};

static metric_t *http_m_requests, *http_m_rejects, *http_m_conns;

static void http_conn_close(struct http_conn *c);
static int http_conn_feed(struct http_conn *c, const char *data, size_t len);
static void http_server_resume_cb(uv_idle_t *h);
static void http_conn_resume_later(struct http_conn *c);

static struct http_conn *http_conn_from(void *p)
{
    struct http_conn *c = p;
    CHATD_ASSERT(c != NULL && c->magic == HTTP_CONN_MAGIC);
    return c;
}

static http_server_t *http_server_from(void *p)
{
    http_server_t *s = p;
    CHATD_ASSERT(s != NULL && s->magic == HTTP_SERVER_MAGIC);
    return s;
}

void http_read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char shared[64 * 1024];
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(shared, sizeof shared);
}

/* ---- server lifetime ---- */

static void http_server_unref(http_server_t *s)
{
    CHATD_ASSERT(s->handles > 0);
    if (--s->handles == 0 && s->closing) {
        s->magic = 0;
        free(s);
    }
}

static void http_server_handle_closed(uv_handle_t *h) { http_server_unref(http_server_from(h->data)); }

static void http_conn_unlink(struct http_conn *c)
{
    http_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    if (c->in_resume) {
        struct http_conn **pp = &s->resumes;
        while (*pp != c)
            pp = &(*pp)->resume_next;
        *pp = c->resume_next;
    }
    metric_add(http_m_conns, -1);
}

/* Requests of the first server's size (every server of a process has the
 * same limits; tests aside) come from a slab: a handshake storm has a
 * thousand in flight, and their 16 KiB would otherwise be heap that the
 * connections' few long-lived heap objects keep resident (lib/slab.h). */
SLAB_DEFINE(http_reqs, SLAB_INIT_SIZE("http_req", 0));

size_t http_max_header_limit(void) { return SLAB_MAX_OBJECT - sizeof(http_req_t) - 1; }

static http_req_t *http_req_new(size_t max_header)
{
    size_t size = sizeof(http_req_t) + max_header + 1;
    if (!http_reqs.size && slab_fits(size))
        http_reqs.size = size;
    int from_slab = size == http_reqs.size;
    http_req_t *r = from_slab ? slab_alloc_raw(&http_reqs) : malloc(size);
    if (!r)
        return NULL;
    memset(r, 0, offsetof(http_req_t, buf)); /* the buffer is filled as it arrives */
    r->slab = (uint8_t)from_slab;
    return r;
}

static void http_req_free(http_req_t *r)
{
    if (!r)
        return;
    CHATD_ASSERT(r->magic == HTTP_REQ_MAGIC);
    r->magic = 0;
    free(r->body);
    if (r->slab)
        slab_free(&http_reqs, r);
    else
        free(r);
}

static void http_conn_close_cb(uv_handle_t *h)
{
    struct http_conn *c = http_conn_from(h->data);
    http_server_t *s = c->srv;
    http_conn_unlink(c);
    /* A request the handler still owns outlives its connection. */
    if (c->req && c->req->conn == c)
        c->req->conn = NULL;
    free(c->leftover);
    http_socket_free((uv_tcp_t *)h);
    c->magic = 0;
    free(c);
    http_server_unref(s);
}

static void http_conn_close(struct http_conn *c)
{
    if (c->state == HTTP_CLOSED)
        return;
    if (c->req && c->state != HTTP_DISPATCHED) {
        http_req_free(c->req);
        c->req = NULL;
    }
    c->state = HTTP_CLOSED;
    uv_close((uv_handle_t *)c->tcp, http_conn_close_cb);
}

/* ---- reading ---- */

static void http_conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = http_conn_from(st->data);
    if (nread < 0) {
        http_conn_close(c);
        return;
    }
    if (nread == 0 || c->state == HTTP_LINGER)
        return;
    CHATD_ASSERT(c->state == HTTP_READING);
    http_conn_feed(c, buf->base, (size_t)nread);
}

static void http_conn_read(struct http_conn *c, int on)
{
    if (on == c->reading)
        return;
    int r = on ? uv_read_start((uv_stream_t *)c->tcp, http_read_alloc_cb, http_conn_read_cb)
               : uv_read_stop((uv_stream_t *)c->tcp);
    if (r < 0) {
        log_warn("http_read_failed", "peer=%s err=%s", c->peer, uv_err_name(r));
        http_conn_close(c);
        return;
    }
    c->reading = (uint8_t)on;
}

/* ---- responses ---- */

static const char *http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* A failed write shows up as a read error or EOF too. A connection that
 * stopped parsing for its unsent output goes on once it is under the bound. */
static void http_write_cb(uv_write_t *req, int status)
{
    struct http_write *w = (struct http_write *)req; /* req is the first member */
    struct http_conn *c = w->conn;
    if (c) {
        DL_DELETE(c->writes, w);
        if (status == 0 && c->blocked && c->state == HTTP_READING &&
            c->tcp->write_queue_size <= HTTP_OUT_MAX) {
            c->blocked = 0;
            c->deadline = uv_now(c->srv->loop) + c->srv->lim.request_timeout_ms;
            http_conn_resume_later(c);
        }
    }
    free(w);
}

static void http_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* After a closing response: FIN once it is written, then discard input until
 * the peer's FIN (or the linger deadline, enforced by the sweep). */
static void http_conn_linger(struct http_conn *c)
{
    uv_shutdown_t *sr = malloc(sizeof *sr);
    int r = sr ? uv_shutdown(sr, (uv_stream_t *)c->tcp, http_shutdown_cb) : UV_ENOMEM;
    if (r < 0) {
        free(sr);
        http_conn_close(c);
        return;
    }
    free(c->leftover);
    c->leftover = NULL;
    c->state = HTTP_LINGER;
    c->deadline = uv_now(c->srv->loop) + HTTP_LINGER_MS;
    http_conn_read(c, 1);
}

static void http_conn_resume_later(struct http_conn *c)
{
    http_server_t *s = c->srv;
    if (!c->in_resume) {
        c->in_resume = 1;
        c->resume_next = s->resumes;
        s->resumes = c;
    }
    /* uv_idle also keeps the next poll from blocking. */
    uv_idle_start(&s->resume, http_server_resume_cb);
}

/* Writes one response. keep: the connection goes on with the next request;
 * otherwise it lingers and closes. */
static void http_conn_send(struct http_conn *c, int status, const char *ctype, const char *body,
                           size_t len, const char *extra, int head_only, int keep, int http10)
{
    const char *conn_hdr = !keep ? "Connection: close\r\n"
                           : http10 ? "Connection: keep-alive\r\n" : "";
    if (!ctype)
        ctype = "text/plain; charset=utf-8";
    if (!extra)
        extra = "";
    /* A 304 has no body, and its Content-Length would have to be the 200's
     * (RFC 9110 8.6), so it has none. */
    char clen[48] = "";
    if (status == 304)
        len = 0;
    else
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    static const char fmt[] = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s\r\n";
    int hlen = snprintf(NULL, 0, fmt, status, http_status_text(status), ctype, clen, conn_hdr, extra);
    size_t blen = head_only ? 0 : len;
    struct http_write *w = hlen < 0 ? NULL : malloc(sizeof *w + (size_t)hlen + 1 + blen);
    if (!w) {
        http_conn_close(c);
        return;
    }
    snprintf(w->data, (size_t)hlen + 1, fmt, status, http_status_text(status), ctype, clen, conn_hdr, extra);
    if (blen)
        memcpy(w->data + hlen, body, blen);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)((size_t)hlen + blen));
    int r = uv_write(&w->req, (uv_stream_t *)c->tcp, &b, 1, http_write_cb);
    if (r < 0) {
        free(w);
        http_conn_close(c);
        return;
    }
    w->conn = c;
    DL_APPEND(c->writes, w);
    if (!keep) {
        http_conn_linger(c);
        return;
    }
    c->state = HTTP_READING;
    c->deadline = uv_now(c->srv->loop) + c->srv->lim.request_timeout_ms;
    http_parser_pause(&c->parser, 0);
    if (c->tcp->write_queue_size > HTTP_OUT_MAX) {
        /* http_write_cb resumes; a peer that never reads is closed by the
         * sweep once the request timeout passes. */
        c->blocked = 1;
        return;
    }
    http_conn_resume_later(c);
}

/* The server answers a request the handler never sees (limits, syntax). */
static void http_conn_reject(struct http_conn *c, int status)
{
    const char *body;
    switch (status) {
    case 408: body = "{\"error\":\"bad_request\",\"message\":\"request not received in time\"}"; break;
    case 413: body = "{\"error\":\"too_large\",\"message\":\"request body too large\"}"; break;
    case 429: body = "{\"error\":\"rate_limited\",\"message\":\"too many requests on this connection\"}"; break;
    case 414: body = "{\"error\":\"too_large\",\"message\":\"request target too long\"}"; break;
    case 431: body = "{\"error\":\"too_large\",\"message\":\"request headers too large\"}"; break;
    case 503: body = "{\"error\":\"unavailable\",\"message\":\"server busy, try again\"}"; break;
    default: body = "{\"error\":\"bad_request\",\"message\":\"malformed request\"}"; break;
    }
    log_info("http_reject", "peer=%s status=%d", c->peer, status);
    metric_inc(http_m_rejects);
    http_req_free(c->req);
    c->req = NULL;
    http_conn_send(c, status, "application/json", body, strlen(body),
                   status == 429 ? "Retry-After: 1\r\n" : NULL, 0, 0, 0);
}

/* Every request a connection has handled costs a token, like a WebSocket
 * frame (the request's backend work and response are what a flood buys). */
static int http_conn_take_token(struct http_conn *c)
{
    const struct http_limits *l = &c->srv->lim;
    uint64_t now = uv_now(c->srv->loop);
    c->tokens += (double)(now - c->tokens_ms) * l->rate / 1000.0;
    if (c->tokens > l->rate_burst)
        c->tokens = l->rate_burst;
    c->tokens_ms = now;
    if (c->tokens < 1.0)
        return -1;
    c->tokens -= 1.0;
    return 0;
}

/* ---- parser callbacks: URL and headers go into req->buf ---- */

static int http_req_append(struct http_conn *c, const char *at, size_t len)
{
    http_req_t *r = c->req;
    if (len > r->cap - r->used) {
        c->fail = 431;
        return -1;
    }
    memcpy(r->buf + r->used, at, len);
    r->used += len;
    return 0;
}

/* http-parser may deliver one string in several calls (split reads); a new
 * string starts when the kind changes. */
static int http_req_switch(struct http_conn *c, enum http_part part)
{
    http_req_t *r = c->req;
    if (r->part == part)
        return 0;
    if (r->part == HTTP_PART_VALUE)
        while (r->used > 0 && (r->buf[r->used - 1] == ' ' || r->buf[r->used - 1] == '\t'))
            r->used--;
    if (r->part != HTTP_PART_NONE && http_req_append(c, "", 1) != 0)
        return -1;
    r->part = (uint8_t)part;
    if (part == HTTP_PART_FIELD)
        r->nheaders++;
    return 0;
}

static int http_on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;
    http_req_t *r = http_req_new(c->srv->lim.max_header);
    if (!r) {
        c->fail = 503;
        return -1;
    }
    r->magic = HTTP_REQ_MAGIC;
    r->cap = c->srv->lim.max_header;
    r->conn = c;
    memcpy(r->peer, c->peer, sizeof r->peer);
    c->req = r;
    return 0;
}

static int http_on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    /* The URL is the buffer's first string: its length so far is r->used. */
    if (len > c->srv->lim.max_url || c->req->used > c->srv->lim.max_url - len) {
        c->fail = 414;
        return -1;
    }
    return http_req_switch(c, HTTP_PART_URL) || http_req_append(c, at, len) ? -1 : 0;
}

/* Trailers (after a chunked body) are dropped: appended to the header
 * table they would be read as headers, shifted (issue 16). */
static int http_on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->req->in_body)
        return 0;
    return http_req_switch(c, HTTP_PART_FIELD) || http_req_append(c, at, len) ? -1 : 0;
}

static int http_on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->req->in_body)
        return 0;
    return http_req_switch(c, HTTP_PART_VALUE) || http_req_append(c, at, len) ? -1 : 0;
}

/* Splits the request target into path and query, in place. */
static void http_req_split_url(http_req_t *r)
{
    char *url = r->buf;
    char *hash = strchr(url, '#');
    if (hash)
        *hash = '\0';
    char *q = strchr(url, '?');
    if (q)
        *q++ = '\0';
    r->query = q ? q : "";
    r->path = url;
    if (url[0] != '/') { /* absolute-form: http://host/path */
        char *scheme = strstr(url, "://");
        char *slash = scheme ? strchr(scheme + 3, '/') : NULL;
        if (scheme)
            r->path = slash ? slash : "/";
    }
}

static int http_on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    http_req_t *r = c->req;
    if (http_req_switch(c, HTTP_PART_NONE) != 0 || http_req_append(c, "", 1) != 0)
        return -1;
    if (r->used == 1) { /* no URL at all */
        c->fail = 400;
        return -1;
    }
    if (p->content_length != ULLONG_MAX && p->content_length > HTTP_BODY_MAX) {
        c->fail = 413;
        return -1;
    }
    /* No body where none has a meaning: a GET or HEAD (the upgrade is a GET)
     * or any upgrade. */
    int has_body = (p->flags & F_CHUNKED) || (p->content_length != ULLONG_MAX && p->content_length > 0);
    if (has_body && (p->method == HTTP_GET || p->method == HTTP_HEAD || p->upgrade)) {
        c->fail = 400;
        return -1;
    }
    r->in_body = 1;
    r->headers = strlen(r->buf) + 1;
    http_req_split_url(r);
    return 0;
}

static int http_on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    http_req_t *r = c->req;
    if (len > HTTP_BODY_MAX - r->body_len) {
        c->fail = 413;
        return -1;
    }
    if (r->body_len + len > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap * 2 : 1024;
        if (p->content_length != ULLONG_MAX && cap < r->body_len + len + p->content_length)
            cap = r->body_len + len + p->content_length; /* content_length counts what is left */
        if (cap < r->body_len + len)
            cap = r->body_len + len;
        if (cap > HTTP_BODY_MAX)
            cap = HTTP_BODY_MAX;
        char *nb = realloc(r->body, cap + 1);
        if (!nb) {
            c->fail = 503;
            return -1;
        }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static int http_on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    http_req_t *r = c->req;
    r->method = (uint8_t)p->method;
    r->keep_alive = (uint8_t)(http_should_keep_alive(p) && !p->upgrade);
    r->upgrade = (uint8_t)p->upgrade;
    r->http10 = p->http_major == 1 && p->http_minor == 0;
    if (r->body)
        r->body[r->body_len] = '\0';
    /* One request at a time: stop here; the rest waits for the response. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings http_settings = {
    .on_message_begin = http_on_message_begin,
    .on_url = http_on_url,
    .on_header_field = http_on_header_field,
    .on_header_value = http_on_header_value,
    .on_headers_complete = http_on_headers_complete,
    .on_body = http_on_body,
    .on_message_complete = http_on_message_complete,
};

/* Parses bytes; on a complete request, keeps what follows it and calls the
 * handler. Returns 1 when the request was dispatched: c may then be gone
 * (an upgrade hands the socket to ws), so the caller must not touch it. */
static int http_conn_feed(struct http_conn *c, const char *data, size_t len)
{
    size_t n = http_parser_execute(&c->parser, &http_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e != HPE_PAUSED) {
        if (e != HPE_OK)
            http_conn_reject(c, c->fail ? c->fail : 400);
        return 0;
    }
    if (n < len) {
        c->leftover = malloc(len - n);
        if (!c->leftover) {
            http_conn_reject(c, 503);
            return 0;
        }
        memcpy(c->leftover, data + n, len - n);
        c->leftover_len = len - n;
    }
    http_conn_read(c, 0);
    if (c->state == HTTP_CLOSED)
        return 0;
    if (http_conn_take_token(c) < 0) {
        log_info("http_rate_limited", "peer=%s", c->peer);
        http_conn_reject(c, 429);
        return 0;
    }
    c->state = HTTP_DISPATCHED;
    metric_inc(http_m_requests);
    c->srv->cb(c->req, c->srv->user);
    return 1;
}

/* Keep-alive: the next request may already be buffered (pipelining); parse it
 * here, outside http_respond(), so a handler is never re-entered. */
static void http_server_resume_cb(uv_idle_t *h)
{
    http_server_t *s = http_server_from(h->data);
    struct http_conn *list = s->resumes;
    s->resumes = NULL;
    while (list) {
        struct http_conn *c = list;
        list = c->resume_next;
        c->in_resume = 0;
        if (c->state != HTTP_READING)
            continue;
        char *lo = c->leftover;
        size_t lo_len = c->leftover_len;
        c->leftover = NULL;
        c->leftover_len = 0;
        int gone = lo ? http_conn_feed(c, lo, lo_len) : 0;
        free(lo);
        if (!gone && c->state == HTTP_READING)
            http_conn_read(c, 1);
    }
    if (!s->resumes)
        uv_idle_stop(h);
}

/* ---- accept, sweep ---- */

static void http_conn_peer(struct http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
}

/* Accepted sockets outlive their HTTP connection when upgraded (ws.c). */
SLAB_DEFINE(http_sockets, SLAB_INIT("socket", uv_tcp_t));

void http_socket_free(uv_tcp_t *tcp) { slab_free(&http_sockets, tcp); }

static void http_free_handle_cb(uv_handle_t *h) { http_socket_free((uv_tcp_t *)h); }

/* libuv's accept loop already skips ECONNABORTED and keeps a spare fd to
 * shed connections on EMFILE/ENFILE (uv__emfile_trick), so an error here is
 * logged and the listener keeps going. */
static void http_server_on_connection(uv_stream_t *l, int status)
{
    http_server_t *s = http_server_from(l->data);
    if (status < 0) {
        log_warn("http_accept_failed", "port=%d err=%s", s->port, uv_err_name(status));
        return;
    }
    uv_tcp_t *tcp = slab_alloc(&http_sockets);
    struct http_conn *c = calloc(1, sizeof *c);
    CHATD_ASSERT(tcp != NULL && c != NULL); /* libuv stalls the listener until we accept */
    uv_tcp_init(s->loop, tcp);
    int r = uv_accept(l, (uv_stream_t *)tcp);
    if (r < 0) {
        log_warn("http_accept_failed", "port=%d err=%s", s->port, uv_err_name(r));
        free(c);
        uv_close((uv_handle_t *)tcp, http_free_handle_cb);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    c->magic = HTTP_CONN_MAGIC;
    c->tcp = tcp;
    c->srv = s;
    tcp->data = c;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    http_conn_peer(c);
    c->deadline = uv_now(s->loop) + s->lim.request_timeout_ms;
    c->tokens = s->lim.rate_burst;
    c->tokens_ms = uv_now(s->loop);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    s->handles++;
    metric_add(http_m_conns, 1);
    if (s->nconns > s->lim.max_conns) {
        /* A flood of idle sockets must not starve the process of fds; the
         * refused socket lingers at most HTTP_LINGER_MS. */
        log_debug("http_conn_refused", "peer=%s conns=%u", c->peer, s->nconns);
        http_conn_reject(c, 503);
        return;
    }
    http_conn_read(c, 1);
}

static void http_server_sweep_cb(uv_timer_t *t)
{
    http_server_t *s = http_server_from(t->data);
    uint64_t now = uv_now(s->loop);
    for (struct http_conn *c = s->conns; c; c = c->next)
        if ((c->state == HTTP_READING || c->state == HTTP_LINGER) && now >= c->deadline) {
            /* Slowloris: part of a request came, the rest did not. An idle
             * keep-alive connection is closed without a word. */
            if (c->state == HTTP_READING && c->req) {
                log_info("http_request_timeout", "peer=%s", c->peer);
                http_conn_reject(c, 408);
            } else {
                if (c->state == HTTP_READING)
                    log_debug("http_idle_close", "peer=%s", c->peer);
                http_conn_close(c);
            }
        }
}

static void http_metrics_register(void)
{
    if (http_m_requests)
        return;
    http_m_requests = metrics_counter("chatd_http_requests_total", "HTTP requests handed to a handler.", NULL);
    http_m_rejects = metrics_counter("chatd_http_rejects_total",
                                     "HTTP requests refused by the server (malformed or over a limit).", NULL);
    http_m_conns = metrics_gauge("chatd_http_connections", "Open connections in the HTTP phase.", NULL);
}

int http_server_init(http_server_t **out, uv_loop_t *loop, const char *host, int port,
                     http_handler_cb cb, void *user)
{
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return UV_EINVAL;
    http_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return UV_ENOMEM;
    http_metrics_register();
    s->magic = HTTP_SERVER_MAGIC;
    s->loop = loop;
    s->cb = cb;
    s->user = user;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->handles = 1;
    int r = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, HTTP_BACKLOG, http_server_on_connection);
    if (r < 0) {
        /* The handle is already known to the loop: free through uv_close. */
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, http_server_handle_closed);
        return r;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    s->accepting = 1;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    http_server_set_limits(s, NULL);
    uv_idle_init(loop, &s->resume);
    s->resume.data = s;
    s->handles += 2;
    *out = s;
    return 0;
}

int http_server_port(const http_server_t *s) { return s->port; }

void http_server_set_limits(http_server_t *s, const struct http_limits *lim)
{
    static const struct http_limits defaults = { 16 * 1024, 8 * 1024, 10000, 4096, 20, 50 };
    s->lim = lim ? *lim : defaults;
    if (!s->lim.max_header)
        s->lim.max_header = defaults.max_header;
    if (s->lim.max_header > http_max_header_limit())
        s->lim.max_header = http_max_header_limit();
    if (!s->lim.max_url || s->lim.max_url > s->lim.max_header)
        s->lim.max_url = s->lim.max_header;
    if (!s->lim.request_timeout_ms)
        s->lim.request_timeout_ms = defaults.request_timeout_ms;
    if (!s->lim.max_conns)
        s->lim.max_conns = defaults.max_conns;
    if (!(s->lim.rate > 0))
        s->lim.rate = defaults.rate;
    if (!(s->lim.rate_burst >= 1))
        s->lim.rate_burst = defaults.rate_burst;
    /* The sweep enforces the timeout: a quarter of it, within [50, 1000] ms. */
    unsigned every = s->lim.request_timeout_ms / 4;
    every = every > 1000 ? 1000 : every < 50 ? 50 : every;
    uv_timer_start(&s->sweep, http_server_sweep_cb, every, every);
}

void http_server_stop_accepting(http_server_t *s)
{
    if (!s->accepting)
        return;
    s->accepting = 0;
    uv_close((uv_handle_t *)&s->listener, http_server_handle_closed);
}

void http_server_close(http_server_t *s)
{
    CHATD_ASSERT(s->magic == HTTP_SERVER_MAGIC && !s->closing);
    http_server_stop_accepting(s);
    s->closing = 1;
    uv_close((uv_handle_t *)&s->sweep, http_server_handle_closed);
    uv_close((uv_handle_t *)&s->resume, http_server_handle_closed);
    for (struct http_conn *c = s->conns; c; c = c->next)
        http_conn_close(c);
}

/* ---- request accessors ---- */

const char *http_req_method(const http_req_t *r) { return http_method_str((enum http_method)r->method); }
const char *http_req_path(const http_req_t *r) { return r->path; }
const char *http_req_peer(const http_req_t *r) { return r->peer; }

int http_req_peer_gone(const http_req_t *r)
{
    CHATD_ASSERT(r != NULL && r->magic == HTTP_REQ_MAGIC);
    if (!http_req_alive(r))
        return 1;
    uv_os_fd_t fd;
    if (uv_fileno((const uv_handle_t *)r->conn->tcp, &fd) != 0)
        return 1;
    char ch;
    ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

const char *http_req_body(const http_req_t *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

const char *http_req_header(const http_req_t *r, const char *name)
{
    const char *p = r->buf + r->headers;
    for (unsigned i = 0; i < r->nheaders; i++) {
        const char *value = p + strlen(p) + 1;
        if (strcasecmp(p, name) == 0)
            return value;
        p = value + strlen(value) + 1;
    }
    return NULL;
}

/* Decodes s[0..len) (%XX and '+') into buf; NULL if it does not fit. */
static const char *http_query_decode(const char *s, size_t len, char *buf, size_t buflen)
{
    size_t o = 0;
    if (buflen == 0)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%' && i + 2 < len && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            ch = (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        }
        if (o + 1 >= buflen)
            return NULL;
        buf[o++] = ch;
    }
    buf[o] = '\0';
    return buf;
}

/* The raw value of parameter name (not decoded), or NULL when absent. */
static const char *http_query_find(const http_req_t *r, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = r->query;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t plen = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t)(eq - p) : plen;
        if (klen == nlen && memcmp(p, name, nlen) == 0) {
            const char *v = eq ? eq + 1 : p + plen;
            *vlen = (size_t)(p + plen - v);
            return v;
        }
        p += plen;
        if (*p == '&')
            p++;
    }
    return NULL;
}

const char *http_req_query(const http_req_t *r, const char *name, char *buf, size_t buflen)
{
    size_t vlen;
    const char *v = http_query_find(r, name, &vlen);
    return v ? http_query_decode(v, vlen, buf, buflen) : NULL;
}

int http_req_query_has(const http_req_t *r, const char *name)
{
    size_t vlen;
    return http_query_find(r, name, &vlen) != NULL;
}

/* ---- finishing a request ---- */

void http_respond(http_req_t *req, int status, const char *content_type, const char *body,
                  size_t len, const char *extra_headers)
{
    CHATD_ASSERT(req != NULL && req->magic == HTTP_REQ_MAGIC);
    struct http_conn *c = req->conn;
    if (c) {
        CHATD_ASSERT(c->req == req);
        c->req = NULL;
        if (c->state == HTTP_DISPATCHED) {
            int keep = req->keep_alive && !c->srv->closing;
            http_conn_send(c, status, content_type, body, len, extra_headers,
                           req->method == HTTP_HEAD, keep, req->http10);
        }
    }
    http_req_free(req);
}

/* JSON string body without a JSON library: escape what JSON requires. */
static size_t http_json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    return o;
}

void http_respond_error(http_req_t *req, int status, const char *code, const char *msg)
{
    char ecode[128], emsg[768], body[1024];
    http_json_escape(ecode, sizeof ecode, code);
    http_json_escape(emsg, sizeof emsg, msg);
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}", ecode, emsg);
    http_respond(req, status, "application/json", body, (size_t)n, NULL);
}

/* ---- upgrade hand-over (http_internal.h) ---- */

int http_req_alive(const http_req_t *r)
{
    CHATD_ASSERT(r != NULL && r->magic == HTTP_REQ_MAGIC);
    return r->conn != NULL && r->conn->state == HTTP_DISPATCHED;
}

uv_tcp_t *http_req_take_socket(http_req_t *req, char **leftover, size_t *leftover_len)
{
    CHATD_ASSERT(http_req_alive(req));
    struct http_conn *c = req->conn;
    CHATD_ASSERT(c->req == req && !c->reading);
    http_server_t *s = c->srv;
    uv_tcp_t *tcp = c->tcp;
    *leftover = c->leftover;
    *leftover_len = c->leftover_len;
    for (struct http_write *w = c->writes; w; w = w->next)
        w->conn = NULL; /* still in libuv's queue; the socket is ws's now */
    http_conn_unlink(c);
    tcp->data = NULL;
    c->magic = 0;
    free(c);
    http_req_free(req);
    /* The socket no longer counts as one of the server's handles. */
    http_server_unref(s);
    return tcp;
}
