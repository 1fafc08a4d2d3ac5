/* api: the server API, HTTP + JSON for the application's backend
 * (docs/API.md, described by docs/api.yaml).
 *
 * A listener of its own (--api-listen, off by default) on a gateway: it
 * shares the gateway's Kafka producer and PostgreSQL connection, so what it
 * does goes the client protocol's way. A publish is a chat-send record like
 * a client's send (answered once Kafka acknowledged it, its id derived from
 * the idempotency key as a client's from its cid, so a retry is stored once);
 * member changes are joined/left records that make every gateway of the user
 * check PostgreSQL; "disconnect everywhere" is a quiet left record with a
 * mark (roles/gateway_internal.h, GW_DISCONNECT_ROOM), and a ban is a row
 * every gateway reads at the WebSocket handshake.
 *
 * Every request carries "Authorization: Bearer KEY", KEY = CHATD_API_KEY or,
 * during a rotation, CHATD_API_KEY_PREVIOUS; compared in constant time (of
 * SHA-256 digests: the length leaks nothing either), never logged. The HTTP
 * server's limits apply (body 64 KiB, per-connection rate); requests waiting
 * for a backend are capped per process (503 + Retry-After above).
 *
 * Lifetime: api_init after the gateway's; api_close with the other
 * listeners (after gateway_close: answers still in flight then get 503).
 */
#ifndef CHATD_API_H
#define CHATD_API_H

#include "conf/conf.h"
#include "net/http.h"
#include "roles/gateway.h"

typedef struct api api_t;

/* Binds c->api and serves it. 0 or a negative error (logged). */
int api_init(api_t **out, uv_loop_t *loop, const struct conf *c, gateway_t *g);
int api_port(const api_t *a);
/* Closes the listener; answers still in flight may come until the loop has
 * run dry, then api_free. */
void api_close(api_t *a);
void api_free(api_t *a);

#endif
