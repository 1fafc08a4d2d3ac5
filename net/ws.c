/* ws: see net/ws.h for the contract.
 *
 * A connection is OPEN, CLOSING (a close frame is queued: by ws_conn_close,
 * on a protocol error, or our echo of the peer's close) or
 * CLOSED (uv_close called; on_close runs and the struct is freed in the close
 * callback). In CLOSING, once our close frame is on the wire we send FIN and
 * wait for the peer's close frame or FIN, at most WS_CLOSE_WAIT_MS; input the
 * peer keeps sending meanwhile is drained, so closing never turns into a RST
 * that would destroy the close frame before the peer reads it.
 *
 * Input: net/ws_parser.c parses frames straight from the loop-wide read
 * buffer (http_read_alloc_cb); its state lives in the connection, a few
 * dozen bytes, so an idle connection costs no read buffer at all.
 *
 * Output: every frame for a socket (data by reference, pong/close/ping)
 * goes into one pointer queue. A connection with output sits on the
 * dirty list; a uv_check handle writes each dirty queue with one writev per
 * loop turn, one write in flight per socket. A uv_idle handle runs while the
 * list is non-empty so that output queued from a timer callback does not wait
 * for the poll phase to time out.
 */
#include "net/ws.h"
#include "net/http_internal.h"

#include <limits.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "lib/slab.h"
#include "net/ws_parser.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define WS_CONN_MAGIC 0x57434f4eu
#define WS_FRAME_MAGIC 0x5746524du
#define WS_CLOSE_WAIT_MS 2000
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum ws_state { WS_OPEN, WS_CLOSING, WS_CLOSED };

struct ws_frame {
    unsigned magic;
    unsigned refs;
    size_t len;
    uint8_t data[];
};

/* One writev in flight: holds its frames until libuv is done with them. */
struct ws_write {
    uv_write_t req; /* first member: the callback casts back */
    ws_conn_t *c;
    size_t bytes;
    unsigned n;
    ws_frame_t *frames[];
};

struct ws_conn {
    unsigned magic;
    uint8_t state;
    uint8_t dirty;     /* on ws_g.dirty (outside the flush pass) */
    uint8_t shut;      /* FIN sent */
    uint8_t rd_off;    /* input is drained, not parsed (protocol error, close received) */
    uint8_t close_tx;  /* our close frame is queued */
    uint8_t close_rx;  /* the peer's close frame arrived */
    uint16_t code;     /* on_close code; 0: derive from the close handshake */
    uint16_t tx_code, rx_code; /* of the close frames sent / received */
    uv_tcp_t *tcp;
    const struct ws_callbacks *cb; /* the caller's; must outlive the connection */
    void *user;
    ws_parser_t rx;
    char *pending;     /* bytes that arrived with the upgrade request */
    ws_frame_t **q;
    unsigned qlen, qcap;
    size_t queued;     /* bytes queued or being written */
    struct ws_write *inflight;
    uint64_t last_rx;  /* loop ms */
    /* OPEN: when our unanswered ping went out (0: none); CLOSING: the
     * deadline for the peer's close. One field: never needed together. */
    uint64_t timer_at;
    ws_conn_t *prev, *next, *dirty_next;
    uint8_t peer_addr[16]; /* binary: 30 bytes less per connection than text */
    uint32_t pending_len;
    uint8_t peer_family;
};

/* One per open connection: kept apart from the handshakes' transients. */
SLAB_DEFINE(ws_conns, SLAB_INIT("ws_conn", ws_conn_t));

static struct {
    uv_loop_t *loop;
    struct ws_limits lim;
    uv_check_t flush;
    uv_idle_t wake;
    uv_timer_t sweep;
    ws_frame_t *ping; /* shared by every ping we send */
    ws_conn_t *conns; /* every connection, for the ping sweep */
    ws_conn_t *dirty;
    size_t count;
} ws_g;

static struct {
    metric_t *conns, *frames_in, *frames_out, *bytes_in, *bytes_out, *writes, *cuts, *protocol;
} ws_m;

static void ws_conn_cut(ws_conn_t *c, uint16_t code);

/* Fixed-size blocks from slabs (lib/slab.h). The fan-out path queues to and
 * writes to thousands of sockets per Kafka batch: the slabs' free lists serve
 * the queue arrays and write requests without malloc, and an idle connection
 * holds neither (it gives them back when its queue drains). */
