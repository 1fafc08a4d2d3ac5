#include "bench/worker.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/client.h"
#include "bench/ledger.h"
#include "bench/sched.h"
#include "bench/token.h"

#define WORKER_MAGIC 0x5742454eu
#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))
#define TOKEN_TTL_S (24 * 3600)

static struct worker *worker_from(void *p)
{
    struct worker *w = p;
    assert(w->magic == WORKER_MAGIC);
    return w;
}

uint64_t worker_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: masks, keys and jitter; nothing here needs to be secret. */
uint64_t worker_rand(struct worker *w)
{
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 0x2545F4914F6CDD1Dull;
}

int worker_in_window(const struct worker *w, uint64_t t)
{
    return t >= w->t_measure && t < w->t_end;
}

static void worker_pump(struct worker *w)
{
    while (w->cq_head && w->connecting < w->conf->connect_concurrency &&
           w->phase != PHASE_DONE) {
        struct client *c = w->cq_head;
        w->cq_head = c->cq_next;
        if (!w->cq_head)
            w->cq_tail = NULL;
        c->cq_next = NULL;
        w->connecting++;
        client_connect(c);
    }
}

void worker_cq_push(struct worker *w, struct client *c)
{
    c->cq_next = NULL;
    if (w->cq_tail)
        w->cq_tail->cq_next = c;
    else
        w->cq_head = c;
    w->cq_tail = c;
    worker_pump(w);
}

void worker_connect_done(struct worker *w)
{
    assert(w->connecting > 0);
    w->connecting--;
    worker_pump(w);
}

/* Ids are "b<run>-<g>" and runs are [0-9a-z]: the sender is found by
 * arithmetic, with no lookup by string. */
int worker_sender_by_user(const struct worker *w, const char *user, size_t len)
{
    const struct conf *cf = w->conf;
    size_t rl = w->run_len, i = rl + 2;
    if (len <= i || user[0] != 'b' || memcmp(user + 1, cf->run, rl) != 0 || user[rl + 1] != '-')
        return -1;
    long g = 0;
    for (; i < len && user[i] >= '0' && user[i] <= '9' && g < cf->clients; i++)
        g = g * 10 + (user[i] - '0');
    if (i != len || g >= cf->clients)
        return -1;
    return conf_sender_index(cf, (int)g);
}

