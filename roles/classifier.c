#include "roles/classifier.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "net/proto.h"
#include "store/db.h"
#include "store/pg.h"

/* One record of the batch, copied out of librdkafka's buffers. */
struct cl_item {
    char type;
    int32_t partition;
    int64_t offset;
    char room[PROTO_ROOM_MAX + 1];
    char user[72];              /* member events: who joined or left */
    char *val;
    size_t val_len;
    struct chat_msg msg;        /* REC_MSG: decoded from val */
    void *owner;
    int skip;                   /* undecodable: logged, committed, dropped */
    int need_seed;
    int dup;                    /* had a seq already: stored again, not delivered again */
    int *gws;
    size_t n_gws;
};

enum cl_phase { CL_ROUTE, CL_SEED, CL_STORE, CL_PRODUCE };

struct classifier {
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_producer_t *producer;
    kafka_consumer_t *consumer;
    routes_t *routes;
    redis_client_t *redis;
    pg_client_t *pg;
    int draining;
    /* the batch in flight */
    struct cl_item *items;
    size_t n_items;
    enum cl_phase phase;
    int pending;
    int err;
    int attempt;
    uint64_t started_ms;
    uv_timer_t retry;
    struct {
        metric_t *batches, *records, *sequenced, *dups, *deliveries, *retries, *skipped;
        metric_t *batch_seconds, *sequence_seconds;
    } m;
};

static uint64_t cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void cl_run(classifier_t *c);
static void cl_seed(classifier_t *c);

static void cl_batch_free(classifier_t *c)
{
    for (size_t i = 0; i < c->n_items; i++) {
        record_decoded_free(c->items[i].owner);
        free(c->items[i].val);
        free(c->items[i].gws);
    }
    free(c->items);
    c->items = NULL;
    c->n_items = 0;
}

static void cl_on_retry(uv_timer_t *t) { cl_run(t->data); }

/* A step failed: the whole batch is retried, every step being idempotent. */
static void cl_fail(classifier_t *c, const char *step, int err)
{
    unsigned delay = 100u << (c->attempt < 6 ? c->attempt : 6);
    c->attempt++;
    metric_inc(c->m.retries);
    log_warn("batch_retry", "step=%s err=%s attempt=%d records=%zu delay_ms=%u", step,
             err_code(err), c->attempt, c->n_items, delay);
    uv_timer_start(&c->retry, cl_on_retry, delay, 0);
}

static void cl_commit(classifier_t *c)
{
    /* Offsets rise within a partition: commit each partition's last + 1. */
    for (size_t i = 0; i < c->n_items; i++) {
        const struct cl_item *it = &c->items[i];
        size_t j = i + 1;
        while (j < c->n_items && c->items[j].partition != it->partition)
            j++;
        if (j == c->n_items && kafka_consumer_owns(c->consumer, it->partition))
            kafka_consumer_commit(c->consumer, it->partition, it->offset + 1);
    }
    metric_observe(c->m.batch_seconds, (double)(cl_now_ms() - c->started_ms) / 1000.0);
    cl_batch_free(c);
    c->attempt = 0;
    if (!c->draining)
        kafka_consumer_hold(c->consumer, 0);
}

/* ---- 4. produce to chat-receive ---- */

static void cl_on_delivered(int err, void *opaque)
{
    classifier_t *c = opaque;
    if (err)
        c->err = err;
    if (--c->pending > 0)
        return;
    if (c->err)
        cl_fail(c, "produce", c->err);
    else
        cl_commit(c);
}

static void cl_produce_one(classifier_t *c, const struct cl_item *it, const char *val, size_t len)
{
    struct kafka_hdrs h = { .version = RECORD_VERSION, .type = it->type };
    if (it->user[0]) {
        h.user = it->user;
        h.user_len = strlen(it->user);
    }
    for (size_t k = 0; k < it->n_gws; k++) {
        int rc = kafka_produce(c->producer, c->conf->topic_receive, it->gws[k], it->room,
                               strlen(it->room), val, len, &h, cl_on_delivered, c);
        if (rc)
            c->err = rc;
        else
            c->pending++;
    }
}

static void cl_produce(classifier_t *c)
{
    c->phase = CL_PRODUCE;
    c->err = 0;
    c->pending = 1; /* held until every record is handed over */
    uint64_t now = cl_now_ms();
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        /* A dup is a resent cid (never delivered twice) or a re-consumed
         * record (its live delivery may be lost; clients recover by sync). */
        if (it->skip || it->dup)
            continue;
        if (it->type != REC_MSG) {
            cl_produce_one(c, it, it->val, it->val_len);
            continue;
        }
        size_t len;
        char *frame = record_msg_frame(&it->msg, &len);
        if (!frame) {
            c->err = ERR_NOMEM;
            break;
        }
        cl_produce_one(c, it, frame, len);
        free(frame);
        if (now >= (uint64_t)it->msg.ts)
            metric_observe(c->m.sequence_seconds, (double)(now - (uint64_t)it->msg.ts) / 1000.0);
        metric_add(c->m.deliveries, (double)it->n_gws);
    }
    cl_on_delivered(0, c);
}

