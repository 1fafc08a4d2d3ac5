/* routes: the routing table and the per-room sequence numbers, in Redis.
 *
 * Keys (a room's keys share one Redis Cluster hash slot through {room:R}):
 *   {room:R}:seq        the room's last assigned seq (INCR)
 *   {room:R}:id:ID      "SEQ|TAG": the seq given to message ID and which record
 *                       got it (TAG = partition:offset, or "pg" when learned
 *                       from PostgreSQL); a cache of PostgreSQL's (room, id)
 *                       index, expiring after dedup_ttl_s
 *   {room:R}:gw         hash gateway id -> epoch: gateways with members online
 *   {room:R}:on         set "user@gw:epoch": who is online in the room
 *   {user:U}:gw         hash gateway id -> epoch: where the user is connected
 *   gw:N                epoch of gateway N's live process (TTL = liveness)
 *   gw:N:rooms, gw:N:users   what gateway N registered (cleanup on restart)
 *
 * Invariants (DESIGN.md): a gateway registers a room route and reads the
 * room's head in one script, a classifier assigns a seq and reads the room's
 * routes in one script, so every seq above a join's head is routed there.
 * A route counts only while its epoch equals the live epoch of that gateway
 * (cached here, refreshed every second), so a dead gateway stops receiving
 * within its TTL plus one second, and a restarted one ignores its old life.
 * Seqs are never reused: the classifier passes each room's max stored seq
 * (PostgreSQL) as a floor the seq key is raised to before use, and the seq of
 * an id PostgreSQL already has. A gateway's join seeds a missing seq key from
 * PostgreSQL (head == -1 means "seed me").
 *
 * Every call gets exactly one callback from the loop (see store/redis.h).
 */
#ifndef CHATD_ROUTES_H
#define CHATD_ROUTES_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "store/redis.h"

typedef struct routes routes_t;

typedef void (*routes_done_cb)(int err, void *user);
/* head: the room's last seq, or -1 when the seq key is missing (seed it). */
typedef void (*routes_head_cb)(int err, int64_t head, void *user);
/* dup: 0 a new seq; ROUTES_DUP_SAME the id already had a seq from this very
 * record (a retry or a re-consumption: deliver it); ROUTES_DUP_OTHER it had
 * one from another record or from PostgreSQL (a resent cid: do not deliver). */
#define ROUTES_DUP_OTHER 1
#define ROUTES_DUP_SAME 2
/* One message of a routes_assign call: the caller fills the inputs and keeps
 * the array alive until the callback, which finds seq and dup filled in. */
struct routes_assign_item {
    const char *msg_id;
    int64_t known;                /* the id's seq in PostgreSQL, or -1 */
    const char *tag;              /* the record: "partition:offset" */
    int64_t seq;                  /* out */
    int dup;                      /* out: 0 or ROUTES_DUP_* */
};
typedef void (*routes_assign_cb)(int err, void *user);
/* gws: live gateways with members of the room online (deduplicated). */
typedef void (*routes_dests_cb)(int err, const int *gws, size_t n_gws, void *user);
typedef void (*routes_presence_cb)(int err, char **users, size_t n_users, void *user);

/* n_gateways: gateway ids are 0..n_gateways-1 (chat-receive partitions). */
int routes_init(routes_t **out, uv_loop_t *loop, redis_client_t *redis, int n_gateways,
                unsigned dedup_ttl_s);
/* Stops the refresh timer; routes_free once the loop has run dry (redis
 * callbacks still in flight use rt). */
void routes_close(routes_t *rt);
void routes_free(routes_t *rt);
/* 1 once the live-gateway cache has been read at least once. */
int routes_live_known(const routes_t *rt);

/* ---- gateway side ---- */
/* Announces gw's epoch with a TTL (call every ttl/3). */
void routes_gateway_heartbeat(routes_t *rt, int gw, const char *epoch, int ttl_s,
                              routes_done_cb cb, void *user);
/* Removes every route gateway gw registered in earlier lives. Call before
 * registering anything in this life. */
void routes_gateway_cleanup(routes_t *rt, int gw, routes_done_cb cb, void *user);
/* Registers gw for room (and user online there), then reads the head. */
void routes_room_join(routes_t *rt, const char *room, int gw, const char *epoch, const char *user,
                      routes_head_cb cb, void *user_data);
/* Registers gw for n rooms (and user online in each) in one script call, one
 * round trip per batch of at most ROUTES_BATCH_MAX rooms (an upgrade's
 * rooms); heads are not read. rooms are copied. Returns 0 or ERR_NOMEM. */
#define ROUTES_BATCH_MAX 100
int routes_rooms_join(routes_t *rt, const char *const *rooms, size_t n, int gw, const char *epoch,
                      const char *user, routes_done_cb cb, void *user_data);
/* Reads the room's last assigned seq (head -1: the key is missing). */
void routes_room_head(routes_t *rt, const char *room, routes_head_cb cb, void *user);
/* Sets the room's seq key to seq unless present; answers the head. */
void routes_room_seed(routes_t *rt, const char *room, int64_t seq, routes_head_cb cb, void *user);
/* Fire-and-forget removals (failures are logged; stale entries are harmless
 * because routes are filtered by live epoch). */
void routes_room_drop_gateway(routes_t *rt, const char *room, int gw);
void routes_room_drop_user(routes_t *rt, const char *room, const char *user, int gw,
                           const char *epoch);
void routes_user_add(routes_t *rt, const char *user, int gw, const char *epoch);
void routes_user_drop(routes_t *rt, const char *user, int gw);
void routes_presence(routes_t *rt, const char *room, routes_presence_cb cb, void *user);

/* ---- classifier side ---- */
/* Seqs for n messages of one room, in the order given, in one atomic script
 * run (so a sender's order survives anything other connections do, a
 * NOSCRIPT retry included). floor: the room's max stored seq (PostgreSQL);
 * an unstored id whose seq is <= floor is given a new one (that seq is
 * another message's). */
void routes_assign(routes_t *rt, const char *room, int64_t floor, struct routes_assign_item *items,
                   size_t n, routes_assign_cb cb, void *user);
/* Live gateways of the room, plus those of `member` (may be NULL). */
void routes_dests(routes_t *rt, const char *room, const char *member, routes_dests_cb cb,
                  void *user);

#endif
