#include "roles/classifier.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uthash.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "net/auth.h"
#include "net/proto.h"
#include "store/db.h"
#include "store/pg.h"

/* One record of the batch, copied out of librdkafka's buffers. */
struct cl_item {
    char type;
    int32_t partition;
    int64_t offset;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1]; /* member events: who joined or left */
    char *val;
    size_t val_len;
    struct chat_msg msg;          /* REC_MSG: decoded from val */
    void *owner;
    int skip;                     /* undecodable: logged, committed, dropped */
    int64_t known;                /* seq PostgreSQL has for this id, or -1 */
    int dup;                      /* ROUTES_DUP_* from the assign script */
    int *gws;
    size_t n_gws;
};

/* A room of the batch and its max stored seq. */
struct cl_room {
    const char *name;             /* points into an item */
    int64_t floor;
    UT_hash_handle hh;
};

struct classifier {
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_producer_t *producer;
    kafka_consumer_t *consumer;
    routes_t *routes;
    redis_client_t *redis;
    pg_client_t *pg;
    int draining, closing;
    /* the batch in flight */
    struct cl_item *items;
    size_t n_items;
    struct cl_room *rooms;
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

static void cl_batch_free(classifier_t *c)
{
    struct cl_room *r, *tmp;
    HASH_ITER(hh, c->rooms, r, tmp) {
        HASH_DEL(c->rooms, r);
        free(r);
    }
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
    if (c->closing)
        return;
    unsigned delay = 100u << (c->attempt < 6 ? c->attempt : 6);
    c->attempt++;
    metric_inc(c->m.retries);
    log_warn("batch_retry", "step=%s err=%s attempt=%d records=%zu delay_ms=%u", step,
             err_code(err), c->attempt, c->n_items, delay);
    uv_timer_start(&c->retry, cl_on_retry, delay, 0);
}

/* ---- 5. commit ---- */

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
    if (--c->pending > 0 || c->closing)
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
    c->err = 0;
    c->pending = 1; /* held until every record is handed over */
    uint64_t now = cl_now_ms();
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        /* A resent cid is never delivered twice. */
        if (it->skip || it->dup == ROUTES_DUP_OTHER)
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
    if (c->closing)
        return;
    if (err)
        cl_fail(c, "store", err);
    else
        cl_produce(c);
}

static void cl_store(classifier_t *c)
{
    const struct chat_msg **msgs = calloc(c->n_items, sizeof *msgs);
    CHATD_ASSERT(msgs != NULL);
    size_t n = 0, fresh = 0;
    for (size_t i = 0; i < c->n_items; i++) {
        const struct cl_item *it = &c->items[i];
        if (it->skip || it->type != REC_MSG || it->dup == ROUTES_DUP_OTHER)
            continue;
        msgs[n++] = &it->msg;
        fresh += it->dup == 0;
    }
    metric_add(c->m.sequenced, (double)fresh);
    if (n == 0)
        cl_produce(c);
    else
        db_store_msgs(c->pg, msgs, n, cl_on_stored, c);
    free(msgs);
}

/* ---- 2. seqs and routes (Redis) ---- */

struct cl_ref {
    classifier_t *c;
    size_t i;
};

static struct cl_ref *cl_ref_new(classifier_t *c, size_t i)
{
    struct cl_ref *r = malloc(sizeof *r);
    CHATD_ASSERT(r != NULL);
    r->c = c;
    r->i = i;
    return r;
}

static void cl_route_done(classifier_t *c)
{
    if (--c->pending > 0 || c->closing)
        return;
    if (c->err)
        cl_fail(c, "route", c->err);
    else
        cl_store(c);
}