/* ---- 3. store ---- */

static void cl_on_stored(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    (void)res;
    if (err)
        cl_fail(c, "store", err);
    else
        cl_produce(c);
}

static void cl_store(classifier_t *c)
{
    c->phase = CL_STORE;
    const struct chat_msg **msgs = calloc(c->n_items, sizeof *msgs);
    CHATD_ASSERT(msgs != NULL);
    size_t n = 0;
    for (size_t i = 0; i < c->n_items; i++)
        if (!c->items[i].skip && c->items[i].type == REC_MSG)
            msgs[n++] = &c->items[i].msg;
    if (n == 0) {
        free(msgs);
        cl_produce(c);
        return;
    }
    metric_add(c->m.sequenced, (double)n);
    db_store_msgs(c->pg, msgs, n, cl_on_stored, c);
    free(msgs);
}

/* ---- 1. and 2. seqs and routes ---- */

struct cl_ref {
    classifier_t *c;
    size_t i;
};

static void cl_route_done(classifier_t *c)
{
    if (--c->pending > 0)
        return;
    if (c->err) {
        cl_fail(c, c->phase == CL_SEED ? "seed" : "route", c->err);
        return;
    }
    int seed = 0;
    for (size_t i = 0; i < c->n_items && !seed; i++)
        seed = c->items[i].need_seed;
    if (!seed) {
        cl_store(c);
        return;
    }
    if (c->phase == CL_SEED) { /* seeded yet still missing: Redis lost it again */
        cl_fail(c, "seed", ERR_UNAVAILABLE);
        return;
    }
    cl_seed(c);
}

static void cl_on_assigned(int err, int64_t seq, int dup, const int *gws, size_t n, void *ud)
{
    struct cl_ref *ref = ud;
    classifier_t *c = ref->c;
    struct cl_item *it = &c->items[ref->i];
    free(ref);
    if (err) {
        c->err = err;
    } else if (seq < 0) {
        it->need_seed = 1;
    } else {
        it->need_seed = 0;
        it->msg.seq = seq;
        it->dup = dup;
        if (dup)
            metric_inc(c->m.dups);
        free(it->gws);
        it->gws = malloc((n ? n : 1) * sizeof *gws);
        CHATD_ASSERT(it->gws != NULL);
        memcpy(it->gws, gws, n * sizeof *gws);
        it->n_gws = n;
    }
    cl_route_done(c);
}

static void cl_on_dests(int err, const int *gws, size_t n, void *ud)
{
    cl_on_assigned(err, 0, 0, gws, n, ud);
}

static struct cl_ref *cl_ref_new(classifier_t *c, size_t i)
{
    struct cl_ref *r = malloc(sizeof *r);
    CHATD_ASSERT(r != NULL);
    r->c = c;
    r->i = i;
    return r;
}

struct cl_seed_req {
    classifier_t *c;
    char room[PROTO_ROOM_MAX + 1];
};

static void cl_on_max_seq(int err, PGresult *res, void *ud)
{
    struct cl_seed_req *s = ud;
    classifier_t *c = s->c;
    if (err) {
        c->err = err;
    } else {
        int64_t max = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        log_info("room_seq_seeded", "room=%s seq=%" PRId64, s->room, max);
        /* In order, so the room's seqs follow the batch's offsets. */
        for (size_t i = 0; i < c->n_items; i++) {
            struct cl_item *it = &c->items[i];
            if (it->need_seed && !strcmp(it->room, s->room)) {
                c->pending++;
                routes_assign(c->routes, it->room, it->msg.id, max, cl_on_assigned, cl_ref_new(c, i));
            }
        }
    }
    free(s);
    cl_route_done(c);
}

static void cl_seed(classifier_t *c)
{
    c->phase = CL_SEED;
    c->pending = 1;
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        int first = it->need_seed;
        for (size_t j = 0; j < i && first; j++)
            first = !(c->items[j].need_seed && !strcmp(c->items[j].room, it->room));
        if (!first)
            continue;
        struct cl_seed_req *s = calloc(1, sizeof *s);
        CHATD_ASSERT(s != NULL);
        s->c = c;
        strcpy(s->room, it->room);
        c->pending++;
        db_max_seq(c->pg, it->room, cl_on_max_seq, s);
    }
    cl_route_done(c);
}

static void cl_run(classifier_t *c)
{
    if (!routes_live_known(c->routes)) { /* routes would all look dead */
        uv_timer_start(&c->retry, cl_on_retry, 200, 0);
        return;
    }
    c->phase = CL_ROUTE;
    c->err = 0;
    c->pending = 1;
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        if (it->skip)
            continue;
        c->pending++;
        if (it->type == REC_MSG)
            routes_assign(c->routes, it->room, it->msg.id, -1, cl_on_assigned, cl_ref_new(c, i));
        else
            routes_dests(c->routes, it->room, it->user[0] ? it->user : NULL, cl_on_dests,
                         cl_ref_new(c, i));
    }
    cl_route_done(c);
}

/* ---- batches in ---- */

