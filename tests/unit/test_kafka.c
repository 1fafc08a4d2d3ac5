/* kafka: producer, group and assigned consumers against the embedded broker,
 * all on one uv loop. Every wait is bounded by a deadline: a test fails,
 * it never hangs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "kafka/broker.h"
#include "kafka/kafka.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"

#define TOPIC "chat-test"
#define NPART 4
#define NREC 1000
#define WAIT_MS 30000

static uv_loop_t loop;
static kafka_broker_t *broker;
static struct kafka_conf kconf;
static const char *test_opts[] = { "session.timeout.ms=6000", "statistics.interval.ms=500" };

/* ---- bounded waits ---- */

typedef int (*pred_fn)(void *arg);
struct waiter {
    pred_fn pred;
    void *arg;
    uint64_t deadline;
    int ok;
};

static void on_tick(uv_timer_t *t)
{
    struct waiter *w = t->data;
    if (w->pred && w->pred(w->arg)) {
        w->ok = 1;
        uv_stop(&loop);
    } else if (uv_now(&loop) >= w->deadline) {
        uv_stop(&loop);
    }
}

/* Runs the loop until pred(arg) holds (returns 1) or timeout_ms passes (0).
 * pred NULL: just run for timeout_ms. */
static int run_until(pred_fn pred, void *arg, int timeout_ms)
{
    uv_timer_t t;
    struct waiter w = { pred, arg, 0, 0 };
    uv_update_time(&loop);
    w.deadline = uv_now(&loop) + (uint64_t)timeout_ms;
    uv_timer_init(&loop, &t);
    t.data = &w;
    uv_timer_start(&t, on_tick, 5, 5);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return w.ok;
}

