/* conf: chatbench's command line, parsed once in the parent and inherited
 * read-only by every forked worker. */
#ifndef BENCH_CONF_H
#define BENCH_CONF_H

#include <netinet/in.h>
#include <sys/socket.h>

#define CONF_MAX_GW 64
#define CONF_MAX_SRC 256

struct conf_gw {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[128];   /* Host header: "127.0.0.1:8080" */
    char path[128];   /* "/ws" unless the URL says otherwise */
};

/* What the clients speak: chatd's PROTOCOL.md, or Socket.IO 5 over Engine.IO 4
 * (WebSocket transport only) to drive the peer server in bench/peer/. */
enum { PROTO_CHATD, PROTO_SOCKETIO };

struct conf {
    struct conf_gw gw[CONF_MAX_GW];
    int ngw;
    struct sockaddr_in src[CONF_MAX_SRC];  /* source addresses, port 0 */
    int nsrc;
    int clients, room_size, senders_per_room, procs, payload;
    int connect_concurrency;               /* per worker */
    int proto;                             /* PROTO_* */
    double rate, duration, warmup, drain, setup_timeout;
    const char *json_path;
    char secret[256];                      /* empty: fetch dev tokens */
    char run[16];                          /* user and room ids: unique per run unless --run-id */
    char cid_salt[20];                     /* unique per invocation: cid = "<salt>.<n>" */
    double settle;                         /* max wait for quiet after setup */
    int nrooms;                            /* ceil(clients / room_size) */
    int nsenders;                          /* across all rooms */
};

/* Room r holds clients [r*room_size, min(clients, (r+1)*room_size)). */
static inline int conf_room_members(const struct conf *c, int room)
{
    int first = room * c->room_size, left = c->clients - first;
    return left < c->room_size ? left : c->room_size;
}

static inline int conf_room_senders(const struct conf *c, int room)
{
    int m = conf_room_members(c, room);
    return m < c->senders_per_room ? m : c->senders_per_room;
}

/* The worker that holds client g. With at least as many rooms as workers,
 * whole rooms (room r to worker r % procs); with fewer (one room of 1000 and
 * two processes), each room's members are spread over every worker, so one
 * room's fan-out is read by more than one process. Deliveries are counted in
 * the shared ledger (ledger.h) either way. */
static inline int conf_client_proc(const struct conf *c, int g)
{
    return c->procs <= c->nrooms ? (g / c->room_size) % c->procs : g % c->procs;
}

/* Senders are numbered 0..nsenders-1, room by room: client g's number, or
 * -1 when g does not send. */
static inline int conf_sender_index(const struct conf *c, int g)
{
    int room = g / c->room_size, k = g % c->room_size;
    int stride = c->room_size < c->senders_per_room ? c->room_size : c->senders_per_room;
    return k < conf_room_senders(c, room) ? room * stride + k : -1;
}

/* The room of sender number s (the inverse of conf_sender_index). */
static inline int conf_sender_room(const struct conf *c, int s)
{
    int stride = c->room_size < c->senders_per_room ? c->room_size : c->senders_per_room;
    return stride > 0 ? s / stride : 0;
}

#endif