static void cl_item_load(classifier_t *c, struct cl_item *it, const struct kafka_rec *rec)
{
    it->type = rec->type;
    it->partition = rec->partition;
    it->offset = rec->offset;
    it->skip = 1;
    if (rec->version > RECORD_VERSION || rec->key_len == 0 || rec->key_len > PROTO_ROOM_MAX ||
        !strchr("mejl", rec->type ? rec->type : 'x') || rec->user_len >= sizeof it->user) {
        metric_inc(c->m.skipped);
        log_warn("record_skipped", "partition=%d offset=%" PRId64 " version=%d type=%d",
                 rec->partition, rec->offset, rec->version, rec->type);
        return;
    }
    memcpy(it->room, rec->key, rec->key_len);
    it->room[rec->key_len] = 0;
    if (rec->user) {
        memcpy(it->user, rec->user, rec->user_len);
        it->user[rec->user_len] = 0;
    }
    it->val = malloc(rec->val_len + 1);
    CHATD_ASSERT(it->val != NULL);
    memcpy(it->val, rec->val, rec->val_len);
    it->val[rec->val_len] = 0;
    it->val_len = rec->val_len;
    if (it->type == REC_MSG &&
        record_send_decode(it->room, rec->key_len, it->val, it->val_len, &it->msg, &it->owner)) {
        metric_inc(c->m.skipped);
        log_error("record_undecodable", "partition=%d offset=%" PRId64 " room=%s", rec->partition,
                  rec->offset, it->room);
        return;
    }
    it->skip = 0;
}

static void cl_on_batch(kafka_consumer_t *kc, const struct kafka_rec *recs, size_t n, void *user)
{
    classifier_t *c = user;
    CHATD_ASSERT(c->items == NULL);
    kafka_consumer_hold(kc, 1);
    c->items = calloc(n, sizeof *c->items);
    CHATD_ASSERT(c->items != NULL);
    c->n_items = n;
    c->started_ms = cl_now_ms();
    for (size_t i = 0; i < n; i++)
        cl_item_load(c, &c->items[i], &recs[i]);
    metric_inc(c->m.batches);
    metric_add(c->m.records, (double)n);
    cl_run(c);
}

/* ---- lifecycle ---- */

int classifier_init(classifier_t **out, const struct classifier_deps *d)
{
    classifier_t *c = calloc(1, sizeof *c);
    if (!c)
        return ERR_NOMEM;
    c->loop = d->loop;
    c->conf = d->conf;
    c->producer = d->producer;
    c->routes = d->routes;
    c->redis = d->redis;
    c->m.batches = metrics_counter("chatd_classifier_batches_total", "batches processed", NULL);
    c->m.records = metrics_counter("chatd_classifier_records_total", "chat-send records consumed", NULL);
    c->m.sequenced = metrics_counter("chatd_classifier_messages_total", "messages sequenced and stored (with re-consumed ones)", NULL);
    c->m.dups = metrics_counter("chatd_classifier_duplicates_total", "messages that already had a seq (re-consumed or resent cid)", NULL);
    c->m.deliveries = metrics_counter("chatd_classifier_deliveries_total", "chat-receive records produced for messages", NULL);
    c->m.retries = metrics_counter("chatd_classifier_retries_total", "batch retries after a backend error", NULL);
    c->m.skipped = metrics_counter("chatd_classifier_records_skipped_total", "records of an unknown version or undecodable", NULL);
    c->m.batch_seconds = metrics_histogram("chatd_classifier_batch_seconds", "time to process one batch", NULL);
    c->m.sequence_seconds = metrics_histogram("chatd_sequence_latency_seconds", "gateway receive to classifier produce", NULL);
    int rc = pg_client_init(&c->pg, d->loop, d->conf->pg, (unsigned)d->conf->backend_timeout_ms);
    if (rc == 0)
        rc = kafka_consumer_init_group(&c->consumer, d->loop, d->kafka, d->conf->group_id,
                                       d->conf->topic_send, (size_t)d->conf->classifier_batch,
                                       cl_on_batch, c);
    if (rc) {
        log_error("classifier_init_failed", "err=%s", err_code(rc));
        if (c->pg)
            pg_client_close(c->pg);
        free(c);
        return rc;
    }
    uv_timer_init(d->loop, &c->retry);
    c->retry.data = c;
    log_info("classifier_started", "group=%s topic=%s", d->conf->group_id, d->conf->topic_send);
    *out = c;
    return 0;
}

int classifier_ready(const classifier_t *c)
{
    return !c->draining && redis_client_ready(c->redis) && pg_client_ready(c->pg) &&
           kafka_producer_healthy(c->producer) && kafka_consumer_healthy(c->consumer);
}

void classifier_drain(classifier_t *c)
{
    c->draining = 1;
    if (!c->items)
        kafka_consumer_hold(c->consumer, 1);
}

int classifier_busy(const classifier_t *c) { return c->items != NULL; }

static void cl_on_timer_closed(uv_handle_t *h)
{
    classifier_t *c = h->data;
    cl_batch_free(c);
    free(c);
}

void classifier_close(classifier_t *c)
{
    kafka_consumer_close(c->consumer);
    pg_client_close(c->pg);
    uv_close((uv_handle_t *)&c->retry, cl_on_timer_closed);
}