#define WS_QCAP_POOLED 8 /* queue slots of a pooled block */

SLAB_DEFINE(ws_qslab, SLAB_INIT_SIZE("ws_queue", WS_QCAP_POOLED * sizeof(ws_frame_t *)));
SLAB_DEFINE(ws_wslab, SLAB_INIT_SIZE("ws_write", sizeof(struct ws_write) +
                                                      WS_QCAP_POOLED * sizeof(ws_frame_t *)));

static void ws_conn_queue_release(ws_conn_t *c)
{
    if (c->qcap == WS_QCAP_POOLED)
        slab_free(&ws_qslab, c->q);
    else
        free(c->q);
    c->q = NULL;
    c->qcap = 0;
}

static ws_conn_t *ws_conn_from(void *p)
{
    ws_conn_t *c = p;
    CHATD_ASSERT(c != NULL && c->magic == WS_CONN_MAGIC);
    return c;
}

/* ---- pure functions ---- */

size_t ws_frame_header(uint8_t out[10], size_t len, int opcode)
{
    out[0] = (uint8_t)(0x80 | (opcode & 0x0f)); /* FIN: chatd never fragments */
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

int ws_accept_key(const char *client_key, char out[29])
{
    size_t klen = client_key ? strlen(client_key) : 0;
    if (klen == 0 || klen > 64)
        return ERR_BAD_REQUEST;
    char buf[64 + sizeof WS_GUID];
    memcpy(buf, client_key, klen);
    memcpy(buf + klen, WS_GUID, sizeof WS_GUID - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(buf, klen + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return ERR_INTERNAL;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
    return 0;
}

/* ---- frames ---- */

static ws_frame_t *ws_frame_alloc(size_t len)
{
    ws_frame_t *f = malloc(sizeof *f + len);
    if (!f)
        return NULL;
    f->magic = WS_FRAME_MAGIC;
    f->refs = 1;
    f->len = len;
    return f;
}

/* Pre-encoded bytes (the 101 response). */
static ws_frame_t *ws_frame_raw(const void *data, size_t len)
{
    ws_frame_t *f = ws_frame_alloc(len);
    if (f)
        memcpy(f->data, data, len);
    return f;
}

ws_frame_t *ws_frame_text(const char *data, size_t len)
{
    uint8_t hdr[10];
    size_t hlen = ws_frame_header(hdr, len, WS_OP_TEXT);
    ws_frame_t *f = ws_frame_alloc(hlen + len);
    if (!f)
        return NULL;
    memcpy(f->data, hdr, hlen);
    if (len)
        memcpy(f->data + hlen, data, len);
    return f;
}

void ws_frame_ref(ws_frame_t *f)
{
    CHATD_ASSERT(f != NULL && f->magic == WS_FRAME_MAGIC && f->refs > 0);
    f->refs++;
}

void ws_frame_unref(ws_frame_t *f)
{
    if (!f)
        return;
    CHATD_ASSERT(f->magic == WS_FRAME_MAGIC && f->refs > 0);
    if (--f->refs == 0) {
        f->magic = 0;
        free(f);
    }
}

/* ---- output queue ---- */

static void ws_wake_cb(uv_idle_t *h) { (void)h; }

static void ws_conn_mark_dirty(ws_conn_t *c)
{
    if (c->dirty || c->state == WS_CLOSED)
        return;
    c->dirty = 1;
    c->dirty_next = ws_g.dirty;
    ws_g.dirty = c;
    uv_idle_start(&ws_g.wake, ws_wake_cb);
}

static void ws_conn_write(ws_conn_t *c);

/* Bytes the kernel has not taken yet: frames not handed to libuv, plus what
 * libuv still holds of the write in flight. */
static size_t ws_conn_backlog(const ws_conn_t *c)
{
    size_t handed = c->inflight ? c->inflight->bytes : 0;
    return c->queued - handed + c->tcp->write_queue_size;
}

/* The bound is on the backlog, not on what one loop turn queued: a burst
 * (a Kafka batch fanned out, a history page) first goes to the kernel, and
 * only a reader whose backlog stays past the bound is cut. A frame into an
 * empty backlog is taken if it is within the bound itself. */
static int ws_conn_over_bound(ws_conn_t *c, size_t len)
{
    if (c->queued + len <= ws_g.lim.max_queue_bytes)
        return 0;
    if (c->qlen && !c->inflight)
        ws_conn_write(c); /* writes what the socket takes now */
    if (c->state == WS_CLOSED)
        return 1;
    size_t backlog = ws_conn_backlog(c);
    return backlog > 0 && backlog + len > ws_g.lim.max_queue_bytes;
}

/* Takes over one reference to f. A reader that stops reading is cut here,
 * at the moment its backlog passes the bound. A frame larger than the bound
 * by itself is refused, the connection left alone: its sender must page
 * (issue 16: a 24 MB sync page used to be queued whole). */
static int ws_conn_enqueue(ws_conn_t *c, ws_frame_t *f)
{
    if (f->len > ws_g.lim.max_queue_bytes) {
        log_warn("ws_frame_too_large", "peer=%s bytes=%zu limit=%zu", ws_conn_peer(c), f->len,
                 ws_g.lim.max_queue_bytes);
        ws_frame_unref(f);
        return ERR_TOO_LARGE;
    }
    if (ws_conn_over_bound(c, f->len)) {
        ws_frame_unref(f);
        if (c->state != WS_CLOSED) {
            log_warn("ws_slow_consumer", "peer=%s backlog=%zu limit=%zu", ws_conn_peer(c),
                     ws_conn_backlog(c), ws_g.lim.max_queue_bytes);
            metric_inc(ws_m.cuts);
            ws_conn_cut(c, 1008);
        }
        return ERR_TOO_LARGE;
    }
    if (c->qlen == c->qcap) {
        unsigned cap = c->qcap ? c->qcap * 2 : WS_QCAP_POOLED;
        ws_frame_t **q;
        if (cap == WS_QCAP_POOLED) {
            q = slab_alloc(&ws_qslab);
        } else if (c->qcap == WS_QCAP_POOLED) { /* a pooled block does not realloc */
            if ((q = malloc(cap * sizeof *q))) {
                memcpy(q, c->q, c->qlen * sizeof *q);
                slab_free(&ws_qslab, c->q);
            }
        } else {
            q = realloc(c->q, cap * sizeof *q);
        }
        if (!q) {
            ws_frame_unref(f);
            ws_conn_cut(c, 1011);
            return ERR_NOMEM;
        }
        c->q = q;
        c->qcap = cap;
    }
    c->q[c->qlen++] = f;
    c->queued += f->len;
    ws_conn_mark_dirty(c);
    return 0;
}

static void ws_write_free(struct ws_write *w)
{
    for (unsigned i = 0; i < w->n; i++)
        ws_frame_unref(w->frames[i]);
    if (w->n <= WS_QCAP_POOLED)
        slab_free(&ws_wslab, w);
    else
        free(w);
}

static void ws_conn_maybe_finish(ws_conn_t *c);

static void ws_write_cb(uv_write_t *req, int status)
{
    struct ws_write *w = (struct ws_write *)req;
    ws_conn_t *c = ws_conn_from(w->c);
    c->inflight = NULL;
    c->queued -= w->bytes;
    if (status == 0)
        metric_add(ws_m.bytes_out, (double)w->bytes);
    ws_write_free(w);
    if (status < 0) { /* UV_ECANCELED after a cut: nothing left to do */
        ws_conn_cut(c, 0);
        return;
    }
    if (c->qlen)
        ws_conn_mark_dirty(c);
    ws_conn_maybe_finish(c);
}

/* Drops the first k queued frames (written). */
static void ws_conn_queue_shift(ws_conn_t *c, unsigned k)
{
    c->qlen -= k;
    if (c->qlen)
        memmove(c->q, c->q + k, c->qlen * sizeof c->q[0]);
    else
        ws_conn_queue_release(c);
}

/* Writes what the socket takes right now, without a write request; returns
 * the bytes written or a libuv error. The fan-out profile (tests/perf/
 * fanout_profile.py) showed libuv's request path costing more per delivery
 * than chatd's own code: a completion callback on the next turn and an
 * epoll_ctl re-arming the fd after every write. A socket with room, the
 * usual case, now takes a loop turn's frames in one writev and nothing else. */
static int ws_conn_write_now(ws_conn_t *c, uv_buf_t *bufs, unsigned *n)
{
    if (c->tcp->write_queue_size)
        return 0; /* libuv still holds bytes: keep the order */
    int r = uv_try_write((uv_stream_t *)c->tcp, bufs, *n);
    if (r == UV_EAGAIN)
        return 0;
    if (r <= 0)
        return r;
    metric_add(ws_m.bytes_out, (double)r);
    metric_inc(ws_m.writes);
    c->queued -= (size_t)r;
    size_t off = (size_t)r;
    unsigned k = 0;
    while (k < *n && off >= bufs[k].len) {
        off -= bufs[k].len;
        ws_frame_unref(c->q[k++]);
    }
    ws_conn_queue_shift(c, k);
    *n -= k;
    memmove(bufs, bufs + k, *n * sizeof bufs[0]);
    if (*n) { /* the socket is full partway through a frame */
        bufs[0].base += off;
        bufs[0].len -= off;
    }
    return r;
}

/* One writev with up to IOV_MAX queued frames: directly if the socket takes
 * them all, else what is left through a libuv write request. */
static void ws_conn_write(ws_conn_t *c)
{
    static uv_buf_t bufs[IOV_MAX]; /* uv_write copies them */
    if (c->state == WS_CLOSED || c->inflight || c->qlen == 0)
        return;
    unsigned n = c->qlen < IOV_MAX ? c->qlen : IOV_MAX;
    for (unsigned i = 0; i < n; i++)
        bufs[i] = uv_buf_init((char *)c->q[i]->data, (unsigned)c->q[i]->len);
    int r = ws_conn_write_now(c, bufs, &n);
    if (r < 0) {
        log_debug("ws_write_failed", "peer=%s err=%s", ws_conn_peer(c), uv_err_name(r));
        ws_conn_cut(c, 0);
        return;
    }
    if (n == 0) {
        if (c->qlen) /* more than IOV_MAX frames: the rest next turn */
            ws_conn_mark_dirty(c);
        return;
    }
    struct ws_write *w = n <= WS_QCAP_POOLED ? slab_alloc(&ws_wslab)
                                             : malloc(sizeof *w + n * sizeof w->frames[0]);
    if (!w) {
        ws_conn_cut(c, 1011);
        return;
    }
    w->c = c;
    w->n = n;
    w->bytes = 0;
    for (unsigned i = 0; i < n; i++) {
        w->frames[i] = c->q[i];
        w->bytes += bufs[i].len;
    }
    ws_conn_queue_shift(c, n);
    r = uv_write(&w->req, (uv_stream_t *)c->tcp, bufs, n, ws_write_cb);
    if (r < 0) {
        c->queued -= w->bytes;
        ws_write_free(w);
        log_debug("ws_write_failed", "peer=%s err=%s", ws_conn_peer(c), uv_err_name(r));
        ws_conn_cut(c, 0);
        return;
    }
    c->inflight = w;
    metric_inc(ws_m.writes);
}

/* ---- control frames, input ---- */

/* A server control frame (unmasked): ping, pong, close. */
static int ws_conn_queue_control(ws_conn_t *c, int opcode, const void *data, size_t len)
{
    uint8_t hdr[10];
    size_t hlen = ws_frame_header(hdr, len, opcode);
    ws_frame_t *f = ws_frame_alloc(hlen + len);
    if (!f) {
        ws_conn_cut(c, 1011);
        return ERR_NOMEM;
    }
    memcpy(f->data, hdr, hlen);
    if (len)
        memcpy(f->data + hlen, data, len);
    return ws_conn_enqueue(c, f);
}

/* Queues our close frame (once). code 1005 means "no code": empty payload. */
static void ws_conn_queue_close(ws_conn_t *c, uint16_t code, const char *reason, size_t rlen)
{
    if (c->close_tx || c->state == WS_CLOSED)
        return;
    uint8_t body[125];
    size_t n = 0;
    if (code != 1005) {
        if (rlen > 123) /* control frame payload limit; cut on a UTF-8 boundary */
            for (rlen = 123; rlen > 0 && ((unsigned char)reason[rlen] & 0xc0) == 0x80;)
                rlen--;
        body[0] = (uint8_t)(code >> 8);
        body[1] = (uint8_t)code;
        if (rlen)
            memcpy(body + 2, reason, rlen);
        n = 2 + rlen;
    }
    c->close_tx = 1;
    c->tx_code = code;
    ws_conn_queue_control(c, WS_OP_CLOSE, body, n);
}

static void ws_conn_enter_closing(ws_conn_t *c, uint16_t code)
{
    if (c->state != WS_OPEN)
        return;
    c->state = WS_CLOSING;
    if (!c->code)
        c->code = code;
    c->timer_at = uv_now(ws_g.loop) + WS_CLOSE_WAIT_MS;
    ws_conn_mark_dirty(c);
}

/* The peer broke the protocol: close with code, read nothing more. */
static void ws_conn_protocol_close(ws_conn_t *c, uint16_t code, const char *reason)
{
    c->rd_off = 1;
    if (c->state != WS_OPEN)
        return;
    log_info("ws_protocol_close", "peer=%s code=%u reason=%s", ws_conn_peer(c), code, log_q(reason, strlen(reason)));
    metric_inc(ws_m.protocol);
    ws_conn_queue_close(c, code, reason, strlen(reason));
    ws_conn_enter_closing(c, code);
}

static const char *ws_close_reason(int code)
{
    switch (code) {
    case 1007: return "invalid utf-8";
    case 1009: return "message too big";
    case 1011: return "out of memory";
    default: return "protocol error";
    }
}

/* One message or control frame from the parser. Non-zero stops the parse. */
static int ws_conn_on_frame(void *user, int opcode, uint8_t *data, size_t len)
{
    ws_conn_t *c = ws_conn_from(user);
    metric_inc(ws_m.frames_in);
    switch (opcode) {
    case WS_OP_TEXT:
        if (c->state == WS_OPEN)
            c->cb->on_text(c, (const char *)data, len, c->user);
        break;
    case WS_OP_BINARY:
        ws_conn_protocol_close(c, 1003, "binary frames are not supported");
        return -1;
    case WS_OP_PING: /* answered in turn: ahead of the replies to later frames */
        if (c->state == WS_OPEN)
            ws_conn_queue_control(c, WS_OP_PONG, data, len);
        break;
    case WS_OP_CLOSE:
        c->close_rx = 1;
        c->rx_code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 1005;
        c->rd_off = 1;
        /* Echo the peer's code and reason (RFC 6455 5.5.1) unless ours is
         * out already. */
        ws_conn_queue_close(c, c->rx_code, len > 2 ? (const char *)data + 2 : NULL, len > 2 ? len - 2 : 0);
        ws_conn_enter_closing(c, 0);
        return -1;
    default: /* pong: the read itself counted as liveness */
        break;
    }
    return c->state == WS_CLOSED ? -1 : 0;
}

/* ---- input ---- */

static void ws_conn_feed(ws_conn_t *c, uint8_t *data, size_t len)
{
    c->last_rx = uv_now(ws_g.loop);
    if (c->state == WS_OPEN)
        c->timer_at = 0; /* any frame answers our ping */
    metric_add(ws_m.bytes_in, (double)len);
    if (c->state == WS_CLOSED || c->rd_off)
        return; /* closing after a protocol error or the peer's close: drain */
    int r = ws_parser_feed(&c->rx, data, len, ws_conn_on_frame, c);
    if (r > 0)
        ws_conn_protocol_close(c, (uint16_t)r, ws_close_reason(r));
    if (c->rd_off)
        ws_parser_free(&c->rx); /* no more input will be parsed */
    ws_conn_maybe_finish(c);
}

static void ws_conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    ws_conn_t *c = ws_conn_from(st->data);
    if (nread < 0) {
        if (c->state == WS_OPEN)
            log_debug("ws_peer_gone", "peer=%s err=%s", ws_conn_peer(c), uv_err_name((int)nread));
        ws_conn_cut(c, 0);
        return;
    }
    if (nread > 0)
        ws_conn_feed(c, (uint8_t *)buf->base, (size_t)nread);
}

static void ws_conn_read_start(ws_conn_t *c)
{
    if (c->state == WS_CLOSED)
        return;
    int r = uv_read_start((uv_stream_t *)c->tcp, http_read_alloc_cb, ws_conn_read_cb);
    if (r < 0) {
        log_warn("ws_read_failed", "peer=%s err=%s", ws_conn_peer(c), uv_err_name(r));
        ws_conn_cut(c, 0);
    }
}

/* ---- closing ---- */

static uint16_t ws_conn_final_code(ws_conn_t *c)
{
    if (c->code)
        return c->code;
    if (c->close_rx)
        return c->rx_code;
    if (c->close_tx)
        return c->tx_code;
    return 1006; /* gone without a close frame */
}

static void ws_conn_close_cb(uv_handle_t *h)
{
    ws_conn_t *c = ws_conn_from(h->data);
    uint16_t code = ws_conn_final_code(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        ws_g.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->dirty) {
        ws_conn_t **pp = &ws_g.dirty;
        while (*pp != c)
            pp = &(*pp)->dirty_next;
        *pp = c->dirty_next;
    }
    ws_g.count--;
    metric_set(ws_m.conns, (double)ws_g.count);
    log_debug("ws_close", "peer=%s code=%u", ws_conn_peer(c), code);
    c->cb->on_close(c, code, c->user);
    for (unsigned i = 0; i < c->qlen; i++)
        ws_frame_unref(c->q[i]);
    if (c->q)
        ws_conn_queue_release(c);
    free(c->pending);
    ws_parser_free(&c->rx);
    http_socket_free((uv_tcp_t *)h);
    c->magic = 0;
    slab_free(&ws_conns, c);
}

/* Closes the socket now; queued output is dropped. code 0: derive it from
 * the close handshake (1006 when there was none). */
static void ws_conn_cut(ws_conn_t *c, uint16_t code)
{
    if (c->state == WS_CLOSED)
        return;
    if (!c->code)
        c->code = code;
    c->state = WS_CLOSED;
    uv_close((uv_handle_t *)c->tcp, ws_conn_close_cb);
}

static void ws_shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Our close frame is written: close at once if the peer's is in too,
 * otherwise send FIN and wait (read_cb sees its close frame or EOF). */
static void ws_conn_maybe_finish(ws_conn_t *c)
{
    if (c->state != WS_CLOSING || c->qlen || c->inflight || !c->close_tx)
        return;
    if (c->close_rx) {
        ws_conn_cut(c, 0);
        return;
    }
    if (c->shut)
        return;
    c->shut = 1;
    uv_shutdown_t *sr = malloc(sizeof *sr);
    if (!sr || uv_shutdown(sr, (uv_stream_t *)c->tcp, ws_shutdown_cb) < 0) {
        free(sr);
        ws_conn_cut(c, 0);
    }
}

void ws_conn_close(ws_conn_t *c, uint16_t code, const char *reason)
{
    ws_conn_from(c);
    if (c->state != WS_OPEN)
        return;
    ws_conn_queue_close(c, code, reason, reason ? strlen(reason) : 0);
    ws_conn_enter_closing(c, code);
}

/* ---- the loop-turn flush and the sweep ---- */

static void ws_flush_cb(uv_check_t *h)
{
    (void)h;
    ws_conn_t *list = ws_g.dirty;
    ws_g.dirty = NULL;
    while (list) {
        ws_conn_t *c = list;
        list = c->dirty_next;
        c->dirty_next = NULL;
        if (c->state != WS_CLOSED && c->pending) {
            /* Bytes that came with the upgrade request, then the socket. */
            char *p = c->pending;
            c->pending = NULL;
            ws_conn_feed(c, (uint8_t *)p, c->pending_len);
            free(p);
            ws_conn_read_start(c);
        }
        /* Still flagged until here, so frames queued above did not re-list c. */
        c->dirty = 0;
        ws_conn_write(c);
        ws_conn_maybe_finish(c);
    }
    if (!ws_g.dirty)
        uv_idle_stop(&ws_g.wake);
}

static void ws_sweep_cb(uv_timer_t *t)
{
    (void)t;
    uint64_t now = uv_now(ws_g.loop);
    for (ws_conn_t *c = ws_g.conns; c; c = c->next) {
        if (c->state == WS_CLOSING && now >= c->timer_at) {
            ws_conn_cut(c, 0);
        } else if (c->state != WS_OPEN) {
            continue;
        } else if (c->timer_at) {
            if (now - c->timer_at >= ws_g.lim.pong_timeout_ms) {
                log_info("ws_pong_timeout", "peer=%s", ws_conn_peer(c));
                ws_conn_close(c, 1001, "ping timeout");
            }
        } else if (now - c->last_rx >= ws_g.lim.ping_interval_ms) {
            ws_frame_ref(ws_g.ping);
            if (ws_conn_enqueue(c, ws_g.ping) == 0)
                c->timer_at = now;
        }
    }
}

static void ws_metrics_register(void)
{
    if (ws_m.conns) /* once per process: series live until metrics_free() */
        return;
    ws_m.conns = metrics_gauge("chatd_ws_connections", "Open WebSocket connections.", NULL);
    ws_m.frames_in = metrics_counter("chatd_ws_frames_in_total", "WebSocket messages received.", NULL);
    ws_m.frames_out = metrics_counter("chatd_ws_frames_out_total", "WebSocket data frames queued.", NULL);
    ws_m.bytes_in = metrics_counter("chatd_ws_bytes_in_total", "Bytes read from WebSocket clients.", NULL);
    ws_m.bytes_out = metrics_counter("chatd_ws_bytes_out_total", "Bytes written to WebSocket clients.", NULL);
    ws_m.writes = metrics_counter("chatd_ws_writes_total", "Socket writes (one writev per socket per loop turn).", NULL);
    ws_m.cuts = metrics_counter("chatd_ws_slow_consumer_cuts_total",
                                "Connections cut because their output queue passed its bound.", NULL);
    ws_m.protocol = metrics_counter("chatd_ws_protocol_closes_total",
                                    "Connections closed by the server for a protocol violation.", NULL);
}

int ws_init(uv_loop_t *loop, const struct ws_limits *limits)
{
    CHATD_ASSERT(ws_g.loop == NULL);
    static const struct ws_limits defaults = { 65536, 1u << 20, 25000, 10000 };
    ws_g.lim = limits ? *limits : defaults;
    if (!ws_g.lim.max_msg)
        ws_g.lim.max_msg = defaults.max_msg;
    if (!ws_g.lim.max_queue_bytes)
        ws_g.lim.max_queue_bytes = defaults.max_queue_bytes;
    if (!ws_g.lim.ping_interval_ms)
        ws_g.lim.ping_interval_ms = defaults.ping_interval_ms;
    if (!ws_g.lim.pong_timeout_ms)
        ws_g.lim.pong_timeout_ms = defaults.pong_timeout_ms;
    ws_metrics_register();
    static const uint8_t ping[2] = { 0x80 | WS_OP_PING, 0 };
    if (!(ws_g.ping = ws_frame_raw(ping, sizeof ping)))
        return ERR_NOMEM;
    ws_g.loop = loop;
    /* Housekeeping handles do not keep the loop alive by themselves. */
    uv_check_init(loop, &ws_g.flush);
    uv_check_start(&ws_g.flush, ws_flush_cb);
    uv_unref((uv_handle_t *)&ws_g.flush);
    uv_idle_init(loop, &ws_g.wake);
    uv_unref((uv_handle_t *)&ws_g.wake);
    uv_timer_init(loop, &ws_g.sweep);
    unsigned every = ws_g.lim.ping_interval_ms / 4;
    every = every > 1000 ? 1000 : every < 10 ? 10 : every;
    uv_timer_start(&ws_g.sweep, ws_sweep_cb, every, every);
    uv_unref((uv_handle_t *)&ws_g.sweep);
    return 0;
}

void ws_shutdown(void)
{
    if (!ws_g.loop)
        return;
    for (ws_conn_t *c = ws_g.conns; c; c = c->next)
        ws_conn_cut(c, 1001);
    uv_close((uv_handle_t *)&ws_g.flush, NULL);
    uv_close((uv_handle_t *)&ws_g.wake, NULL);
    uv_close((uv_handle_t *)&ws_g.sweep, NULL);
    ws_frame_unref(ws_g.ping); /* queues still holding it keep their references */
    ws_g.ping = NULL;
    ws_g.loop = NULL;
}

/* ---- accept ---- */

/* 1 if the comma-separated header value holds token (case-insensitive). */
static int ws_header_has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    for (const char *p = value; p && *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && (p[m - 1] == ' ' || p[m - 1] == '\t'))
            m--;
        if (m == tlen && strncasecmp(p, token, tlen) == 0)
            return 1;
        p += n;
    }
    return 0;
}

