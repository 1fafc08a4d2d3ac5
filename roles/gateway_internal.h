/* Shared between gateway.c (lifecycle, HTTP, index, fan-out) and
 * gateway_ops.c (client requests). Not a public header. */
#ifndef CHATD_GATEWAY_INTERNAL_H
#define CHATD_GATEWAY_INTERNAL_H

#include <stdint.h>
#include <uthash.h>
#include <utlist.h>

/* Every user with a room has its own room index (u->rooms), and uthash
 * gives each new table 32 buckets (512 B + its 56 B header): most of what a
 * joined idle connection cost over a bare one (make bench, idle
 * connections). Tables start with 4 buckets and double as they fill, as
 * before; the gateway-wide ones simply grow a few more times. */
#undef HASH_INITIAL_NUM_BUCKETS
#undef HASH_INITIAL_NUM_BUCKETS_LOG2
#define HASH_INITIAL_NUM_BUCKETS 4U
#define HASH_INITIAL_NUM_BUCKETS_LOG2 2U

#include "lib/metrics.h"
#include "net/auth.h"
#include "net/proto.h"
#include "net/ws.h"
#include "roles/gateway.h"
#include "store/pg.h"

#define GW_CONN_MAGIC 0x67636f6eu /* "gcon" */
#define GW_EPOCH_MAX 40

struct gw_user;
struct gw_room;

/* One client connection. */
struct gw_conn {
    uint32_t magic;
    uint64_t id;
    gateway_t *g;
    ws_conn_t *ws;
    struct gw_user *u;
    struct gw_conn *next, *prev;    /* in u->conns */
    double tokens;                  /* rate limit bucket */
    uint64_t tokens_ms;
    int64_t exp_s;                  /* the token's exp: closed with 1008 from then on */
    UT_hash_handle hh;              /* g->conns by id */
};

/* User U is a member of room R and online on this gateway. */
struct gw_member {
    struct gw_user *u;
    struct gw_room *r;
    struct gw_member *next, *prev;  /* in r->members */
    UT_hash_handle hh;              /* u->rooms, keyed by r->name */
};

struct gw_user {
    char id[AUTH_USER_MAX + 1];
    struct gw_conn *conns;
    int n_conns;
    int pending;                    /* handshakes in flight for this user */
    struct gw_member *rooms;
    UT_hash_handle hh;              /* g->users */
};

struct gw_room {
    char name[PROTO_ROOM_MAX + 1];
    struct gw_member *members;
    int n_members;
    UT_hash_handle hh;              /* g->rooms */
};

struct gateway {
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_producer_t *producer;
    routes_t *routes;
    redis_client_t *redis;
    pg_client_t *pg;
    kafka_consumer_t *consumer;
    char epoch[GW_EPOCH_MAX];
    int cleaned;                    /* earlier life's routes removed */
    int draining;
    int closing;                    /* gateway_close called: no more Redis writes */
    uint64_t live_since_ms;         /* first successful heartbeat of this epoch */
    uint64_t next_conn_id;
    int hist_inflight;              /* sync + REST history reads */
    int hs_inflight;                /* handshakes loading rooms */
    struct gw_conn *conns;
    struct gw_user *users;
    struct gw_room *rooms;
    struct proto_limits limits;
    uv_timer_t heartbeat;
    uv_timer_t expiry;              /* closes connections whose token expired */
    unsigned sweeps;                /* expiry sweeps so far (malloc_trim cadence) */
    struct {
        metric_t *handshakes_ok, *handshakes_401, *handshakes_503, *shed;
        metric_t *handshakes_403, *handshakes_429, *expired;
        metric_t *requests, *sends, *acks, *deliveries, *records, *records_skipped;
        metric_t *errors[13];
        metric_t *hop_seconds, *delivery_seconds;
        metric_t *users, *rooms;
    } m;
};

uint64_t gw_now_ms(void);
struct gw_conn *gw_conn_find(gateway_t *g, uint64_t id);
/* Adds (user, room) to the local index; register=1 also writes the route. */
struct gw_member *gw_member_add(gateway_t *g, struct gw_user *u, const char *room, int do_register);
void gw_member_remove(gateway_t *g, struct gw_member *m);
struct gw_member *gw_member_find(struct gw_user *u, const char *room);
struct gw_user *gw_user_find(gateway_t *g, const char *id);

/* 1 (and the connection is being closed with 1008) if c's token expired. */
int gw_conn_expired(struct gw_conn *c, uint64_t now_ms);

/* gateway_ops.c */
void gw_ops_on_text(ws_conn_t *ws, const char *data, size_t len, void *user);
void gw_send_error(struct gw_conn *c, const char *rid, int err, const char *why);
void gw_send_buf(struct gw_conn *c, struct jbuf *b);

#endif
