/* client: one benchmark user on one WebSocket connection, speaking
 * PROTOCOL.md like any client: upgrade with a Bearer token, wait for hello,
 * join its room, send with a cid, count deliveries, and on any close
 * reconnect with jittered backoff, sync from the last seq and resend every
 * unacked message with its original cid.
 *
 * With --proto=socketio it speaks Socket.IO 5 over Engine.IO 4 (WebSocket
 * transport) to bench/peer/server.js instead, with the same job: token in the
 * query, "40" connect (its reply plays hello), "join" and "send" events with
 * acknowledgement ids (the same numbers as chatd's rids), "msg" events
 * counted as deliveries, "2" pings answered "3". Socket.IO has no seqs and no
 * sync: a reconnect joins the room again and resends unacked messages, and
 * what was missed meanwhile stays missing.
 *
 * A client is owned by its worker (an array element that lives for the whole
 * run); its uv handles are re-initialised on every connection, and the
 * connection's memory (frame reader, buffers) is freed in the TCP handle's
 * close callback.
 */
#ifndef BENCH_CLIENT_H
#define BENCH_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "bench/wsframe.h"

struct worker;
struct stats;
struct sender;

struct client {
    uint32_t magic;
    int state;
    struct worker *w;
    int gidx, room, members;          /* global client and room index */
    char user[48], room_id[64];
    size_t room_len;
    char *token;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_timer_t timer;                 /* connect timeout, backoff, retries */
    int gw;
    unsigned attempt, retry_k;
    uint64_t retry_after_ms;
    int reconnect_now;                /* closed with 1012 */
    char *hs;                         /* upgrade answer being read */
    size_t hs_len;
    char accept[32];                  /* expected Sec-WebSocket-Accept */
    struct wsframe_reader rd;         /* from the upgrade on */
    char *wbuf, *wfl;                 /* pending output; the part in a uv_write */
    size_t wlen, wcap;
    int joined, syncing, want_sync, want_join;
    int ever_ready;                   /* had a hello once: later ones are reconnects */
    int close_seen;                   /* a close frame arrived */
    unsigned close_code;              /* its code, 0 if it had none */
    uint64_t last, max_seen;          /* highest contiguous / highest seen seq */
    struct client *cq_next;           /* worker's connect queue */
    struct sender *snd;               /* NULL unless this client sends */
};

/* Sets c up (no handles yet). token is taken over (freed by client_free). */
int client_init(struct client *c, struct worker *w, int gidx, char *token, int sender);
/* Opens a connection now (the worker's connect queue calls this). */
void client_connect(struct client *c);
/* A sender makes one new message, due at `intended` (its stamp, sched.h) and
 * made at `now`, and sends it if connected (else it goes out after the next
 * hello, still stamped `intended`). */
void client_send_new(struct client *c, uint64_t intended, uint64_t now);
/* End of run: close the handles; the loop ends once their callbacks ran. */
void client_shutdown(struct client *c);
/* Frees what client_init and the run allocated; handles must be closed. */
void client_free(struct client *c);
/* 1 when a sender has nothing unacked (always 1 for non-senders). */
int client_idle(const struct client *c);

#endif