static void cl_on_assigned(int err, int64_t seq, int dup, const int *gws, size_t n, void *ud)
{
    struct cl_ref *ref = ud;
    classifier_t *c = ref->c;
    struct cl_item *it = &c->items[ref->i];
    free(ref);
    if (err) {
        c->err = err;
    } else {
        it->msg.seq = seq;
        it->dup = dup;
        if (dup == ROUTES_DUP_OTHER)
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

static void cl_route(classifier_t *c)
{
    c->err = 0;
    c->pending = 1;
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        if (it->skip)
            continue;
        c->pending++;
        if (it->type != REC_MSG) {
            routes_dests(c->routes, it->room, it->user[0] ? it->user : NULL, cl_on_dests,
                         cl_ref_new(c, i));
            continue;
        }
        struct cl_room *r;
        char tag[40];
        HASH_FIND_STR(c->rooms, it->room, r);
        CHATD_ASSERT(r != NULL);
        snprintf(tag, sizeof tag, "%d:%" PRId64, it->partition, it->offset);
        routes_assign(c->routes, it->room, it->msg.id, r->floor, it->known, tag, cl_on_assigned,
                      cl_ref_new(c, i));
    }
    cl_route_done(c);
}

/* ---- 1. what PostgreSQL already has ---- */

static void cl_lookup_done(classifier_t *c)
{
    if (--c->pending > 0 || c->closing)
        return;
    if (c->err)
        cl_fail(c, "lookup", c->err);
    else
        cl_route(c);
}

static void cl_on_rooms_max(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    if (err)
        c->err = err;
    for (int i = 0; !err && i < PQntuples(res); i++) {
        struct cl_room *r;
        HASH_FIND_STR(c->rooms, PQgetvalue(res, i, 0), r);
        if (r)
            r->floor = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    cl_lookup_done(c);
}

static void cl_on_known_ids(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    if (err)
        c->err = err;
    /* Few rows in the common case (only re-consumed or resent messages). */
    for (int i = 0; !err && i < PQntuples(res); i++)
        for (size_t k = 0; k < c->n_items; k++) {
            struct cl_item *it = &c->items[k];
            if (!it->skip && it->type == REC_MSG && !strcmp(it->msg.id, PQgetvalue(res, i, 1)) &&
                !strcmp(it->room, PQgetvalue(res, i, 0)))
                it->known = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
    cl_lookup_done(c);
}

/* Appends "s" to an array literal. Every element is double-quoted (else a
 * room named NULL would read as SQL NULL); room ids and message ids hold no
 * '"' or '\\' (validated in cl_item_load), so no escaping is needed. */
static void cl_array_add(struct jbuf *b, const char *s)
{
    jbuf_rawz(b, b->len > 1 ? ",\"" : "\"");
    jbuf_rawz(b, s);
    jbuf_rawz(b, "\"");
}

static void cl_lookup(classifier_t *c)
{
    struct jbuf rooms, pairs_r, pairs_i;
    jbuf_init(&rooms, 256);
    jbuf_init(&pairs_r, 256);
    jbuf_init(&pairs_i, 256);
    jbuf_rawz(&rooms, "{");
    jbuf_rawz(&pairs_r, "{");
    jbuf_rawz(&pairs_i, "{");
    for (size_t i = 0; i < c->n_items; i++) {
        struct cl_item *it = &c->items[i];
        it->known = -1;
        if (it->skip || it->type != REC_MSG)
            continue;
        struct cl_room *r;
        HASH_FIND_STR(c->rooms, it->room, r);
        if (!r) {
            r = calloc(1, sizeof *r);
            CHATD_ASSERT(r != NULL);
            r->name = it->room;
            HASH_ADD_KEYPTR(hh, c->rooms, r->name, strlen(r->name), r);
            cl_array_add(&rooms, it->room);
        }
        cl_array_add(&pairs_r, it->room);
        cl_array_add(&pairs_i, it->msg.id);
    }
    jbuf_rawz(&rooms, "}");
    jbuf_rawz(&pairs_r, "}");
    jbuf_rawz(&pairs_i, "}");
    char *rs = jbuf_take(&rooms, NULL), *ps = jbuf_take(&pairs_r, NULL), *is = jbuf_take(&pairs_i, NULL);
    CHATD_ASSERT(rs && ps && is);
    c->err = 0;
    c->pending = 1;
    if (c->rooms) {
        c->pending += 2;
        db_rooms_max(c->pg, rs, cl_on_rooms_max, c);
        db_known_ids(c->pg, ps, is, cl_on_known_ids, c);
    }
    free(rs);
    free(ps);
    free(is);
    cl_lookup_done(c);
}

static void cl_run(classifier_t *c)
{
    if (c->closing)
        return;
    if (!routes_live_known(c->routes)) { /* every route would look dead */
        uv_timer_start(&c->retry, cl_on_retry, 200, 0);
        return;
    }
    struct cl_room *r, *tmp;
    HASH_ITER(hh, c->rooms, r, tmp) {
        HASH_DEL(c->rooms, r);
        free(r);
    }
    cl_lookup(c);
}

/* ---- batches in ---- */

static int cl_hex(const char *s)
{
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static void cl_item_load(classifier_t *c, struct cl_item *it, const struct kafka_rec *rec)
{
    it->type = rec->type;
    it->partition = rec->partition;
    it->offset = rec->offset;
    it->skip = 1;
    if (rec->version > RECORD_VERSION || !proto_room_valid(rec->key, rec->key_len) ||
        !strchr("mejl", rec->type ? rec->type : 'x') ||
        (rec->user && !auth_user_valid(rec->user, rec->user_len))) {
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
        (record_send_decode(it->room, rec->key_len, it->val, it->val_len, &it->msg, &it->owner) ||
         !cl_hex(it->msg.id) || !auth_user_valid(it->msg.from, strlen(it->msg.from)))) {
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

static void cl_metrics_init(classifier_t *c)
{
    c->m.batches = metrics_counter("chatd_classifier_batches_total", "batches processed", NULL);
    c->m.records = metrics_counter("chatd_classifier_records_total", "chat-send records consumed", NULL);
    c->m.sequenced = metrics_counter("chatd_classifier_messages_total", "messages given a new seq", NULL);
    c->m.dups = metrics_counter("chatd_classifier_duplicates_total", "messages whose id had a seq from another record (resent cid)", NULL);
    c->m.deliveries = metrics_counter("chatd_classifier_deliveries_total", "chat-receive records produced for messages", NULL);
    c->m.retries = metrics_counter("chatd_classifier_retries_total", "batch retries after a backend error", NULL);
    c->m.skipped = metrics_counter("chatd_classifier_records_skipped_total", "records of an unknown version or undecodable", NULL);
    c->m.batch_seconds = metrics_histogram("chatd_classifier_batch_seconds", "time to process one batch", NULL);
    c->m.sequence_seconds = metrics_histogram("chatd_sequence_latency_seconds", "gateway receive to classifier produce", NULL);
}

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
    cl_metrics_init(c);
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

void classifier_close(classifier_t *c)
{
    c->closing = 1;
    if (c->items)
        log_warn("batch_abandoned", "records=%zu note=\"re-consumed by the next owner\"", c->n_items);
    kafka_consumer_close(c->consumer);
    pg_client_close(c->pg);
    uv_close((uv_handle_t *)&c->retry, NULL);
}

void classifier_free(classifier_t *c)
{
    cl_batch_free(c);
    free(c);
}