/* A key is 16 random bytes in base64: 22 characters and "==". */
static int ws_key_valid(const char *k)
{
    if (!k || strlen(k) != 24 || strcmp(k + 22, "==") != 0)
        return 0;
    for (int i = 0; i < 22; i++)
        if (!(k[i] >= 'A' && k[i] <= 'Z') && !(k[i] >= 'a' && k[i] <= 'z') &&
            !(k[i] >= '0' && k[i] <= '9') && k[i] != '+' && k[i] != '/')
            return 0;
    return 1;
}

/* Returns 0 (accept filled) or the HTTP status to refuse with. */
static int ws_handshake_check(http_req_t *req, char accept[29])
{
    const char *version = http_req_header(req, "Sec-WebSocket-Version");
    if (strcmp(http_req_method(req), "GET") != 0 ||
        !ws_header_has_token(http_req_header(req, "Upgrade"), "websocket") ||
        !ws_header_has_token(http_req_header(req, "Connection"), "upgrade") ||
        !ws_key_valid(http_req_header(req, "Sec-WebSocket-Key")))
        return 400;
    if (!version || strcmp(version, "13") != 0)
        return 426;
    return ws_accept_key(http_req_header(req, "Sec-WebSocket-Key"), accept) == 0 ? 0 : 400;
}