/* Runs pending close callbacks so closed handles are freed. */
static void settle(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* ---- producer helper ---- */

struct prod_ctx {
    int in_produce;
    int acked, failed, reentrant;
    int in_doubt;                /* failed with ERR_IN_DOUBT */
};

static void on_delivery(int err, void *opaque)
{
    struct prod_ctx *pc = opaque;
    if (pc->in_produce)
        pc->reentrant++;
    if (err == 0)
        pc->acked++;
    else
        pc->failed++;
    if (err == ERR_IN_DOUBT)
        pc->in_doubt++;
}

static int produce(kafka_producer_t *p, struct prod_ctx *pc, int32_t partition, const char *key,
                   const char *val, int version, char type, const char *user)
{
    struct kafka_hdrs h = { version, type, user, user ? strlen(user) : 0 };
    pc->in_produce = 1;
    int r = kafka_produce(p, TOPIC, partition, key, key ? strlen(key) : 0, val, strlen(val), &h,
                          on_delivery, pc);
    pc->in_produce = 0;
    return r;
}

static int all_delivered(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed >= NREC;
}

/* ---- test: bad options ---- */

static void on_batch_unused(kafka_consumer_t *c, const struct kafka_rec *r, size_t n, void *u)
{
    (void)c, (void)r, (void)n, (void)u;
    fail_msg("no batch expected");
}

static void test_bad_opt(void **state)
{
    (void)state;
    const char *bad_key[] = { "no.such.key=1" };
    const char *bad_val[] = { "linger.ms=abc" };
    const char *no_eq[] = { "linger.ms" };
    struct kafka_conf kc = kconf;
    kafka_producer_t *p = NULL;
    kafka_consumer_t *c = NULL;

    kc.opts = bad_key, kc.n_opts = 1;
    assert_int_equal(kafka_producer_init(&p, &loop, &kc), ERR_BAD_REQUEST);
    assert_int_equal(kafka_consumer_init_group(&c, &loop, &kc, "g", TOPIC, 8, on_batch_unused, NULL),
                     ERR_BAD_REQUEST);
    assert_int_equal(kafka_consumer_init_assigned(&c, &loop, &kc, TOPIC, 0, 8, on_batch_unused, NULL),
                     ERR_BAD_REQUEST);
    kc.opts = bad_val;
    assert_int_equal(kafka_producer_init(&p, &loop, &kc), ERR_BAD_REQUEST);
    kc.opts = no_eq;
    assert_int_equal(kafka_producer_init(&p, &loop, &kc), ERR_BAD_REQUEST);
    assert_null(p);
    assert_null(c);
    settle();
}

/* linger.ms comes from kafka_conf (per role) and --kafka-opt overrides it. */
static void test_producer_linger(void **state)
{
    (void)state;
    struct kafka_conf kc = kconf;
    kafka_producer_t *p;
    char v[32];

    kc.linger_ms = 7;
    assert_int_equal(kafka_producer_init(&p, &loop, &kc), 0);
    assert_int_equal(kafka_producer_setting(p, "linger.ms", v, sizeof v), 0);
    assert_string_equal(v, "7");
    assert_int_equal(kafka_producer_setting(p, "no.such.key", v, sizeof v), ERR_NOT_FOUND);
    kafka_producer_close(p, 0);

    const char *opt[] = { "linger.ms=3" };
    kc.opts = opt, kc.n_opts = 1;
    assert_int_equal(kafka_producer_init(&p, &loop, &kc), 0);
    assert_int_equal(kafka_producer_setting(p, "linger.ms", v, sizeof v), 0);
    assert_string_equal(v, "3");
    kafka_producer_close(p, 0);
    settle();
}

/* ---- test: produce 1000, group consumer reads back, commits ---- */

struct group_ctx {
    kafka_consumer_t *c;
    size_t max_batch;
    int n, batches, bad;
    int last_i_part[NPART];
    int64_t last_off[NPART];
    int last_i_key[37];
    int markers;
    int others;              /* records neither msg- nor marker */
};

static void check_rec(struct group_ctx *g, const struct kafka_rec *r)
{
    char val[64], want[64];
    int i;
    assert_true(r->partition >= 0 && r->partition < NPART);
    assert_true(r->val_len < sizeof val);
    memcpy(val, r->val, r->val_len);
    val[r->val_len] = 0;
    if (sscanf(val, "msg-%d", &i) != 1) {
        if (strcmp(val, "marker") == 0)
            g->markers++;
        else
            g->others++;
        return;
    }
    assert_int_equal(r->version, i);
    assert_int_equal(r->type, 'a' + i % 3);
    if (i % 2 == 0) {
        snprintf(want, sizeof want, "u%d", i);
        assert_non_null(r->user);
        assert_int_equal(r->user_len, strlen(want));
        assert_memory_equal(r->user, want, r->user_len);
    } else {
        assert_null(r->user);
    }
    snprintf(want, sizeof want, "room-%d", i % 37);
    assert_int_equal(r->key_len, strlen(want));
    assert_memory_equal(r->key, want, r->key_len);
    assert_true(r->ts_ms > 0);
    /* order kept per partition and per key */
    assert_true(i > g->last_i_part[r->partition]);
    assert_true(r->offset > g->last_off[r->partition]);
    assert_true(i > g->last_i_key[i % 37]);
    g->last_i_part[r->partition] = i;
    g->last_off[r->partition] = r->offset;
    g->last_i_key[i % 37] = i;
    g->n++;
}

static void on_group_batch(kafka_consumer_t *c, const struct kafka_rec *recs, size_t n, void *user)
{
    struct group_ctx *g = user;
    int64_t commit[NPART];
    assert_ptr_equal(c, g->c);
    assert_true(n >= 1 && n <= g->max_batch);
    g->batches++;
    for (int p = 0; p < NPART; p++)
        commit[p] = -1;
    for (size_t k = 0; k < n; k++) {
        if (!kafka_consumer_owns(c, recs[k].partition))
            g->bad++;
        check_rec(g, &recs[k]);
        commit[recs[k].partition] = recs[k].offset + 1;
    }
    for (int p = 0; p < NPART; p++)
        if (commit[p] >= 0)
            assert_int_equal(kafka_consumer_commit(c, p, commit[p]), 0);
}

static int group_got_all(void *arg) { return ((struct group_ctx *)arg)->n >= NREC; }
static int group_lag_zero(void *arg) { return kafka_consumer_lag(((struct group_ctx *)arg)->c) == 0; }
static int group_owns_all(void *arg)
{
    struct group_ctx *g = arg;
    for (int p = 0; p < NPART; p++)
        if (!kafka_consumer_owns(g->c, p))
            return 0;
    return 1;
}
static int group_got_markers(void *arg) { return ((struct group_ctx *)arg)->markers >= NPART; }
static int producer_healthy(void *arg) { return kafka_producer_healthy(arg); }

static void group_ctx_init(struct group_ctx *g, size_t max_batch)
{
    memset(g, 0, sizeof *g);
    g->max_batch = max_batch;
    for (int p = 0; p < NPART; p++) {
        g->last_i_part[p] = -1;
        g->last_off[p] = -1;
    }
    for (int k = 0; k < 37; k++)
        g->last_i_key[k] = -1;
}

static void test_roundtrip_and_commit(void **state)
{
    (void)state;
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };
    struct group_ctx g;
    char key[32], val[32], user[32];

    assert_int_equal(kafka_producer_init(&p, &loop, &kconf), 0);
    group_ctx_init(&g, 64);
    assert_int_equal(kafka_consumer_init_group(&g.c, &loop, &kconf, "chatd-test", TOPIC, g.max_batch,
                                               on_group_batch, &g), 0);
    for (int i = 0; i < NREC; i++) {
        snprintf(key, sizeof key, "room-%d", i % 37);
        snprintf(val, sizeof val, "msg-%d", i);
        snprintf(user, sizeof user, "u%d", i);
        assert_int_equal(produce(p, &pc, -1, key, val, i, (char)('a' + i % 3),
                                 i % 2 == 0 ? user : NULL), 0);
    }
    assert_int_equal(pc.acked, 0); /* never from inside kafka_produce */
    assert_true(kafka_producer_inflight(p) > 0);
    assert_true(run_until(all_delivered, &pc, WAIT_MS));
    assert_int_equal(pc.acked, NREC);
    assert_int_equal(pc.failed, 0);
    assert_int_equal(pc.reentrant, 0);
    assert_int_equal(kafka_producer_inflight(p), 0);
    assert_true(run_until(producer_healthy, p, WAIT_MS));

    assert_true(run_until(group_got_all, &g, WAIT_MS));
    assert_int_equal(g.n, NREC);
    assert_int_equal(g.bad, 0);
    assert_int_equal(g.others, 0);
    assert_true(g.batches < NREC); /* batched, not one by one */
    for (int q = 0; q < NPART; q++)
        assert_true(g.last_off[q] >= 0); /* keys spread over every partition */
    assert_true(kafka_consumer_healthy(g.c));
    size_t text_len;
    char *text = metrics_render(&text_len);
    assert_non_null(text);
    assert_non_null(strstr(text, "\nchatd_kafka_produced_total 1000\n"));
    assert_non_null(strstr(text, "\nchatd_kafka_delivery_errors_total 0\n"));
    assert_non_null(strstr(text, "\nchatd_kafka_delivery_seconds_count 1000\n"));
    assert_non_null(strstr(text, "\nchatd_kafka_consumed_total{consumer=\"group\"} 1000\n"));
    free(text);
    assert_true(run_until(group_lag_zero, &g, WAIT_MS)); /* commits reached the broker */
    kafka_consumer_close(g.c);
    settle();

    /* Same group again: committed offsets mean only the new markers arrive. */
    group_ctx_init(&g, 64);
    assert_int_equal(kafka_consumer_init_group(&g.c, &loop, &kconf, "chatd-test", TOPIC, g.max_batch,
                                               on_group_batch, &g), 0);
    assert_true(run_until(group_owns_all, &g, WAIT_MS));
    pc.acked = 0;
    for (int q = 0; q < NPART; q++)
        assert_int_equal(produce(p, &pc, q, NULL, "marker", 1, 'x', NULL), 0);
    assert_true(run_until(group_got_markers, &g, WAIT_MS));
    run_until(NULL, NULL, 300);
    assert_int_equal(g.markers, NPART);
    assert_int_equal(g.others, 0);
    assert_int_equal(g.n, 0);
    assert_int_equal(pc.acked, NPART);
    kafka_consumer_close(g.c);
    kafka_producer_close(p, 5000);
    settle();
}

