/* ws: WebSocket connections (RFC 6455) over libuv.
 *
 * net/ws_parser.c parses client frames (masking, fragmentation, control
 * frames, UTF-8, the message size limit) from the loop-wide read buffer, so
 * an idle connection holds no read buffer. A server frame is unmasked, so
 * ws_frame_text() encodes header + payload once into a ref-counted
 * ws_frame_t that any number of connections queue by reference (the fan-out
 * path encodes a message once per gateway, not per socket). Pong and close
 * frames join the same per-connection queue, so frames leave in the order
 * they were queued.
 *
 * Output is flushed once per loop turn (a uv_check handle): everything queued
 * for a socket during one turn goes out in one writev. Each connection counts
 * its queued bytes; past limits.max_queue_bytes the client is too slow and is
 * cut (socket closed, on_close called with 1008): it reconnects and syncs.
 *
 * Protocol outcomes (the peer misbehaved): framing against RFC 6455
 * (unmasked, reserved bits or opcodes, bad control frames, bad close codes)
 * -> close 1002, invalid UTF-8 -> 1007, message over limits.max_msg -> 1009,
 * binary message -> 1003. The server
 * pings a connection idle for ping_interval_ms and closes it (1001) if no
 * frame arrives within pong_timeout_ms after that.
 *
 * Lifetime: a ws_conn_t exists from ws_accept() until its on_close callback
 * returns; after ws_conn_close() no more on_text calls are made. on_close is
 * called exactly once, never from inside a ws_* call made by the owner.
 */
#ifndef CHATD_WS_H
#define CHATD_WS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "net/http.h"
#include "net/ws_parser.h"

typedef struct ws_conn ws_conn_t;
typedef struct ws_frame ws_frame_t;

struct ws_limits {
    size_t max_msg;          /* largest client message, bytes (default 65536) */
    size_t max_queue_bytes;  /* per-connection output bound (default 1 MiB) */
    unsigned ping_interval_ms; /* default 25000 */
    unsigned pong_timeout_ms;  /* default 10000 */
};

struct ws_callbacks {
    /* One complete text message, valid UTF-8; data valid during the call. */
    void (*on_text)(ws_conn_t *c, const char *data, size_t len, void *user);
    /* The connection is gone (peer closed, error, limit, or ws_conn_close done). */
    void (*on_close)(ws_conn_t *c, int code, void *user);
};

/* Starts the per-loop-turn flusher and the ping sweep. Call once. */
int ws_init(uv_loop_t *loop, const struct ws_limits *limits);
void ws_shutdown(void);

/* Validates the upgrade request (GET, Upgrade: websocket, Connection: upgrade,
 * Sec-WebSocket-Version: 13, Sec-WebSocket-Key), answers 101 and turns the
 * socket into a WebSocket connection whose first frame is `hello` (may be
 * NULL). Bytes the client sent after the request are processed. On an invalid
 * handshake it responds 400 (or 426) itself and returns NULL. Finishes req
 * either way. cb is kept by reference: it must outlive the connection (a
 * static const struct). */
ws_conn_t *ws_accept(http_req_t *req, const char *hello, size_t hello_len,
                     const struct ws_callbacks *cb, void *user);

/* Shared pre-encoded text frame, refcount 1. NULL on ENOMEM. */
ws_frame_t *ws_frame_text(const char *data, size_t len);
void ws_frame_ref(ws_frame_t *f);
void ws_frame_unref(ws_frame_t *f);

/* Queues f (takes its own reference). Returns 0, or ERR_UNAVAILABLE if the
 * connection is closing, or ERR_TOO_LARGE if the queue bound was passed (the
 * connection is then being cut) or f alone is larger than the bound (f is
 * dropped, the connection stays: senders page within the bound). */
int ws_conn_send(ws_conn_t *c, ws_frame_t *f);
/* Encodes and queues one text message. Same returns as ws_conn_send. */
int ws_conn_send_text(ws_conn_t *c, const char *data, size_t len);
/* Graceful close: queued frames, then a close frame with code, then FIN. */
void ws_conn_close(ws_conn_t *c, uint16_t code, const char *reason);

void *ws_conn_user(const ws_conn_t *c);
void ws_conn_set_user(ws_conn_t *c, void *user);
/* The peer address as text, in a static buffer valid until the next call. */
const char *ws_conn_peer(const ws_conn_t *c);
size_t ws_conn_queued_bytes(const ws_conn_t *c);
size_t ws_conn_count(void);

/* Exposed for unit tests (pure functions). */
/* Computes Sec-WebSocket-Accept (28 chars + NUL) for a client key. */
int ws_accept_key(const char *client_key, char out[29]);
/* Writes a server (unmasked) text frame header for len bytes; returns its size (2, 4 or 10). */
size_t ws_frame_header(uint8_t out[10], size_t len, int opcode);

#endif
