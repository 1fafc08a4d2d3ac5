/* ws: see net/ws.h for the contract.
 *
 * A connection is OPEN, CLOSING (a close frame is queued: by ws_conn_close,
 * by wslay on a protocol error, or wslay's echo of the peer's close) or
 * CLOSED (uv_close called; on_close runs and the struct is freed in the close
 * callback). In CLOSING, once our close frame is on the wire we send FIN and
 * wait for the peer's close frame or FIN, at most WS_CLOSE_WAIT_MS; input the
 * peer keeps sending meanwhile is drained, so closing never turns into a RST
 * that would destroy the close frame before the peer reads it.
 *
 * Output: every frame for a socket (ours, by reference; wslay's pong/close,
 * copied) goes into one pointer queue. A connection with output sits on the
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
#include <wslay/wslay.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"

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
    uint8_t own_close; /* our 1002 close frame replaced wslay's (ws_conn_fail_1002) */
    uint16_t code;     /* on_close code; 0: derive from the close handshake */
    uv_tcp_t *tcp;
    wslay_event_context_ptr wslay;
    struct ws_callbacks cb;
    void *user;
    const uint8_t *in; /* bytes wslay's recv_callback pulls from, during a read */
    size_t in_len;
    char *pending;     /* bytes that arrived with the upgrade request */
    size_t pending_len;
    ws_frame_t **q;
    unsigned qlen, qcap;
    size_t queued;     /* bytes queued or being written */
    struct ws_write *inflight;
    uint64_t last_rx, ping_at, deadline; /* loop ms */
    ws_conn_t *prev, *next, *dirty_next;
    char peer[INET6_ADDRSTRLEN];
};

static struct {
    uv_loop_t *loop;
    struct ws_limits lim;
    uv_check_t flush;
    uv_idle_t wake;
    uv_timer_t sweep;
    ws_conn_t *conns; /* every connection, for the ping sweep */
    ws_conn_t *dirty;
    size_t count;
} ws_g;

static struct {
    metric_t *conns, *frames_in, *frames_out, *bytes_in, *bytes_out, *writes, *cuts, *protocol;
} ws_m;

static void ws_conn_cut(ws_conn_t *c, uint16_t code);

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