ws_conn_t *ws_accept(http_req_t *req, const char *hello, size_t hello_len,
                     const struct ws_callbacks *cb, void *user)
{
    CHATD_ASSERT(ws_g.loop != NULL && cb && cb->on_text && cb->on_close);
    if (!http_req_alive(req)) { /* the peer left while the handler worked */
        http_respond(req, 400, NULL, "", 0, NULL);
        return NULL;
    }
    char key[29];
    int status = ws_handshake_check(req, key);
    if (status == 426) {
        static const char msg[] = "WebSocket version 13 required\n";
        http_respond(req, 426, "text/plain; charset=utf-8", msg, sizeof msg - 1,
                     "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n");
        return NULL;
    }
    if (status) {
        http_respond_error(req, 400, "bad_request", "invalid websocket handshake");
        return NULL;
    }
    ws_conn_t *c = slab_alloc(&ws_conns);
    if (!c) {
        http_respond_error(req, 503, "unavailable", "out of memory, try again");
        return NULL;
    }
    c->rx.max_msg = (uint32_t)ws_g.lim.max_msg;
    c->magic = WS_CONN_MAGIC;
    c->cb = cb;
    c->user = user;
    const char *peer = http_req_peer(req);
    if (uv_inet_pton(AF_INET, peer, c->peer_addr) == 0)
        c->peer_family = AF_INET;
    else if (uv_inet_pton(AF_INET6, peer, c->peer_addr) == 0)
        c->peer_family = AF_INET6;
    size_t pending_len = 0; /* at most one read: the loop-wide buffer's 64 KiB */
    c->tcp = http_req_take_socket(req, &c->pending, &pending_len); /* req is gone now */
    c->pending_len = (uint32_t)pending_len;
    c->tcp->data = c;
    c->last_rx = uv_now(ws_g.loop);
    c->next = ws_g.conns;
    if (ws_g.conns)
        ws_g.conns->prev = c;
    ws_g.conns = c;
    ws_g.count++;
    metric_set(ws_m.conns, (double)ws_g.count);

    char resp[160];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", key);
    ws_frame_t *f = ws_frame_raw(resp, (size_t)n);
    if (!f)
        ws_conn_cut(c, 1011);
    else if (ws_conn_enqueue(c, f) == 0 && hello)
        ws_conn_send_text(c, hello, hello_len);
    /* Pending bytes are fed at the end of this loop turn, not here: on_text
     * must not run inside ws_accept(). Reading starts after them. */
    if (c->pending)
        ws_conn_mark_dirty(c);
    else
        ws_conn_read_start(c);
    return c;
}

