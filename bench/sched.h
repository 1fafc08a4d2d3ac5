/* sched: the send schedule, and why each message carries its intended time.
 *
 * A worker sending at `rate` msgs/s from t_start owes message k (1-based) at
 * t_start + k / rate: that is the message's intended time. The 1 ms tick sends
 * every message due by the time it runs, so when the loop falls behind
 * (reading a fan-out burst, waiting for a core) the late messages go out
 * together. Stamping them with the time they actually went out would hide
 * that delay from the latency (coordinated omission); they are stamped with
 * the intended time instead, and the delay is reported on its own as the send
 * lag (actual - intended).
 */
#ifndef BENCH_SCHED_H
#define BENCH_SCHED_H

#include <stdint.h>

struct sched {
    uint64_t t_start;                 /* CLOCK_MONOTONIC ns */
    double rate;                      /* msgs/s */
    uint64_t made;                    /* messages handed out so far */
};

/* 1 while a message not yet handed out is due by `now`, with its intended
 * time in *intended; 0 once caught up. A caller late by d sends the d x rate
 * messages it owes at once, each stamped with the time it was due. */
int sched_next(struct sched *s, uint64_t now, uint64_t *intended);
/* How many messages are due by `now` (CLOCK_MONOTONIC ns); 0 before t_start. */
uint64_t sched_due(uint64_t t_start, double rate, uint64_t now);
/* The intended time of message k >= 1: the first instant at which
 * sched_due() counts it. */
uint64_t sched_intended(uint64_t t_start, double rate, uint64_t k);
/* actual - intended in microseconds, 0 when not late. */
uint64_t sched_lag_us(uint64_t intended, uint64_t actual);

#endif
