/* Shared between gateway.c (lifecycle, HTTP, index, fan-out) and
 * gateway_ops.c (client requests). Not a public header. */
#ifndef CHATD_GATEWAY_INTERNAL_H
#define CHATD_GATEWAY_INTERNAL_H

#include <stdint.h>
#include <uthash.h>
#include <utlist.h>

/* uthash gives each table 32 buckets (512 B) to start with; the gateway's
 * tables grow past that anyway, and small ones (tests, a quiet gateway)
 * should not pay for them. */
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
#include "store/readmarks.h"
#include "store/seen.h"

#define GW_CONN_MAGIC 0x67636f6eu /* "gcon" */
#define GW_EPOCH_MAX 40
/* The end of a quiet joined/left record's value: such a record is not shown
 * to clients; it only makes the gateways that hold the user check the
 * membership again (a join or leave that changed nothing, e.g. the retry of
 * one whose reply was lost). */
#define GW_QUIET_TAIL ",\"quiet\":true}"

struct gw_user;
struct gw_room;

/* One client connection. Requests waiting for a backend hold it (pending):
 * once closed (ws NULL) it is freed when the last of them completes, so
 * their callbacks need no lookup (and connections no table by id). */
struct gw_conn {
    uint32_t magic;
    unsigned pending;               /* gw_pending requests holding it */
    unsigned backend;               /* of those, counted in u->inflight */
    uint64_t id;                    /* for logs */
    gateway_t *g;
    ws_conn_t *ws;                  /* NULL once closed */
    struct gw_user *u;              /* NULL once closed */
    struct gw_conn *next, *prev;    /* in u->conns */
    double tokens;                  /* rate limit bucket */
    uint64_t tokens_ms;
    int64_t exp_s;                  /* the token's exp: closed with 1008 from then on */
    char *rooms;                    /* the token's rooms claim (auth.h), NULL = any room */
};

/* User U is a member of room R and online on this gateway. Memory per
 * idle joined connection is a benchmark target (docs/PERFORMANCE.md): one
 * gateway-wide table of members keyed by (u, r), and plain lists per user
 * and per room, cost less than a hash table per user (two allocations,
 * about 160 B, for the one or few rooms most users are in). */
struct gw_member {
    struct gw_user *u;              /* u and r: the key in g->members */
    struct gw_room *r;
    struct gw_member *next, *prev;  /* in r->members */
    struct gw_member *unext, *uprev; /* in u->rooms */
    int held;                       /* `left` checks pending: the room is not delivered to it */
    int announced;                  /* of those, loud: their frame reached its sessions */
    UT_hash_handle hh;              /* g->members */
};

struct gw_user {
    struct gw_conn *conns;
    int n_conns;
    int pending;                    /* handshakes in flight for this user */
    int inflight;                   /* its requests waiting for PostgreSQL or Redis */
    struct gw_member *rooms;
    UT_hash_handle hh;              /* g->users */
    char id[];                      /* GW_USER_ID_SHORT or AUTH_USER_MAX + 1 bytes */
};

/* Ids up to 39 bytes (a UUID is 36) come from the smaller of two slabs. */
#define GW_USER_ID_SHORT 40

struct gw_room {
    struct gw_member *members;
    int n_members;
    UT_hash_handle hh;              /* g->rooms */
    char name[PROTO_ROOM_MAX + 1];
};

#define GW_PG_MAX 64

