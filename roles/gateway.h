/* gateway: holds client WebSockets, produces their messages to chat-send,
 * consumes its own chat-receive partition (= its gateway id) and fans each
 * record out to the local connections of the room, frame encoded once.
 *
 * State: a user online here has one gw_user with its connections and the
 * rooms it is a member of; a room with members online here has one gw_room
 * listing them. The routing table in Redis mirrors that state (route per
 * room, online entry per (room,user), route per user), re-registered after a
 * Redis reconnect, cleared at start for what an earlier life registered.
 *
 * Lifetime: gateway_init -> (serving) -> gateway_drain (SIGTERM: clients are
 * closed with 1012) -> gateway_close -> (loop runs dry) -> gateway_free.
 * Memory is freed only after the loop can no longer call back into it.
 */
#ifndef CHATD_GATEWAY_H
#define CHATD_GATEWAY_H

#include <uv.h>

#include "conf/conf.h"
#include "kafka/kafka.h"
#include "net/http.h"
#include "store/redis.h"
#include "store/routes.h"

typedef struct gateway gateway_t;

struct gateway_deps {
    uv_loop_t *loop;
    const struct conf *conf;
    const struct kafka_conf *kafka;
    kafka_producer_t *producer;   /* shared, owned by main */
    routes_t *routes;             /* shared, owned by main */
    redis_client_t *redis;        /* shared, owned by main */
};

int gateway_init(gateway_t **out, const struct gateway_deps *d);
/* Called by main on every Redis (re)connection. */
void gateway_on_redis_connect(gateway_t *g);
/* Handles the gateway's HTTP paths; returns 0 if the path is not one. */
int gateway_http(gateway_t *g, http_req_t *req);
/* Can take new clients: started, not draining, its liveness settled, Redis
 * (routes, liveness) and Kafka up. Not PostgreSQL: while it is down every
 * gateway is alike, its clients still send and are acked, and a new
 * client's upgrade is answered 503 with Retry-After (the rooms are loaded
 * from it); unready gateways would only empty the Service. */
int gateway_ready(const gateway_t *g);
/* Every PostgreSQL connection of the gateway is up. */
int gateway_pg_ready(const gateway_t *g);
/* Closes every client with 1012 and refuses new ones. */
void gateway_drain(gateway_t *g);
/* Number of client connections still open. */
size_t gateway_clients(const gateway_t *g);
/* Closes clients, consumer and timers; callbacks may still arrive until the
 * loop has run dry. Then gateway_free. */
void gateway_close(gateway_t *g);
void gateway_free(gateway_t *g);

#endif