/* ---- assigned consumer: starts at the end; hold ---- */

struct asg_ctx {
    kafka_consumer_t *c;
    int32_t partition;
    int probes, after, early, wrong_part;
    int next_after;
    int hold_after_first;    /* hold test: hold once after the first "h-" batch */
    int held, held_deliveries, batches;
    int was_held, unheld;
    uint64_t free_wait_ns;   /* longest batch_got -> callback before any hold */
    uint64_t unheld_wait_ns; /* the same for the first batch after the hold */
};

static void on_asg_batch(kafka_consumer_t *c, const struct kafka_rec *recs, size_t n, void *user)
{
    struct asg_ctx *a = user;
    int saw_h = 0;
    uint64_t wait = uv_hrtime() - kafka_consumer_batch_got_ns(c);
    if (!a->was_held && wait > a->free_wait_ns)
        a->free_wait_ns = wait;
    if (a->unheld && !a->unheld_wait_ns)
        a->unheld_wait_ns = wait;
    if (a->held)
        a->held_deliveries++;
    a->batches++;
    for (size_t k = 0; k < n; k++) {
        const struct kafka_rec *r = &recs[k];
        int i;
        char val[64];
        if (r->partition != a->partition)
            a->wrong_part++;
        snprintf(val, sizeof val, "%.*s", (int)r->val_len, r->val);
        if (strcmp(val, "probe") == 0) {
            a->probes++;
        } else if (sscanf(val, "h-%d", &i) == 1 || sscanf(val, "after-%d", &i) == 1) {
            if (i != a->next_after)
                a->early++; /* out of order or missing */
            a->next_after = i + 1;
            a->after++;
            saw_h = val[0] == 'h';
        } else {
            a->early++; /* produced before the consumer was assigned */
        }
    }
    if (a->hold_after_first && saw_h) {
        a->hold_after_first = 0;
        a->held = a->was_held = 1;
        kafka_consumer_hold(c, 1);
    }
}