/* ---- sending, accessors ---- */

int ws_conn_send(ws_conn_t *c, ws_frame_t *f)
{
    ws_conn_from(c);
    if (c->state != WS_OPEN)
        return ERR_UNAVAILABLE;
    ws_frame_ref(f);
    metric_inc(ws_m.frames_out);
    return ws_conn_enqueue(c, f);
}

int ws_conn_send_text(ws_conn_t *c, const char *data, size_t len)
{
    ws_conn_from(c);
    if (c->state != WS_OPEN)
        return ERR_UNAVAILABLE;
    ws_frame_t *f = ws_frame_text(data, len);
    if (!f)
        return ERR_NOMEM;
    metric_inc(ws_m.frames_out);
    return ws_conn_enqueue(c, f);
}

void *ws_conn_user(const ws_conn_t *c) { return c->user; }
void ws_conn_set_user(ws_conn_t *c, void *user) { ws_conn_from(c)->user = user; }
const char *ws_conn_peer(const ws_conn_t *c)
{
    static char buf[INET6_ADDRSTRLEN];
    if (!c->peer_family || uv_inet_ntop(c->peer_family, c->peer_addr, buf, sizeof buf) != 0)
        return "?";
    return buf;
}
size_t ws_conn_queued_bytes(const ws_conn_t *c) { return c->queued; }
size_t ws_conn_count(void) { return ws_g.count; }
