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
 * Limits: headers + URL at most 16 KiB (else 431), body at most 64 KiB (else
 * 413); malformed requests get 400 and the connection is closed.
 */
#ifndef CHATD_HTTP_H
#define CHATD_HTTP_H

#include <stddef.h>
#include <uv.h>

typedef struct http_server http_server_t;
typedef struct http_req http_req_t;

typedef void (*http_handler_cb)(http_req_t *req, void *user);

/* Binds and listens on host:port (host is a numeric IPv4/IPv6 address).
 * Returns 0 or a negative ERR_* / UV error code (logged by the caller). */
int http_server_init(http_server_t **out, uv_loop_t *loop, const char *host, int port,
                     http_handler_cb cb, void *user);
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
/* Header value by case-insensitive name, or NULL. */
const char *http_req_header(const http_req_t *r, const char *name);
const char *http_req_body(const http_req_t *r, size_t *len);
const char *http_req_peer(const http_req_t *r);            /* "127.0.0.1" */

/* Sends a complete response (Content-Length set, body copied) and finishes
 * req. Extra headers, if any, are full lines each ending in "\r\n". */
void http_respond(http_req_t *req, int status, const char *content_type, const char *body,
                  size_t len, const char *extra_headers);
/* Convenience: JSON body {"error":CODE,"message":MSG}. */
void http_respond_error(http_req_t *req, int status, const char *code, const char *msg);

#endif