struct probe_ctx {
    kafka_producer_t *p;
    struct prod_ctx *pc;
    struct asg_ctx *a;
    uint64_t last;
};

/* The END offset is looked up asynchronously after assign: keep producing
 * probes until one arrives, then the consumer is positioned. */
static int positioned(void *arg)
{
    struct probe_ctx *pr = arg;
    if (pr->a->probes > 0)
        return 1;
    if (uv_now(&loop) - pr->last >= 100) {
        pr->last = uv_now(&loop);
        assert_int_equal(produce(pr->p, pr->pc, pr->a->partition, NULL, "probe", 1, 'p', NULL), 0);
    }
    return 0;
}

static int asg_got(void *arg) { return ((struct asg_ctx *)arg)->after >= 100; }
static int asg_got50(void *arg) { return ((struct asg_ctx *)arg)->after >= 50; }
static int asg_held(void *arg) { return ((struct asg_ctx *)arg)->held; }

static void test_assigned_from_end(void **state)
{
    (void)state;
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };
    struct asg_ctx a = { .partition = 2 };
    struct probe_ctx pr = { 0 };
    char val[32];

    assert_int_equal(kafka_producer_init(&p, &loop, &kconf), 0);
    /* partition 2 already holds records from the round trip test */
    assert_int_equal(kafka_consumer_init_assigned(&a.c, &loop, &kconf, TOPIC, 2, 16, on_asg_batch,
                                                  &a), 0);
    assert_true(kafka_consumer_owns(a.c, 2));
    assert_false(kafka_consumer_owns(a.c, 1));
    assert_int_equal(kafka_consumer_commit(a.c, 2, 1), ERR_BAD_REQUEST);
    pr = (struct probe_ctx){ p, &pc, &a, 0 };
    assert_true(run_until(positioned, &pr, WAIT_MS));
    for (int i = 0; i < 100; i++) {
        snprintf(val, sizeof val, "after-%d", i);
        assert_int_equal(produce(p, &pc, 2, "k", val, 1, 'm', NULL), 0);
    }
    assert_true(run_until(asg_got, &a, WAIT_MS));
    assert_int_equal(a.after, 100);
    assert_int_equal(a.early, 0);
    assert_int_equal(a.wrong_part, 0);
    kafka_consumer_close(a.c);
    kafka_producer_close(p, 5000);
    assert_int_equal(pc.failed, 0);
    settle();
}

