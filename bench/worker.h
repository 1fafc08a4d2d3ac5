/* worker: one forked process with its own libuv loop and its share of the
 * clients (whole rooms when there are enough rooms, else a share of each
 * room's members: conf_client_proc). Messages are judged in the ledger that
 * every worker shares (ledger.h).
 *
 * Phases: setup (connect, join) -> ready (REC_READY to the parent) -> the
 * parent's start time arrives -> warmup -> measure -> drain (no new
 * messages; wait for acks and deliveries) -> done (REC_FINAL, exit).
 */
#ifndef BENCH_WORKER_H
#define BENCH_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "bench/conf.h"
#include "bench/hist.h"
#include "bench/sched.h"
#include "bench/stats.h"

struct client;
struct ledger;

struct worker {
    uint32_t magic;
    const struct conf *conf;
    struct ledger *ledger;            /* shared with the parent and the other workers */
    int idx;
    uv_loop_t loop;
    struct client *clients;
    int nclients;
    struct client **senders;
    int nsenders;
    uv_timer_t tick, report;
    uv_signal_t sigterm;
    uv_pipe_t ctl;
    int up_fd;
    int phase;
    uint64_t t0, t_start, t_measure, t_end, t_drain, t_checked;
    uint64_t t_connect;               /* first connection attempt */
    double rate;                      /* this worker's messages/s */
    uint64_t now;                     /* when the bytes being handled were read */
    struct sched sched;               /* from t_start at rate */
    size_t rr;
    struct client *cq_head, *cq_tail; /* waiting to connect */
    int connecting;
    uint64_t rng;
    struct stats st;
    struct hist h_warm, h_win, h_win_sent, h_ack, h_lag;
    size_t run_len, salt_len;         /* of conf->run, conf->cid_salt */
    char *sbuf;                       /* scratch for one outgoing frame */
    size_t sbuf_cap;
    unsigned char ctl_buf[8];
    size_t ctl_got;
    char rbuf[65536];                 /* shared read buffer: reads are consumed at once */
};

/* Runs worker idx to the end; returns the process exit status. */
int worker_main(const struct conf *conf, struct ledger *ledger, int idx, int up_fd, int ctl_fd);

uint64_t worker_now(void);            /* CLOCK_MONOTONIC ns */
uint64_t worker_rand(struct worker *w);
void worker_cq_push(struct worker *w, struct client *c);
/* A client left the connecting state (hello or failure): frees its slot. */
void worker_connect_done(struct worker *w);
void worker_on_joined(struct worker *w);
/* A client had its first hello (reconnects do not count). */
void worker_on_connected(struct worker *w);
/* The sender number (conf_sender_index) of user id user[0..len), in any
 * worker, or -1. */
int worker_sender_by_user(const struct worker *w, const char *user, size_t len);
/* 1 when a message intended for time t falls in the measured window. */
int worker_in_window(const struct worker *w, uint64_t t);

#endif