static void worker_send_rec(struct worker *w, uint32_t type)
{
    static struct stats_rec rec;      /* 23 KB: not on the stack */
    rec.type = type;
    rec.phase = (uint32_t)w->phase;
    rec.t = worker_now();
    rec.st = w->st;
    rec.st.clients = (uint64_t)w->nclients;
    rec.h = w->phase >= PHASE_MEASURE ? w->h_win : w->h_warm;
    rec.hsent = w->h_win_sent;
    rec.ack = w->h_ack;
    rec.lag = w->h_lag;
    const char *p = (const char *)&rec;
    size_t n = sizeof rec;
    while (n > 0) {
        ssize_t r = write(w->up_fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;                   /* parent gone: nothing to report to */
        p += r;
        n -= (size_t)r;
    }
}

static void worker_ready(struct worker *w)
{
    w->phase = PHASE_READY;
    w->st.setup_s = (double)(worker_now() - w->t0) / 1e9;
    worker_send_rec(w, REC_READY);
}

void worker_on_joined(struct worker *w)
{
    w->st.joined++;
    if (w->phase == PHASE_SETUP && w->st.joined == (uint64_t)w->nclients)
        worker_ready(w);
}

void worker_on_connected(struct worker *w)
{
    w->st.connected++;
    if (w->st.connected == (uint64_t)w->nclients)
        w->st.connect_s = (double)(worker_now() - w->t_connect) / 1e9;
}

static void worker_finish(struct worker *w)
{
    if (w->phase == PHASE_DONE)
        return;
    w->phase = PHASE_DONE;
    worker_send_rec(w, REC_FINAL);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_close((uv_handle_t *)&w->report, NULL);
    uv_close((uv_handle_t *)&w->sigterm, NULL);
    uv_close((uv_handle_t *)&w->ctl, NULL);
    for (int i = 0; i < w->nclients; i++)
        client_shutdown(&w->clients[i]);
}

/* Every worker's deliveries, not just this one's: a room may be spread over
 * several workers, and a worker with no sender still waits for its share. */
static int worker_drained(struct worker *w)
{
    struct ledger *l = w->ledger;
    if (__atomic_load_n(&l->sending, __ATOMIC_ACQUIRE) > 0 || __atomic_load_n(&l->inflight, __ATOMIC_ACQUIRE) > 0 ||
        __atomic_load_n(&l->delivered_win, __ATOMIC_RELAXED) < __atomic_load_n(&l->expected, __ATOMIC_RELAXED))
        return 0;
    for (int i = 0; i < w->nsenders; i++)
        if (!client_idle(w->senders[i]))
            return 0;
    return 1;
}

static void worker_end_window(struct worker *w, uint64_t now)
{
    if (now < w->t_end)
        w->t_end = now;
    if (w->t_measure > w->t_end)
        w->t_measure = w->t_end;
    w->st.window_s = (double)(w->t_end - w->t_measure) / 1e9;
    w->phase = PHASE_DRAIN;
    __atomic_fetch_sub(&w->ledger->sending, 1, __ATOMIC_RELEASE);
    w->t_drain = now + (uint64_t)(w->conf->drain * 1e9);
}

/* Every millisecond: phase changes, then the messages now due. The schedule
 * is cumulative (rate x elapsed), so a late tick sends the backlog at once
 * instead of lowering the rate, each message stamped with the time it was
 * due (sched.h). */
static void worker_on_tick(uv_timer_t *t)
{
    struct worker *w = worker_from(container_of(t, struct worker, tick));
    uint64_t now = worker_now();
    if (w->phase == PHASE_SETUP && now - w->t0 > (uint64_t)(w->conf->setup_timeout * 1e9)) {
        fprintf(stderr, "chatbench[%d]: setup timeout: %llu of %d clients joined; starting anyway\n",
                w->idx, (unsigned long long)w->st.joined, w->nclients);
        w->phase = PHASE_READY;
        w->st.setup_s = (double)(now - w->t0) / 1e9;
        worker_send_rec(w, REC_READY);
    }
    if (w->phase == PHASE_WARMUP && now >= w->t_measure)
        w->phase = PHASE_MEASURE;
    if ((w->phase == PHASE_WARMUP || w->phase == PHASE_MEASURE) && now >= w->t_start &&
        w->nsenders > 0) {
        /* A tick late past the end of the window still makes every message
         * due inside it. */
        uint64_t intended, upto = now < w->t_end ? now : w->t_end - 1;
        while (sched_next(&w->sched, upto, &intended))
            client_send_new(w->senders[w->rr++ % (size_t)w->nsenders], intended, worker_now());
    }
    if (w->phase == PHASE_MEASURE && now >= w->t_end)
        worker_end_window(w, now);
    if (w->phase == PHASE_DRAIN && now - w->t_checked > 20000000u) {
        w->t_checked = now;
        if (now >= w->t_drain || worker_drained(w))
            worker_finish(w);
    }
}

static void worker_on_report(uv_timer_t *t)
{
    struct worker *w = worker_from(container_of(t, struct worker, report));
    worker_send_rec(w, REC_PROGRESS);
}

/* SIGTERM (the parent forwards Ctrl-C): end the window now and drain
 * briefly; a second one ends the run at once. */
static void worker_on_sigterm(uv_signal_t *s, int sig)
{
    (void)sig;
    struct worker *w = worker_from(container_of(s, struct worker, sigterm));
    uint64_t now = worker_now();
    if (w->phase == PHASE_WARMUP || w->phase == PHASE_MEASURE) {
        worker_end_window(w, now);
        if (w->t_drain > now + 3000000000u)
            w->t_drain = now + 3000000000u;
    } else {
        worker_finish(w);
    }
}

static void worker_ctl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct worker *w = worker_from(container_of(h, struct worker, ctl));
    *buf = uv_buf_init((char *)w->ctl_buf + w->ctl_got, (unsigned)(sizeof w->ctl_buf - w->ctl_got));
}