static void test_hold(void **state)
{
    (void)state;
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };
    struct asg_ctx a = { .partition = 1 };
    struct probe_ctx pr;
    char val[32];

    assert_int_equal(kafka_producer_init(&p, &loop, &kconf), 0);
    assert_int_equal(kafka_consumer_init_assigned(&a.c, &loop, &kconf, TOPIC, 1, 10, on_asg_batch,
                                                  &a), 0);
    pr = (struct probe_ctx){ p, &pc, &a, 0 };
    assert_true(run_until(positioned, &pr, WAIT_MS));
    a.hold_after_first = 1;
    for (int i = 0; i < 50; i++) {
        snprintf(val, sizeof val, "h-%d", i);
        assert_int_equal(produce(p, &pc, 1, "k", val, 1, 'm', NULL), 0);
    }
    assert_true(run_until(asg_held, &a, WAIT_MS));
    int seen = a.after;
    assert_true(seen >= 1 && seen <= 10);
    run_until(NULL, NULL, 1000); /* everything is fetched meanwhile, nothing delivered */
    assert_int_equal(a.held_deliveries, 0);
    assert_int_equal(a.after, seen);
    assert_int_equal(pc.failed, 0);

    a.held = 0;
    a.unheld = 1;
    kafka_consumer_hold(a.c, 0);
    assert_true(run_until(asg_got50, &a, 2000)); /* prompt, without a new wake-up */
    assert_int_equal(a.after, 50);
    /* The records waited out the hold: batch_got says so; delivered as they
     * came, they did not wait. */
    assert_true(a.unheld_wait_ns >= 900 * 1000000ull);
    assert_true(a.unheld_wait_ns < 10000 * 1000000ull);
    assert_true(a.free_wait_ns < 100 * 1000000ull);
    assert_int_equal(a.early, 0);
    assert_true(a.batches >= 5);
    kafka_consumer_close(a.c);
    kafka_producer_close(p, 5000);
    settle();
}

/* ---- close: every accepted record gets its callback ---- */

static void test_close_calls_pending(void **state)
{
    (void)state;
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };

    assert_int_equal(kafka_producer_init(&p, &loop, &kconf), 0);
    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_down(broker, b, 1), 0);
    assert_int_equal(kafka_broker_set_down(broker, 9, 1), ERR_NOT_FOUND);
    for (int i = 0; i < 20; i++)
        assert_int_equal(produce(p, &pc, -1, "k", "lost", 1, 'm', NULL), 0);
    run_until(NULL, NULL, 100);
    assert_int_equal(pc.acked + pc.failed, 0);
    assert_int_equal(kafka_producer_inflight(p), 20);
    kafka_producer_close(p, 200);
    assert_int_equal(pc.acked + pc.failed, 20);
    assert_int_equal(pc.failed, 20);
    settle();
    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_down(broker, b, 0), 0);
}