struct gateway {
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_producer_t *producer;
    routes_t *routes;
    redis_client_t *redis;
    pg_client_t *pg;                /* pgs[0]: statements that belong to no user */
    pg_client_t *pgs[GW_PG_MAX];    /* --pg-conns: see gw_pg */
    readmarks_t *reads[GW_PG_MAX];  /* `read` marks, batched per connection (store/readmarks.h) */
    int n_pg;
    seen_t *seen;                   /* users rows, written once a second */
    kafka_consumer_t *consumer;
    char epoch[GW_EPOCH_MAX];
    int cleaned;                    /* earlier life's routes removed */
    int draining;
    int closing;                    /* gateway_close called: no more Redis writes */
    uint64_t live_since_ms;         /* first successful heartbeat of this epoch */
    uint64_t next_conn_id;
    int hist_inflight;              /* sync + REST history reads */
    int hs_inflight;                /* handshakes loading rooms */
    size_t n_conns;
    struct gw_user *users;
    struct gw_room *rooms;
    struct gw_member *members;
    struct proto_limits limits;
    uv_timer_t heartbeat;
    uv_timer_t expiry;              /* closes connections whose token expired */
    struct {
        metric_t *handshakes_ok, *handshakes_401, *handshakes_503, *shed;
        metric_t *handshakes_403, *handshakes_429, *expired, *user_inflight_refused;
        metric_t *requests, *sends, *acks, *deliveries, *records, *records_skipped;
        metric_t *errors[13];
        metric_t *hop_seconds, *delivery_seconds;
        metric_t *users, *rooms;
    } m;
};

/* The PostgreSQL connection of a user's (or a room's) statements. One
 * connection runs its statements in order, so a user's join, leave and read
 * marks keep theirs; spreading users over several lets PostgreSQL commit
 * them in parallel and share WAL flushes (a single connection was one flush
 * per join: docs/PERFORMANCE.md), and one slow query holds up only the users
 * of its connection. FNV-1a: stable, cheap, spreads short ids. */
static inline int gw_pg_index(const struct gateway *g, const char *key)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *k = (const unsigned char *)key; *k; k++)
        h = (h ^ *k) * 16777619u;
    return (int)(h % (uint32_t)g->n_pg);
}

static inline pg_client_t *gw_pg(const struct gateway *g, const char *key)
{
    return g->pgs[gw_pg_index(g, key)];
}

/* A user's read marks go out on its own connection, after its join. */
static inline readmarks_t *gw_reads(const struct gateway *g, const char *user)
{
    return g->reads[gw_pg_index(g, user)];
}

/* Bytes one reply may take (sync and REST pages, rooms): half of
 * --send-queue, so a reply always fits the connection's output bound next to
 * some backlog; conf makes it hold at least one message (proto_msg_bound). */
#define GW_REPLY_BUDGET(g) ((g)->conf->send_queue / 2)

uint64_t gw_now_ms(void);
/* Drops a pending request's hold on c (see struct gw_conn). */
void gw_conn_unref(struct gw_conn *c);
/* Adds (user, room) to the local index; register=1 also writes the route. */
struct gw_member *gw_member_add(gateway_t *g, struct gw_user *u, const char *room, int do_register);
void gw_member_remove(gateway_t *g, struct gw_member *m);
struct gw_member *gw_member_find(gateway_t *g, struct gw_user *u, const char *room);
struct gw_user *gw_user_find(gateway_t *g, const char *id);

/* 1 (and the connection is being closed with 1008) if c's token expired. */
int gw_conn_expired(struct gw_conn *c, uint64_t now_ms);

/* gateway_ops.c */
void gw_ops_on_text(ws_conn_t *ws, const char *data, size_t len, void *user);
void gw_send_error(struct gw_conn *c, const char *rid, int err, const char *why);
void gw_send_buf(struct gw_conn *c, struct jbuf *b);
/* The delivery reports of the records one request makes, gathered: cb(err,
 * ud) runs once, after gw_acks_arm, when Kafka has acknowledged every
 * record produced with a (err 0) or one of them failed (its error). A
 * membership change is answered only then: its record is the only thing
 * that tells the member's other gateways (a lost `left` kept a removed
 * member receiving the room), and the request's retry makes a quiet one. */
typedef void (*gw_acks_cb)(int err, void *ud);
struct gw_acks;
struct gw_acks *gw_acks_new(gw_acks_cb cb, void *ud);
void gw_acks_arm(struct gw_acks *a);
/* Produces a joined/left record (op "joined" or "left") for (room, user):
 * every gateway of the user, and of the room, checks the membership in
 * PostgreSQL and applies it (the server API's member changes use it too). */
void gw_member_changed(gateway_t *g, const char *op, const char *room, const char *user, int quiet,
                       struct gw_acks *a);