int ws_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* Chat text is mostly ASCII: skip it eight bytes at a time. */
        uint64_t w;
        if (len - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ull) == 0)) {
            i += 8;
            continue;
        }
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((b & 0xe0) == 0xc0) {
            n = 1, cp = b & 0x1fu, min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            n = 2, cp = b & 0x0fu, min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            n = 3, cp = b & 0x07u, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i - 1 < n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
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

/* Pre-encoded bytes (the 101 response, wslay's control frames). */
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
    size_t hlen = ws_frame_header(hdr, len, WSLAY_TEXT_FRAME);
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
 * (a Kafka batch fanned out, a long history page) first goes to the kernel,
 * and only a reader whose backlog stays past the bound is cut. A frame into
 * an empty backlog is always taken, however large. */
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
 * at the moment its backlog passes the bound. */
static int ws_conn_enqueue(ws_conn_t *c, ws_frame_t *f)
{
    if (ws_conn_over_bound(c, f->len)) {
        ws_frame_unref(f);
        if (c->state != WS_CLOSED) {
            log_warn("ws_slow_consumer", "peer=%s backlog=%zu limit=%zu", c->peer,
                     ws_conn_backlog(c), ws_g.lim.max_queue_bytes);
            metric_inc(ws_m.cuts);
            ws_conn_cut(c, 1008);
        }
        return ERR_TOO_LARGE;
    }
    if (c->qlen == c->qcap) {
        unsigned cap = c->qcap ? c->qcap * 2 : 8;
        ws_frame_t **q = realloc(c->q, cap * sizeof *q);
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

/* One writev with up to IOV_MAX queued frames. */
static void ws_conn_write(ws_conn_t *c)
{
    static uv_buf_t bufs[IOV_MAX]; /* uv_write copies them */
    if (c->state == WS_CLOSED || c->inflight || c->qlen == 0)
        return;
    unsigned n = c->qlen < IOV_MAX ? c->qlen : IOV_MAX;
    struct ws_write *w = malloc(sizeof *w + n * sizeof w->frames[0]);
    if (!w) {
        ws_conn_cut(c, 1011);
        return;
    }
    w->c = c;
    w->n = n;
    w->bytes = 0;
    for (unsigned i = 0; i < n; i++) {
        w->frames[i] = c->q[i];
        bufs[i] = uv_buf_init((char *)c->q[i]->data, (unsigned)c->q[i]->len);
        w->bytes += c->q[i]->len;
    }
    c->qlen -= n;
    memmove(c->q, c->q + n, c->qlen * sizeof c->q[0]);
    int r = uv_write(&w->req, (uv_stream_t *)c->tcp, bufs, n, ws_write_cb);
    if (r < 0) {
        c->queued -= w->bytes;
        ws_write_free(w);
        log_debug("ws_write_failed", "peer=%s err=%s", c->peer, uv_err_name(r));
        ws_conn_cut(c, 0);
        return;
    }
    c->inflight = w;
    metric_inc(ws_m.writes);
}

/* ---- wslay glue ---- */

static ssize_t ws_wslay_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *user)
{
    ws_conn_t *c = ws_conn_from(user);
    (void)flags;
    if (c->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->in_len ? len : c->in_len;
    memcpy(buf, c->in, n);
    c->in += n;
    c->in_len -= n;
    return (ssize_t)n;
}

/* wslay's own frames (pong, close) join the queue behind ours, whole. */
static ssize_t ws_wslay_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *user)
{
    ws_conn_t *c = ws_conn_from(user);
    (void)flags;
    ws_frame_t *f = ws_frame_raw(data, len);
    if (!f || ws_conn_enqueue(c, f) != 0) {
        if (!f)
            ws_conn_cut(c, 1011);
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_conn_enter_closing(ws_conn_t *c, uint16_t code)
{
    if (c->state != WS_OPEN)
        return;
    c->state = WS_CLOSING;
    if (!c->code)
        c->code = code;
    c->deadline = uv_now(ws_g.loop) + WS_CLOSE_WAIT_MS;
    ws_conn_mark_dirty(c);
}

/* The peer broke the protocol: close with code, read nothing more. */
static void ws_conn_protocol_close(ws_conn_t *c, uint16_t code, const char *reason)
{
    if (c->state != WS_OPEN)
        return;
    log_info("ws_protocol_close", "peer=%s code=%u reason=%s", c->peer, code, log_q(reason, strlen(reason)));
    metric_inc(ws_m.protocol);
    wslay_event_queue_close(c->wslay, code, (const uint8_t *)reason, strlen(reason));
    wslay_event_shutdown_read(c->wslay);
    ws_conn_enter_closing(c, code);
}

/* wslay answers some protocol errors with a close frame that has no status
 * code: frame-level ones (a control frame over 125 bytes or fragmented, a
 * 64-bit length with its top bit set, a non-minimal length), for which
 * wslay_event_recv returns WSLAY_ERR_CALLBACK_FAILURE, and a close frame
 * with a 1-byte body, which it takes as "no status". RFC 6455 (5.5.1, 7.4.1)
 * wants 1002: wslay's frame is dropped (its output shut) and ours queued. */
static void ws_conn_fail_1002(ws_conn_t *c, const char *why)
{
    static const uint8_t close_1002[] = { 0x88, 0x02, 0x03, 0xea };
    if (c->state != WS_OPEN)
        return;
    log_info("ws_protocol_close", "peer=%s code=1002 reason=%s", c->peer, why);
    metric_inc(ws_m.protocol);
    wslay_event_shutdown_read(c->wslay);
    wslay_event_shutdown_write(c->wslay);
    c->own_close = 1;
    ws_frame_t *f = ws_frame_raw(close_1002, sizeof close_1002);
    if (!f) {
        ws_conn_cut(c, 1002);
        return;
    }
    if (ws_conn_enqueue(c, f) == 0)
        ws_conn_enter_closing(c, 1002);
}

static void ws_wslay_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                            void *user)
{
    ws_conn_t *c = ws_conn_from(user);
    metric_inc(ws_m.frames_in);
    if (arg->opcode == WSLAY_PING) {
        /* wslay queued the pong; move it now so it goes ahead of the data
         * frames the rest of this read produces. */
        if (wslay_event_send(ctx) != 0)
            ws_conn_cut(c, 1011);
    } else if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->msg_length == 1) {
        ws_conn_fail_1002(c, "close-frame-body-of-1-byte");
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        ws_conn_protocol_close(c, 1003, "binary frames are not supported");
    } else if (arg->opcode == WSLAY_TEXT_FRAME && c->state == WS_OPEN) {
        /* wslay checks UTF-8 too; this guards on_text against any wslay build. */
        if (!ws_utf8_valid(arg->msg, arg->msg_length))
            ws_conn_protocol_close(c, 1007, "invalid utf-8");
        else
            c->cb.on_text(c, arg->msg ? (const char *)arg->msg : "", arg->msg_length, c->user);
    }
    /* Close: wslay queued the echo. Pong: the read itself counted as
     * liveness. */
}

static const struct wslay_event_callbacks ws_wslay_callbacks = {
    .recv_callback = ws_wslay_recv,
    .send_callback = ws_wslay_send,
    .on_msg_recv_callback = ws_wslay_on_msg,
};

/* Moves wslay's pending output (pong, close) into our queue. */
static void ws_conn_pump(ws_conn_t *c)
{
    if (c->state != WS_CLOSED && wslay_event_want_write(c->wslay) && wslay_event_send(c->wslay) != 0)
        ws_conn_cut(c, 1011);
}

/* ---- input ---- */

static void ws_conn_feed(ws_conn_t *c, const uint8_t *data, size_t len)
{
    c->last_rx = uv_now(ws_g.loop);
    c->ping_at = 0;
    metric_add(ws_m.bytes_in, (double)len);
    if (c->state == WS_CLOSED || !wslay_event_get_read_enabled(c->wslay))
        return; /* closing after a protocol error: drain */
    c->in = data;
    c->in_len = len;
    int r = wslay_event_recv(c->wslay);
    c->in = NULL;
    c->in_len = 0;
    if (r == WSLAY_ERR_CALLBACK_FAILURE && c->state == WS_OPEN) {
        /* Our recv callback never fails (it only says "would block"), so
         * this is wslay's frame-level protocol error. */
        ws_conn_fail_1002(c, "bad-frame-header");
    } else if (r != 0) {
        log_warn("ws_recv_failed", "peer=%s err=%d", c->peer, r);
        ws_conn_cut(c, 1011);
        return;
    }
    /* wslay stops reading when it queued a close: the peer's close echoed, or
     * a protocol error (1002, 1007, 1009) it found itself. */
    if (c->state == WS_OPEN && !wslay_event_get_read_enabled(c->wslay))
        ws_conn_enter_closing(c, 0);
    ws_conn_pump(c);
    ws_conn_maybe_finish(c);
}

static void ws_conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    ws_conn_t *c = ws_conn_from(st->data);
    if (nread < 0) {
        if (c->state == WS_OPEN)
            log_debug("ws_peer_gone", "peer=%s err=%s", c->peer, uv_err_name((int)nread));
        ws_conn_cut(c, 0);
        return;
    }
    if (nread > 0)
        ws_conn_feed(c, (const uint8_t *)buf->base, (size_t)nread);
}

static void ws_conn_read_start(ws_conn_t *c)
{
    if (c->state == WS_CLOSED)
        return;
    int r = uv_read_start((uv_stream_t *)c->tcp, http_read_alloc_cb, ws_conn_read_cb);
    if (r < 0) {
        log_warn("ws_read_failed", "peer=%s err=%s", c->peer, uv_err_name(r));
        ws_conn_cut(c, 0);
    }
}

/* ---- closing ---- */

static uint16_t ws_conn_final_code(ws_conn_t *c)
{
    if (c->code)
        return c->code;
    if (wslay_event_get_close_received(c->wslay))
        return wslay_event_get_status_code_received(c->wslay);
    if (wslay_event_get_close_sent(c->wslay))
        return wslay_event_get_status_code_sent(c->wslay);
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
    log_debug("ws_close", "peer=%s code=%u", c->peer, code);
    c->cb.on_close(c, code, c->user);
    for (unsigned i = 0; i < c->qlen; i++)
        ws_frame_unref(c->q[i]);
    free(c->q);
    free(c->pending);
    wslay_event_context_free(c->wslay);
    free(h);
    c->magic = 0;
    free(c);
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
    if (c->state != WS_CLOSING || c->qlen || c->inflight ||
        !(wslay_event_get_close_sent(c->wslay) || c->own_close))
        return;
    if (wslay_event_get_close_received(c->wslay)) {
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
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 123) { /* control frame payload limit; cut on a UTF-8 boundary */
        rlen = 123;
        while (rlen > 0 && ((unsigned char)reason[rlen] & 0xc0) == 0x80)
            rlen--;
    }
    int r = wslay_event_queue_close(c->wslay, code, (const uint8_t *)reason, rlen);
    if (r != 0)
        log_warn("ws_close_failed", "peer=%s code=%u err=%d", c->peer, code, r);
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
            ws_conn_feed(c, (const uint8_t *)p, c->pending_len);
            free(p);
            ws_conn_read_start(c);
        }
        ws_conn_pump(c);
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
        if (c->state == WS_CLOSING && now >= c->deadline) {
            ws_conn_cut(c, 0);
        } else if (c->state != WS_OPEN) {
            continue;
        } else if (c->ping_at) {
            if (now - c->ping_at >= ws_g.lim.pong_timeout_ms) {
                log_info("ws_pong_timeout", "peer=%s", c->peer);
                ws_conn_close(c, 1001, "ping timeout");
            }
        } else if (now - c->last_rx >= ws_g.lim.ping_interval_ms) {
            struct wslay_event_msg ping = { WSLAY_PING, NULL, 0 };
            if (wslay_event_queue_msg(c->wslay, &ping) == 0) {
                c->ping_at = now;
                ws_conn_mark_dirty(c);
            }
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
    ws_conn_t *c = calloc(1, sizeof *c);
    if (!c || wslay_event_context_server_init(&c->wslay, &ws_wslay_callbacks, c) != 0) {
        free(c);
        http_respond_error(req, 503, "unavailable", "out of memory, try again");
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(c->wslay, ws_g.lim.max_msg);
    c->magic = WS_CONN_MAGIC;
    c->cb = *cb;
    c->user = user;
    snprintf(c->peer, sizeof c->peer, "%s", http_req_peer(req));
    c->tcp = http_req_take_socket(req, &c->pending, &c->pending_len); /* req is gone now */
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
const char *ws_conn_peer(const ws_conn_t *c) { return c->peer; }
size_t ws_conn_queued_bytes(const ws_conn_t *c) { return c->queued; }
size_t ws_conn_count(void) { return ws_g.count; }