/* ---- acked means in the log, on the embedded broker ----
 *
 * librdkafka's idempotent producer, seeing request R1 fail with "possibly
 * persisted" (a timeout, a dropped connection) and a later R2 of the same
 * partition succeed, acknowledges R1's records without resending them: a
 * real broker only appends R2 after R1 (sequence numbers), so R1 must be
 * there (rd_kafka_handle_idempotent_Produce_success -> implicit ack). The
 * mock cluster checks sequences only for transactional producers and
 * appends R2 alone: R1 is acknowledged and never stored. chatd therefore
 * keeps one request in flight on the embedded broker. This test runs the
 * scenario with both settings, so it also shows that it can fail. */

#define IA_N 10

struct ia_ctx {
    kafka_consumer_t *c;
    const char *prefix;
    int seen[IA_N];
    int n, end;
};

static void on_ia_batch(kafka_consumer_t *c, const struct kafka_rec *recs, size_t n, void *user)
{
    struct ia_ctx *x = user;
    size_t plen = strlen(x->prefix);
    (void)c;
    for (size_t k = 0; k < n; k++) {
        char val[64];
        int i;
        if (recs[k].val_len >= sizeof val)
            continue;
        memcpy(val, recs[k].val, recs[k].val_len);
        val[recs[k].val_len] = 0;
        if (strncmp(val, x->prefix, plen) == 0 && strcmp(val + plen, "end") == 0)
            x->end = 1;
        else if (strncmp(val, x->prefix, plen) == 0 && sscanf(val + plen, "%d", &i) == 1 && i >= 0 &&
            i < IA_N && !x->seen[i]++)
            x->n++;
    }
}

static int ia_done(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed >= IA_N;
}

static int ia_end_done(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed > IA_N;
}

static int ia_consumed(void *arg) { return ((struct ia_ctx *)arg)->end; }

/* Acked records of one run that are missing from the log. */
static int ia_run(int embedded, const char *prefix, const char *group)
{
    static const char *opts[] = { "session.timeout.ms=6000", "statistics.interval.ms=500",
                                  "linger.ms=0", "batch.num.messages=1" };
    struct kafka_conf kc = { kafka_broker_bootstraps(broker), opts, 4, "chatd-test-ia", embedded };
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };
    struct ia_ctx x = { .prefix = prefix };
    int timed_out[] = { 7 }; /* REQUEST_TIMED_OUT: possibly persisted */
    char val[32];

    assert_int_equal(kafka_producer_init(&p, &loop, &kc), 0);
    assert_true(run_until(producer_healthy, p, WAIT_MS));
    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_rtt(broker, b, 300), 0);
    assert_int_equal(kafka_broker_push_errors(broker, 0, timed_out, 1), 0);
    for (int i = 0; i < IA_N; i++) {
        snprintf(val, sizeof val, "%s%d", prefix, i);
        assert_int_equal(produce(p, &pc, 3, "ia", val, 1, 'm', NULL), 0);
    }
    assert_true(run_until(ia_done, &pc, WAIT_MS));
    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_rtt(broker, b, 0), 0);
    /* after every record of the run in partition 3: seeing it means the
     * consumer has read all of them */
    snprintf(val, sizeof val, "%send", prefix);
    assert_int_equal(produce(p, &pc, 3, "ia", val, 1, 'm', NULL), 0);
    assert_true(run_until(ia_end_done, &pc, WAIT_MS));
    kafka_producer_close(p, 5000);
    assert_int_equal(pc.failed, 0);
    pc.acked--; /* the end marker */

    /* the whole topic from the start, in a group of its own */
    assert_int_equal(kafka_consumer_init_group(&x.c, &loop, &kconf, group, TOPIC, 100,
                                               on_ia_batch, &x), 0);
    assert_true(run_until(ia_consumed, &x, WAIT_MS));
    kafka_consumer_close(x.c);
    settle();
    return pc.acked - x.n;
}

