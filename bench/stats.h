/* stats: what a worker counts, what goes through the pipe to the parent.
 *
 * Workers are forks of one binary, so records are raw structs: no encoding.
 * Counters are cumulative since the worker started; the parent sums workers
 * and takes differences for rates.
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "bench/hist.h"

/* Error kinds: the protocol's error codes, then connection outcomes. One
 * table in stats.c gives each its report name. */
enum stats_err {
    SE_BAD_REQUEST, SE_NOT_MEMBER, SE_TOO_LARGE, SE_RATE_LIMITED, SE_FORBIDDEN,
    SE_UNAVAILABLE, SE_INTERNAL, SE_OTHER_CODE,
    SE_CONNECT,       /* TCP connect failed */
    SE_HTTP_401, SE_HTTP_503, SE_HTTP_OTHER, /* upgrade refused */
    SE_HANDSHAKE,     /* malformed upgrade answer, bad Sec-WebSocket-Accept */
    SE_TIMEOUT,       /* no hello within the connect timeout */
    SE_CLOSE_1001, SE_CLOSE_1012, SE_CLOSE_OTHER, /* close frame from the server */
    SE_EOF,           /* connection lost without a close frame */
    SE_BAD_FRAME,     /* a frame that is not the JSON the protocol promises */
    SE_BACKLOG,       /* a sender had too many unacked messages: not sent */
    SE__COUNT
};

const char *stats_err_name(int e);
/* Maps a protocol error code ("rate_limited") to its kind. */
int stats_err_from_code(const char *code);

enum { PHASE_SETUP, PHASE_READY, PHASE_WARMUP, PHASE_MEASURE, PHASE_DRAIN, PHASE_DONE };
const char *stats_phase_name(int phase);

struct stats {
    uint64_t clients, conns, joined;      /* conns, joined: gauges */
    uint64_t handshakes, reconnects;
    uint64_t connected;                   /* clients that had a first hello */
    uint64_t sent, acked, delivered;      /* every phase */
    uint64_t sent_win, acked_win;         /* messages created in the window */
    uint64_t expected;                    /* acked_win x members of the room */
    uint64_t delivered_win;               /* deliveries of window messages */
    uint64_t missing, extra;              /* set at the end, per message */
    uint64_t dups, gaps, syncs, resends;
    uint64_t frames;                      /* every text frame received, any phase */
    uint64_t errs[SE__COUNT];
    double setup_s;                       /* until every client had joined */
    double connect_s;                     /* first connect until every client had a hello */
    double window_s;                      /* measured window, as run */
};

void stats_add(struct stats *dst, const struct stats *src);

/* Worker -> parent records; parent -> worker sends one uint64_t: the
 * CLOCK_MONOTONIC ns at which sending starts. */
enum { REC_READY = 1, REC_PROGRESS, REC_FINAL };

struct stats_rec {
    uint32_t type, phase;
    uint64_t t;       /* CLOCK_MONOTONIC ns when written: rates per worker */
    struct stats st;
    struct hist h;    /* intended send time -> delivery, current phase (warmup or window) */
    struct hist hsent; /* actual send time -> delivery, window (what was reported before) */
    struct hist ack;  /* intended send time -> ack of window messages */
    struct hist lag;  /* send lag of window messages: actual - intended send time */
};

/* Whether a run held as far as delivery goes: every window message
 * acknowledged, delivered to every member of its room and to none twice,
 * and no message due left unsent (sender_backlog). 1 if so; else 0, and
 * why[0..n) says what failed ("unacked 3, extra 1"). */
int stats_held(const struct stats *st, char *why, size_t n);

#endif