/* The parent's only message: the start time, once every worker is ready. */
static void worker_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct worker *w = worker_from(container_of(s, struct worker, ctl));
    if (n < 0) {
        worker_finish(w);             /* parent gone */
        return;
    }
    w->ctl_got += (size_t)n;
    if (w->ctl_got < sizeof w->ctl_buf)
        return;
    uv_read_stop(s);
    memcpy(&w->t_start, w->ctl_buf, sizeof w->t_start);
    w->sched = (struct sched){ .t_start = w->t_start, .rate = w->rate };
    w->t_measure = w->t_start + (uint64_t)(w->conf->warmup * 1e9);
    w->t_end = w->t_measure + (uint64_t)(w->conf->duration * 1e9);
    if (w->phase < PHASE_WARMUP)
        w->phase = PHASE_WARMUP;
}

static int worker_setup(struct worker *w)
{
    const struct conf *cf = w->conf;
    for (int g = 0; g < cf->clients; g++)
        if (conf_client_proc(cf, g) == w->idx) {
            w->nclients++;
            w->nsenders += conf_sender_index(cf, g) >= 0;
        }
    w->clients = calloc((size_t)w->nclients + 1, sizeof *w->clients);
    w->senders = calloc((size_t)w->nsenders + 1, sizeof *w->senders);
    if (!w->clients || !w->senders)
        return -1;
    w->rate = cf->rate * w->nsenders / (cf->nsenders ? cf->nsenders : 1);
    int ci = 0, si = 0;
    for (int g = 0; g < cf->clients; g++) {
        if (conf_client_proc(cf, g) != w->idx)
            continue;
        int sender = conf_sender_index(cf, g) >= 0;
        char user[48], tok[1024];
        snprintf(user, sizeof user, "b%s-%d", cf->run, g);
        char *token;
        if (cf->secret[0]) {
            token = token_sign(cf->secret, user, TOKEN_TTL_S, tok, sizeof tok) < 0 ? NULL : strdup(tok);
        } else {
            const struct conf_gw *gw = &cf->gw[g % cf->ngw];
            token = token_fetch((const struct sockaddr *)&gw->addr, gw->addrlen, gw->host, user);
        }
        if (!token) {
            fprintf(stderr, "chatbench[%d]: no token for %s (%s)\n", w->idx, user,
                    cf->secret[0] ? "signing failed" : "POST /api/dev/token failed: --dev-tokens?");
            return -1;
        }
        if (client_init(&w->clients[ci], w, g, token, sender) < 0)
            return -1;
        if (sender)
            w->senders[si++] = &w->clients[ci];
        ci++;
    }
    return 0;
}

int worker_main(const struct conf *conf, struct ledger *ledger, int idx, int up_fd, int ctl_fd)
{
    struct worker *w = calloc(1, sizeof *w);
    int rc = 1;
    if (!w)
        return 1;
    w->magic = WORKER_MAGIC;
    w->conf = conf;
    w->ledger = ledger;
    w->idx = idx;
    w->run_len = strlen(conf->run);
    w->salt_len = strlen(conf->cid_salt);
    w->up_fd = up_fd;
    w->t0 = worker_now();
    w->t_measure = w->t_end = UINT64_MAX;
    w->rng = w->t0 ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
    if (uv_loop_init(&w->loop) < 0)
        goto out_free;
    if (worker_setup(w) < 0)
        goto out_loop;
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_init(&w->loop, &w->report);
    uv_signal_init(&w->loop, &w->sigterm);
    uv_pipe_init(&w->loop, &w->ctl, 0);
    if (uv_pipe_open(&w->ctl, ctl_fd) < 0 ||
        uv_read_start((uv_stream_t *)&w->ctl, worker_ctl_alloc, worker_ctl_read) < 0)
        goto out_loop;
    uv_timer_start(&w->tick, worker_on_tick, 1, 1);
    uv_timer_start(&w->report, worker_on_report, 1000, 1000);
    uv_signal_start(&w->sigterm, worker_on_sigterm, SIGTERM);
    w->t_connect = worker_now();
    for (int i = 0; i < w->nclients; i++)
        worker_cq_push(w, &w->clients[i]);
    if (w->nclients == 0)
        worker_ready(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    rc = 0;
out_loop:
    if (rc == 0)
        uv_loop_close(&w->loop);
out_free:
    for (int i = 0; i < w->nclients; i++)
        client_free(&w->clients[i]);
    free(w->clients);
    free(w->senders);
    free(w->sbuf);
    w->magic = 0;
    free(w);
    return rc;
}