static void test_acked_is_stored(void **state)
{
    (void)state;
    int lost_five = ia_run(0, "ia5-", "chatd-test-ia5");
    int lost_one = ia_run(1, "ia1-", "chatd-test-ia1");
    log_info("test_acked_is_stored", "lost_in_flight_5=%d lost_in_flight_1=%d", lost_five,
             lost_one);
    assert_int_equal(lost_one, 0);
    /* The control: if this stops losing, librdkafka changed; revisit the
     * in-flight setting in kafka_producer_init. */
    assert_true(lost_five > 0);
}

/* ---- a failed record says whether it may be in the log ----
 *
 * Responses delayed past message.timeout.ms: the first record's request is
 * sent, the broker appends it, its answer comes too late (POSSIBLY_PERSISTED,
 * ERR_IN_DOUBT); the records queued behind it (one request in flight on the
 * embedded broker) are never sent (NOT_PERSISTED, ERR_UNAVAILABLE). Then
 * the log is read: the in-doubt record is there, the others are not. */

#define DBT_N 3

static int all_acked_one(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed >= 1;
}

static int dbt_done(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed >= DBT_N;
}

static int dbt_end_done(void *arg)
{
    struct prod_ctx *pc = arg;
    return pc->acked + pc->failed > DBT_N;
}

static void test_delivery_in_doubt(void **state)
{
    (void)state;
    static const char *opts[] = { "message.timeout.ms=1500", "linger.ms=0",
                                  "statistics.interval.ms=500" };
    struct kafka_conf kc = { kafka_broker_bootstraps(broker), opts, 3, "chatd-test-dbt", 1 };
    kafka_producer_t *p;
    struct prod_ctx warm = { 0 }, pc = { 0 };
    struct ia_ctx x = { .prefix = "dbt-" };
    char val[32];

    assert_int_equal(kafka_delivery_err(0, RD_KAFKA_MSG_STATUS_PERSISTED), 0);
    assert_int_equal(kafka_delivery_err(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
                                        RD_KAFKA_MSG_STATUS_NOT_PERSISTED), ERR_UNAVAILABLE);
    assert_int_equal(kafka_delivery_err(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
                                        RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED), ERR_IN_DOUBT);
    assert_int_equal(kafka_delivery_err(RD_KAFKA_RESP_ERR__TRANSPORT,
                                        RD_KAFKA_MSG_STATUS_PERSISTED), ERR_IN_DOUBT);
    assert_string_equal(err_code(ERR_IN_DOUBT), "unavailable");

    assert_int_equal(kafka_producer_init(&p, &loop, &kc), 0);
    assert_true(run_until(producer_healthy, p, WAIT_MS));
    /* metadata and connection first: the delay must hit the produce itself */
    assert_int_equal(produce(p, &warm, 2, "dbt", "dbt-warm", 1, 'm', NULL), 0);
    assert_true(run_until(all_acked_one, &warm, WAIT_MS));
    assert_int_equal(warm.acked, 1);

    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_rtt(broker, b, 4000), 0);
    for (int i = 0; i < DBT_N; i++) {
        snprintf(val, sizeof val, "dbt-%d", i);
        assert_int_equal(produce(p, &pc, 2, "dbt", val, 1, 'm', NULL), 0);
        if (i == 0) /* its request on the wire before the others are queued */
            run_until(NULL, NULL, 300);
    }
    assert_true(run_until(dbt_done, &pc, WAIT_MS));
    for (int b = 1; b <= 3; b++)
        assert_int_equal(kafka_broker_set_rtt(broker, b, 0), 0);
    log_info("test_delivery_in_doubt", "acked=%d failed=%d in_doubt=%d", pc.acked, pc.failed,
             pc.in_doubt);
    assert_int_equal(pc.acked, 0);
    assert_int_equal(pc.failed, DBT_N);
    assert_int_equal(pc.in_doubt, 1);

    /* after the run in partition 2: seeing it means all of it was read */
    assert_int_equal(produce(p, &pc, 2, "dbt", "dbt-end", 1, 'm', NULL), 0);
    assert_true(run_until(dbt_end_done, &pc, WAIT_MS));
    assert_int_equal(pc.acked, 1);
    kafka_producer_close(p, 5000);

    assert_int_equal(kafka_consumer_init_group(&x.c, &loop, &kconf, "chatd-test-dbt", TOPIC, 100,
                                               on_ia_batch, &x), 0);
    assert_true(run_until(ia_consumed, &x, WAIT_MS));
    kafka_consumer_close(x.c);
    settle();
    assert_int_equal(x.n, 1);    /* the in-doubt record was written... */
    assert_int_equal(x.seen[0], 1); /* ...and it is the first, the one sent */
}

