/* http: the HTTP/1.1 front door of every role (libuv + http-parser).
 *
 * One listener; each accepted socket gets an http-parser and a bounded header
 * buffer. A complete request is handed to the role's handler. While a request
 * is outstanding the connection does not read (one request at a time, no
 * pipelining surprises); keep-alive is honoured after the response.
 *
 * Ownership: the server owns every http_req_t. The handler must finish each
 * request exactly once, with http_respond() or ws_accept() (net/ws.h), now or
 * later from any callback. A request stays valid until then even if the peer
 * disconnected in between (the response is then dropped silently).
 *
 * Limits (struct http_limits, set by http_server_set_limits): request line +
 * headers (431 above), request target (414 above), body at most 64 KiB (413
 * above; a GET, HEAD or upgrade with any body: 400; trailers are dropped),
 * a complete request within request_timeout_ms of the connection or
 * of the previous response (408 if part of one came, else a silent close: the
 * slowloris bound), at most max_conns sockets in the HTTP phase (a new one
 * above gets 503 and is closed), requests per connection by a token bucket
 * (429 + Retry-After above), unsent output per connection (past 64 KiB the
 * next pipelined request waits until the peer has read: a client that never
 * reads holds one response plus 64 KiB, and is closed at the request
 * timeout). Malformed requests get 400. Every refusal closes the connection.
 */
#ifndef CHATD_HTTP_H
#define CHATD_HTTP_H

#include <stddef.h>
#include <uv.h>

typedef struct http_server http_server_t;
typedef struct http_req http_req_t;

typedef void (*http_handler_cb)(http_req_t *req, void *user);

struct http_limits {
    size_t max_header;           /* URL + header names and values, bytes (16 KiB) */
    size_t max_url;              /* request target, bytes (8 KiB; at most max_header) */
    unsigned request_timeout_ms; /* 10000 */
    unsigned max_conns;          /* sockets in the HTTP phase (4096) */
    double rate, rate_burst;     /* requests per second per connection, bucket depth (20, 50) */
};

/* The largest max_header: a request (its bookkeeping and header buffer) must
 * fit one slot of the request slab (lib/slab.h, SLAB_MAX_OBJECT); conf
 * refuses more at start and http_server_set_limits clamps to it. */
size_t http_max_header_limit(void);

/* Binds and listens on host:port (host is a numeric IPv4/IPv6 address).
 * Returns 0 or a negative ERR_* / UV error code (logged by the caller). */
int http_server_init(http_server_t **out, uv_loop_t *loop, const char *host, int port,
                     http_handler_cb cb, void *user);
/* Replaces the limits (NULL or a 0 field: the default above; max_header
 * at most http_max_header_limit()). They apply to requests that start after
 * the call. */
void http_server_set_limits(http_server_t *s, const struct http_limits *lim);
/* The port actually bound (useful with port 0). */
int http_server_port(const http_server_t *s);
/* Stops accepting new connections; existing ones continue (drain). */
void http_server_stop_accepting(http_server_t *s);
/* Closes the listener and every connection still in the HTTP phase; frees
 * the server once all handles are closed. Upgraded connections belong to ws. */
void http_server_close(http_server_t *s);

/* Request accessors. Strings are NUL-terminated and live as long as req. */
const char *http_req_method(const http_req_t *r);          /* "GET", "POST", ... */
const char *http_req_path(const http_req_t *r);            /* path only, not decoded */
/* Percent-decoded query parameter into buf; returns buf, or NULL when absent
 * or longer than buflen-1. */
const char *http_req_query(const http_req_t *r, const char *name, char *buf, size_t buflen);
/* 1 if the query has parameter name, whatever its value's length: a
 * parameter http_req_query answered NULL for is then too long, not absent. */
int http_req_query_has(const http_req_t *r, const char *name);
/* Header value by case-insensitive name, or NULL. */
const char *http_req_header(const http_req_t *r, const char *name);
const char *http_req_body(const http_req_t *r, size_t *len);
const char *http_req_peer(const http_req_t *r);            /* "127.0.0.1" */
/* 1 when the client has closed its side or the connection is gone: work
 * done only for this request can stop. Peeks at the socket, reads nothing
 * (a dispatched request's socket is not read, so libuv would not know). */
int http_req_peer_gone(const http_req_t *r);

/* Sends a complete response (Content-Length set, body copied) and finishes
 * req. Extra headers, if any, are full lines each ending in "\r\n". */
void http_respond(http_req_t *req, int status, const char *content_type, const char *body,
                  size_t len, const char *extra_headers);
/* Convenience: JSON body {"error":CODE,"message":MSG}. */
void http_respond_error(http_req_t *req, int status, const char *code, const char *msg);

#endif