/* The joined/left frame {op, room, user[, quiet]} into b (initialised here). */
void gw_member_frame(struct jbuf *b, const char *op, const char *room, const char *user, int quiet);
/* Produces frame (freed) to chat-send, key room, type t (j/l: user in the
 * u header). 0 or the produce error (logged). a (may be NULL) learns the
 * record's fate. */
int gw_produce_event(gateway_t *g, char type, const char *room, const char *user, struct jbuf *frame,
                     struct gw_acks *a);

/* The server API's "disconnect everywhere" (roles/api.h): a quiet `left`
 * record keyed by GW_DISCONNECT_ROOM, routed like every member record to
 * the user's gateways, which close the user's connections on it. Its value
 * is {"op":"left","room":R,"user":U,"disconnect":true,"quiet":true}. */
#define GW_DISCONNECT_ROOM "chatd.system"
#define GW_DISCONNECT_MARK ",\"disconnect\":true"

/* gateway_history.c: one page of a room's history, as `sync` and the REST
 * read serve it; both decide membership by PostgreSQL, so they agree.
 * err: 0 (the page), ERR_NOT_MEMBER, ERR_UNAVAILABLE or ERR_INTERNAL; the
 * page is valid during the call only. user "": no membership check (the
 * server API). */
struct gw_page {
    const char *msgs;   /* msgs[0, len): the MSG objects, comma-separated */
    size_t len;
    int more;
    int64_t first;      /* > 0: seqs in (after, first) were deleted (retention) */
};
typedef void (*gw_history_cb)(int err, const struct gw_page *page, void *ud);
void gw_history_read(gateway_t *g, const char *room, const char *user, int64_t after, int limit,
                     gw_history_cb cb, void *ud);
/* A history page as the REST read and the server API answer it:
 * {"room":..,"messages":[msgs],"more":..[,"first":..]}; _fields writes its
 * fields after "room" into an open object (the sync reply). */
void gw_history_page_json(struct jbuf *b, const char *room, const struct gw_page *page);
void gw_history_page_fields(struct jbuf *b, const struct gw_page *page);

/* gateway_ops.c: a chat message from user to chat-send, keyed by room, its
 * id (derived from cid when given) written to id (MSG_ID_LEN + 1); the
 * client op `send` and the server API's publish. 0 or the produce error
 * (ERR_TOO_LARGE, ERR_UNAVAILABLE, ERR_NOMEM); dr is called iff 0. */
int gw_produce_msg(gateway_t *g, const char *room, const char *user, const char *cid,
                   const char *text, size_t text_len, char *id, kafka_delivery_cb dr,
                   void *opaque);
/* The same for an edit or delete (kind MSG_KIND_EDIT or MSG_KIND_DELETE) of
 * message target by user (mod: the server API, any sender's message); the
 * record is version RECORD_VERSION_CHANGE. */
int gw_produce_change(gateway_t *g, const char *room, const char *user, const char *cid, char kind,
                      const char *target, int mod, const char *text, size_t text_len, char *id,
                      kafka_delivery_cb dr, void *opaque);

/* gateway_change.c: an edit or delete of message target in room by user,
 * checked against PostgreSQL (the target is a message of the room, user
 * sent it unless mod, an edit's target is not deleted), then produced like
 * a message. cb gets once: 0 (durable in Kafka, or a delete of a message
 * deleted already: nothing produced), ERR_NOT_FOUND or ERR_FORBIDDEN (why
 * says which), ERR_UNAVAILABLE (lookup failed: nothing produced), or a
 * produce error as gw_produce_msg's dr has it (ERR_IN_DOUBT: maybe stored).
 * id: the change's id (derived from cid when given), valid during cb. text
 * is copied; room, user, target and cid are validated by the caller. A
 * target not stored (yet) is looked up again for up to wait_ms, while
 * wanted(ud) (NULL: always) says the requester is still there. */
typedef void (*gw_change_cb)(int err, const char *why, const char *id, void *ud);
typedef int (*gw_change_wanted)(void *ud);
void gw_change_submit(gateway_t *g, const char *room, const char *user, int mod, char kind,
                      const char *target, const char *cid, const char *text, size_t text_len,
                      unsigned wait_ms, gw_change_cb cb, gw_change_wanted wanted, void *ud);

#endif