static void test_bootstrap_file(void **state)
{
    (void)state;
    char path[] = "/tmp/chatd-test-bootstrap-XXXXXX";
    char buf[512];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(kafka_broker_write_bootstrap(broker, path), 0);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    unlink(path);
    buf[n] = 0;
    assert_string_equal(buf, kafka_broker_bootstraps(broker));
    assert_non_null(strstr(buf, "127.0.0.1:"));
}

static int group_setup(void **state)
{
    (void)state;
    struct kafka_topic_spec topics[] = { { TOPIC, NPART } };
    log_init(LOG_LVL_INFO, "test", -1);
    if (uv_loop_init(&loop) != 0)
        return -1;
    if (kafka_broker_start(&broker, 3, topics, 1) != 0)
        return -1;
    kconf = (struct kafka_conf){ kafka_broker_bootstraps(broker), test_opts, 2, "chatd-test" };
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    kafka_broker_stop(broker);
    settle();
    int r = uv_loop_close(&loop);
    metrics_free();
    return r == 0 ? 0 : -1;
}

static int asg_got2(void *arg) { return ((struct asg_ctx *)arg)->after >= 2; }

/* A hold woken by stats events only (500 ms here), then resumed with no
 * record queued: the record produced seconds later is dated from its own
 * arrival, not from that hold (it was 4 s old by kafka_consumer_batch_got_ns
 * before the stamp was cleared on an emptied queue; found by a review). */
static void test_hold_without_records_leaves_no_stamp(void **state)
{
    (void)state;
    kafka_producer_t *p;
    struct prod_ctx pc = { 0 };
    struct asg_ctx a = { .partition = 1 };
    assert_int_equal(kafka_producer_init(&p, &loop, &kconf), 0);
    assert_int_equal(kafka_consumer_init_assigned(&a.c, &loop, &kconf, TOPIC, 1, 10, on_asg_batch,
                                                  &a), 0);
    struct probe_ctx pr = { p, &pc, &a, 0 };
    assert_true(run_until(positioned, &pr, WAIT_MS));
    run_until(NULL, NULL, 300);
    a.hold_after_first = 1;
    assert_int_equal(produce(p, &pc, 1, "k", "h-0", 1, 'm', NULL), 0);
    assert_true(run_until(asg_held, &a, WAIT_MS));
    run_until(NULL, NULL, 1200); /* stats events while held, no records */
    a.held = 0;
    a.unheld = 1;
    kafka_consumer_hold(a.c, 0);
    run_until(NULL, NULL, 3000); /* idle, not held */
    assert_int_equal(a.after, 1);
    assert_int_equal(produce(p, &pc, 1, "k", "h-1", 1, 'm', NULL), 0);
    assert_true(run_until(asg_got2, &a, WAIT_MS));
    assert_true(a.unheld_wait_ns < 1000 * 1000000ull);
    kafka_consumer_close(a.c);
    kafka_producer_close(p, 5000);
    settle();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_opt),
        cmocka_unit_test(test_producer_linger),
        cmocka_unit_test(test_bootstrap_file),
        cmocka_unit_test(test_roundtrip_and_commit),
        cmocka_unit_test(test_assigned_from_end),
        cmocka_unit_test(test_hold),
        cmocka_unit_test(test_hold_without_records_leaves_no_stamp),
        cmocka_unit_test(test_close_calls_pending),
        cmocka_unit_test(test_acked_is_stored),
        cmocka_unit_test(test_delivery_in_doubt),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
