/* http_internal: the seam between net/http.c and net/ws.c, private to net/.
 *
 * An upgrade request is finished by ws_accept(), which takes the socket over
 * from the HTTP connection. The uv_tcp_t is heap-allocated on its own so it
 * can change owner without moving (libuv keeps pointers into it); its
 * handle->data names the current owner.
 */
#ifndef CHATD_HTTP_INTERNAL_H
#define CHATD_HTTP_INTERNAL_H

#include <stddef.h>
#include <uv.h>

#include "net/http.h"

/* 1 while req's connection is open and can still be answered or upgraded. */
int http_req_alive(const http_req_t *r);

/* Finishes req by handing its socket to the caller: returns the uv_tcp_t
 * (not reading, handle->data NULL; the caller owns and must uv_close it and
 * release it with http_socket_free() in the close callback) and moves the
 * bytes the client sent after the request into *leftover (malloc'd, caller
 * frees; NULL when none). Frees the HTTP connection and req. req must be
 * alive. */
uv_tcp_t *http_req_take_socket(http_req_t *req, char **leftover, size_t *leftover_len);
/* Frees an accepted socket's handle once uv_close has called back (they
 * live in a slab: lib/slab.h). */
void http_socket_free(uv_tcp_t *tcp);

/* alloc_cb for every socket of net/: one static 64 KiB buffer. The loop is
 * single-threaded and read_cb consumes its bytes before libuv reads again. */
void http_read_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

#endif
