#include "roles/classifier.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "net/auth.h"
#include "net/proto.h"
#include "roles/ownership.h"
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
    int lost;                     /* partition possibly lost: dropped, never committed */
    int64_t resume;               /* below the take's next_offset: done if verified (cl_resume_at) */
    int64_t known;                /* seq PostgreSQL has for this id, or -1 */
    int dup;                      /* ROUTES_DUP_* from the assign script */
    char tag[32];                 /* "partition:offset": which record got a seq */
    int *gws;
    size_t n_gws;
};

/* A room of the batch: its max stored seq and its messages, in batch
 * (offset) order, sequenced in one routes_assign call. */
struct cl_room {
    const char *name;             /* points into an item */
    int64_t floor;
    struct cl_batch *b;
    struct routes_assign_item *ai;
    size_t *idx;                  /* ai[k] is items[idx[k]] */
    size_t n, cap;
    UT_hash_handle hh;
};

/* Max stored seq of rooms this classifier has stored into since its last
 * rebalance. Rooms are keyed to chat-send partitions, so while the
 * assignment stays the same nobody else writes these rooms and the figure
 * is what PostgreSQL would answer: a batch asks PostgreSQL only for rooms it
 * has not seen (the per-batch query was a third of PostgreSQL's CPU). Any
 * assign or revoke, fence take or seq collision empties it. It must never
 * be above what PostgreSQL holds: the assign script sets the room's counter
 * to it. */
#define CL_FLOORS_MAX 65536
struct cl_floor {
    int64_t floor;
    UT_hash_handle hh;
    char room[];
};

/* This classifier's hold on a chat-send partition (migrations/002): the
 * epoch it took in PostgreSQL, for the ownership that began at consumer
 * generation `since`. epoch 0: not taken (or refused: taken by another).
 * done: the partition's next offset whose records are all stored and
 * produced in this ownership (or found so in PostgreSQL at the take), 0
 * unknown; the next store writes it beside the epoch (migrations/009). */
struct cl_fence {
    int64_t epoch;
    unsigned since;
    uint64_t refused_ms;          /* when a store was refused (loop clock: a wall clock's step
                                     back stalled the partition as long): wait before retaking */
    int64_t done;
    int64_t saved;                /* done as last written by the flush */
    int64_t saving;               /* done as sent by the flush in flight */
};

/* Where a batch's time goes (chatd_classifier_step_seconds), in its order.
 * PRODUCED and QUEUE are before the batch starts (its oldest record: from
 * its Kafka timestamp, and from when this process had it); FENCE..PRODUCE
 * partition the batch's time of the attempt that succeeded, RETRY holds
 * the attempts that failed and their backoff, so FENCE..RETRY add up to
 * chatd_classifier_batch_seconds. */
enum cl_step {
    CL_STEP_PRODUCED,             /* oldest record's Kafka timestamp -> batch start */
    CL_STEP_QUEUE,                /* oldest record seen waiting here -> batch start */
    CL_STEP_FENCE,                /* start -> lookup sent: a partition's fence take, start-up waits */
    CL_STEP_LOOKUP,               /* PostgreSQL: known ids, rooms' max seqs */
    CL_STEP_SEQUENCE,             /* Redis: seqs assigned, member events' destinations */
    CL_STEP_STORE,                /* PostgreSQL: the store and its commit, edits applied */
    CL_STEP_ROUTE,                /* Redis: the rooms' destinations */
    CL_STEP_ORDER,                /* stored -> produce: the batch before it still being produced */
    CL_STEP_PRODUCE,              /* produce until every record is acked, offsets committed */
    CL_STEP_RETRY,                /* attempts that failed, and the backoff after them */
    CL_STEPS
};
static const char *const cl_step_labels[CL_STEPS] = {
    "step=\"since_produced\"", "step=\"queue\"", "step=\"fence\"", "step=\"lookup\"",
    "step=\"sequence\"", "step=\"store\"", "step=\"route\"", "step=\"order\"",
    "step=\"produce\"", "step=\"retry\"",
};

/* One batch of records and where it is in the pipeline. */
struct cl_batch {
    classifier_t *c;
    struct cl_item *items;        /* NULL: the slot is free */
    size_t n_items;
    struct cl_room *rooms;
    int pending;
    int err;
    int attempt;
    int stored;                   /* sequenced and stored: ready to produce */
    uint64_t t0_ns, mark_ns;      /* its start, the last step's end (uv_hrtime) */
    uint64_t step_ns[CL_STEPS];   /* FENCE..RETRY so far */
    unsigned gen;                 /* consumer generation when the batch arrived */
    uv_timer_t retry;
};

struct classifier {
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_producer_t *producer;
    kafka_consumer_t *consumer;
    ownership_t *own;             /* --ownership=lease, else NULL (the group decides) */
    routes_t *routes;
    redis_client_t *redis;
    pg_client_t *pg;
    int draining, closing;
    int failed;                   /* classifier_fail: batches in flight are abandoned */
    /* Two batches overlap: `out` was produced and waits for its acks while
     * `cur` is sequenced and stored; cur is produced only once out is
     * committed, so chat-receive gets the batches in order. */
    struct cl_batch slot[2];
    struct cl_batch *cur, *out;
    struct cl_floor *floors;
    size_t n_floors;
    struct cl_fence *fences;      /* by partition */
    size_t n_fences;
    char owner[128];              /* host:pid, written with each epoch taken */
    unsigned fence_wait_ms;       /* after a refusal: session.timeout.ms + margin */
    unsigned floors_gen;          /* consumer generation the floors belong to */
    uv_timer_t maintain;          /* messages' partitions (cl_on_maintain_timer) */
    uv_timer_t flush;             /* offsets no store carried (cl_on_flush_timer) */
    int flushing;                 /* a db_offsets_save in flight */
    pg_client_t *upkeep_pg;       /* the months' compaction (its copy takes seconds to minutes:
                                     not on the stores' connection); NULL with --compact-after=0 */
    struct {                      /* the month being put in room order, after the retention */
        uint64_t t0, step_t0;     /* its first step's and this step's start (loop ms) */
        uint64_t copy_ms;
        int tries;                /* swaps that did not get their lock */
    } compact;
    struct {                      /* the rooms' own retention, after the partitions */
        char *after;              /* the next step's cursor (a room id) or NULL; owned */
        int64_t deleted;
        int rooms, steps;
    } expire;
    struct {
        metric_t *batches, *records, *sequenced, *dups, *deliveries, *retries, *skipped;
        metric_t *collisions, *fenced, *lost, *resumed;
        metric_t *batch_seconds, *sequence_seconds;
        metric_t *step[CL_STEPS];
    } m;
};

static uint64_t cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One clock read per step per batch: the time since the last step's end
 * goes to step. */
static void cl_step(struct cl_batch *b, enum cl_step step)
{
    uint64_t now = uv_hrtime();
    b->step_ns[step] += now - b->mark_ns;
    b->mark_ns = now;
}

static void cl_run(struct cl_batch *b);
static void cl_on_flush_timer(uv_timer_t *t);
static void cl_resume_check(struct cl_batch *b);

/* A store carries the offsets done before it; what the last batches before
 * a pause did is written once the partition has been quiet this long, so
 * a new owner re-reads nothing of a quiet partition. Restarted by every
 * batch: under steady traffic the stores carry them and this never runs. */
#define CL_FLUSH_MS 1000

static void cl_floors_clear(classifier_t *c)
{
    struct cl_floor *f, *tmp;
    HASH_ITER(hh, c->floors, f, tmp) {
        HASH_DEL(c->floors, f);
        free(f);
    }
    c->n_floors = 0;
}

/* The cached floor of room, or -1 when PostgreSQL must be asked. */
static int64_t cl_floor_get(struct cl_batch *b, const char *room)
{
    classifier_t *c = b->c;
    if (c->floors_gen != b->gen) {
        cl_floors_clear(c);
        c->floors_gen = b->gen;
    }
    struct cl_floor *f;
    HASH_FIND_STR(c->floors, room, f);
    return f ? f->floor : -1;
}

static void cl_floor_raise(struct cl_batch *b, const char *room, int64_t seq)
{
    classifier_t *c = b->c;
    struct cl_floor *f;
    if (c->floors_gen != b->gen ||
        kafka_consumer_generation(c->consumer) != b->gen)
        return; /* a rebalance happened meanwhile: learn nothing */
    HASH_FIND_STR(c->floors, room, f);
    if (!f) {
        if (c->n_floors >= CL_FLOORS_MAX) /* rare: many rooms, one assignment */
            cl_floors_clear(c);
        size_t len = strlen(room);
        f = malloc(sizeof *f + len + 1);
        CHATD_ASSERT(f != NULL);
        memcpy(f->room, room, len + 1);
        f->floor = seq;
        HASH_ADD(hh, c->floors, room[0], len, f);
        c->n_floors++;
    } else if (seq > f->floor) {
        f->floor = seq;
    }
}

static void cl_rooms_clear(struct cl_batch *b)
{
    struct cl_room *r, *tmp;
    HASH_ITER(hh, b->rooms, r, tmp) {
        HASH_DEL(b->rooms, r);
        free(r->ai);
        free(r->idx);
        free(r);
    }
}

static struct cl_fence *cl_fence_of(classifier_t *c, int32_t p)
{
    if ((size_t)p >= c->n_fences) {
        size_t n = (size_t)p + 1;
        struct cl_fence *f = realloc(c->fences, n * sizeof *f);
        CHATD_ASSERT(f != NULL);
        memset(f + c->n_fences, 0, (n - c->n_fences) * sizeof *f);
        c->fences = f;
        c->n_fences = n;
    }
    return &c->fences[p];
}

static void cl_batch_free(struct cl_batch *b)
{
    cl_rooms_clear(b);
    for (size_t i = 0; i < b->n_items; i++) {
        record_decoded_free(b->items[i].owner);
        free(b->items[i].val);
        free(b->items[i].gws);
    }
    free(b->items);
    b->items = NULL;
    b->n_items = 0;
}

static void cl_on_retry(uv_timer_t *t) { cl_run(t->data); }

static void cl_on_backoff(uv_timer_t *t)
{
    cl_step(t->data, CL_STEP_RETRY);
    cl_run(t->data);
}

/* A step failed: the whole batch is retried, every step being idempotent. */
static void cl_fail(struct cl_batch *b, const char *step, int err)
{
    classifier_t *c = b->c;
    if (c->closing || c->failed)
        return; /* failed: abandoned uncommitted (classifier_close) */
    unsigned delay = 100u << (b->attempt < 6 ? b->attempt : 6);
    b->attempt++;
    /* The failed attempt's steps are retry time: the steps keep only the
     * attempt that went through. */
    cl_step(b, CL_STEP_RETRY);
    for (int k = CL_STEP_FENCE; k < CL_STEP_RETRY; k++) {
        b->step_ns[CL_STEP_RETRY] += b->step_ns[k];
        b->step_ns[k] = 0;
    }
    metric_inc(c->m.retries);
    log_warn("batch_retry", "step=%s err=%s attempt=%d records=%zu delay_ms=%u", step,
             err_code(err), b->attempt, b->n_items, delay);
    uv_timer_start(&b->retry, cl_on_backoff, delay, 0);
}

static void cl_produce(struct cl_batch *b);
static void cl_route_stored(struct cl_batch *b);
static void cl_item_gws(struct cl_item *it, const int *gws, size_t n);
static void cl_stored(struct cl_batch *b);

/* Produces cur once it is stored and the batch before it is committed, and
 * lets the consumer hand over the next batch while cur's acks are awaited. */
static void cl_advance(classifier_t *c)
{
    if (!c->out && c->cur && c->cur->stored && !c->closing) {
        c->out = c->cur;
        c->cur = NULL;
        cl_produce(c->out);
    }
    if (!c->cur && !c->draining && !c->closing)
        kafka_consumer_hold(c->consumer, 0);
}

/* ---- 5. commit ---- */

static void cl_commit(struct cl_batch *b)
{
    classifier_t *c = b->c;
    /* Offsets rise within a partition: commit each partition's last + 1. */
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        size_t j = i + 1;
        while (j < b->n_items && b->items[j].partition != it->partition)
            j++;
        if (j == b->n_items && !it->lost && kafka_consumer_owns(c->consumer, it->partition)) {
            /* PostgreSQL's copy (written with a later store) belongs to the
             * fence of this very ownership only; past the batch when the
             * take resumed the partition further on (cl_resume_at). */
            struct cl_fence *f = cl_fence_of(c, it->partition);
            int64_t next = it->offset + 1;
            if (f->epoch && f->since == kafka_consumer_owned_since(c->consumer, it->partition)) {
                if (next > f->done)
                    f->done = next;
                next = f->done;
            }
            kafka_consumer_commit(c->consumer, it->partition, next);
        }
    }
    if (!c->closing)
        uv_timer_start(&c->flush, cl_on_flush_timer, CL_FLUSH_MS, 0);
    cl_step(b, CL_STEP_PRODUCE);
    for (int k = CL_STEP_FENCE; k < CL_STEPS; k++)
        metric_observe(c->m.step[k], (double)b->step_ns[k] / 1e9);
    metric_observe(c->m.batch_seconds, (double)(b->mark_ns - b->t0_ns) / 1e9);
    cl_batch_free(b);
    b->attempt = 0;
    c->out = NULL;
    cl_advance(c);
}

/* ---- 4. produce to chat-receive ---- */

static void cl_on_delivered(int err, void *opaque)
{
    struct cl_batch *b = opaque;
    classifier_t *c = b->c;
    if (err)
        b->err = err;
    if (--b->pending > 0 || c->closing)
        return;
    if (b->err)
        cl_fail(b, "produce", b->err);
    else
        cl_commit(b);
}

static void cl_produce_one(struct cl_batch *b, const struct cl_item *it, const char *val, size_t len)
{
    classifier_t *c = b->c;
    /* An edit or delete only to gateways that know it (kafka/record.h). */
    int change = it->type == REC_MSG && (it->msg.kind == MSG_KIND_EDIT || it->msg.kind == MSG_KIND_DELETE);
    struct kafka_hdrs h = { .version = change ? RECORD_VERSION_CHANGE : RECORD_VERSION, .type = it->type };
    if (it->user[0]) {
        h.user = it->user;
        h.user_len = strlen(it->user);
    }
    for (size_t k = 0; k < it->n_gws; k++) {
        int rc = kafka_produce(c->producer, c->conf->topic_receive, it->gws[k], it->room,
                               strlen(it->room), val, len, &h, cl_on_delivered, b);
        if (rc)
            b->err = rc;
        else
            b->pending++;
    }
}

static void cl_produce(struct cl_batch *b)
{
    classifier_t *c = b->c;
    cl_step(b, CL_STEP_ORDER);
    b->err = 0;
    b->pending = 1; /* held until every record is handed over */
    uint64_t now = cl_now_ms();
    for (size_t i = 0; i < b->n_items; i++) {
        struct cl_item *it = &b->items[i];
        /* A resent cid is never delivered twice. */
        if (it->skip || it->dup == ROUTES_DUP_OTHER)
            continue;
        if (it->type != REC_MSG) {
            cl_produce_one(b, it, it->val, it->val_len);
            continue;
        }
        size_t len;
        char *frame = record_msg_frame(&it->msg, &len);
        if (!frame) {
            b->err = ERR_NOMEM;
            break;
        }
        cl_produce_one(b, it, frame, len);
        free(frame);
        if (now >= (uint64_t)it->msg.ts)
            metric_observe(c->m.sequence_seconds, (double)(now - (uint64_t)it->msg.ts) / 1000.0);
        metric_add(c->m.deliveries, (double)it->n_gws);
    }
    cl_on_delivered(0, b);
}

/* ---- 3b. who gets the messages live: read once they are stored ---- */

/* Read after the store, not with the seqs: a member whose gateway routed
 * the room before the store gets the message live, and one whose gateway
 * routes it after the store finds it stored when it syncs (a gateway
 * routes a user's rooms before `hello`). Read with the seqs (step 2), a
 * reader that reconnected between the two got it neither way whenever its
 * sync could not wait for the room's head (the seq key lost to a Redis
 * restart: issue 22 review). Costs one Redis call per room per batch. */
/* One Redis reply of a step (2 or 3b) in: once all are, the batch goes on
 * to next, or is retried whole. */
static void cl_redis_step_done(struct cl_batch *b, void (*next)(struct cl_batch *))
{
    if (--b->pending > 0 || b->c->closing)
        return;
    if (b->err)
        cl_fail(b, "route", b->err);
    else
        next(b);
}

static void cl_room_dests_done(struct cl_batch *b) { cl_redis_step_done(b, cl_stored); }

static void cl_on_room_dests(int err, const int *gws, size_t n, void *ud)
{
    struct cl_room *r = ud;
    struct cl_batch *b = r->b;
    if (err)
        b->err = err;
    for (size_t k = 0; !err && k < r->n; k++)
        cl_item_gws(&b->items[r->idx[k]], gws, n);
    cl_room_dests_done(b);
}

static void cl_route_stored(struct cl_batch *b)
{
    cl_step(b, CL_STEP_STORE);
    b->err = 0;
    b->pending = 1;
    struct cl_room *r, *tmp;
    HASH_ITER(hh, b->rooms, r, tmp) {
        if (r->n == 0)
            continue;
        b->pending++;
        routes_dests(b->c->routes, r->name, NULL, cl_on_room_dests, r);
    }
    cl_room_dests_done(b);
}

/* ---- 3. store ---- */

static void cl_stored(struct cl_batch *b)
{
    cl_step(b, CL_STEP_ROUTE);
    b->stored = 1;
    if (b == b->c->out) /* a produce retry: out went through every step again */
        cl_produce(b);
    else
        cl_advance(b->c);
}

/* A message given a seq that another message holds in PostgreSQL (a Redis
 * counter behind the store: a restart, a zombie's stale floor). Nothing of
 * the batch was stored. The floors are re-read from PostgreSQL and the
 * retry gives every unstored id whose seq is <= the floor a new seq
 * (store/routes.h), so the message is stored once, under one seq. */
static void cl_on_collision(struct cl_batch *b, const char *kind, const char *detail)
{
    classifier_t *c = b->c;
    metric_inc(c->m.collisions);
    log_error("seq_collision", "kind=%s records=%zu detail=%s", kind, b->n_items,
              detail ? log_q(detail, strlen(detail)) : "-");
    cl_floors_clear(c);
    c->floors_gen = 0;
    cl_fail(b, "store_collision", ERR_INTERNAL);
}

/* The store was refused: another classifier took the epoch of one of the
 * batch's partitions. Nothing was stored; the retry drops what this
 * classifier no longer owns and, after the wait, retakes what it still owns
 * (it lost nothing if the other was the zombie). */
static void cl_on_fenced(struct cl_batch *b, const char *lost)
{
    classifier_t *c = b->c;
    uint64_t now = uv_now(c->loop);
    /* lost: a PostgreSQL int array, "{3,5}" */
    for (const char *q = lost + (*lost == '{'); *q && *q != '}';) {
        char *end;
        long p = strtol(q, &end, 10);
        if (end == q)
            break;
        if (p >= 0 && p < 65536) { /* our own partitions, echoed back */
            struct cl_fence *f = cl_fence_of(c, (int32_t)p);
            f->epoch = 0;
            f->refused_ms = now;
        }
        q = *end == ',' ? end + 1 : end;
    }
    metric_inc(c->m.fenced);
    log_warn("classifier_fenced", "partitions=%s records=%zu wait_ms=%u", log_q(lost, strlen(lost)),
             b->n_items, c->fence_wait_ms);
    cl_fail(b, "fenced", ERR_UNAVAILABLE);
}

/* ---- 3a. edits and deletes: applied to their targets once stored ---- */

static void cl_on_applied(int err, PGresult *res, void *ud)
{
    struct cl_batch *b = ud;
    (void)res;
    if (b->c->closing)
        return;
    if (err)
        cl_fail(b, "apply", err);
    else
        cl_route_stored(b);
}

/* A statement of its own (store/db.h): idempotent, so the whole batch is
 * retried when it fails, its rows found stored. Before the routing, so a
 * member who gets the change live or by sync finds its target changed. */
static void cl_apply(struct cl_batch *b)
{
    struct jbuf jr, ji, jm;
    jbuf_init(&jr, 64);
    jbuf_init(&ji, 64);
    jbuf_init(&jm, 16);
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        if (it->skip || it->type != REC_MSG || it->dup == ROUTES_DUP_OTHER ||
            (it->msg.kind != MSG_KIND_EDIT && it->msg.kind != MSG_KIND_DELETE))
            continue;
        db_array_add(&jr, it->room);
        db_array_add(&ji, it->msg.id);
        db_array_add(&jm, it->msg.mod ? "t" : "f");
    }
    char *rooms = db_array_end(&jr), *ids = db_array_end(&ji), *mods = db_array_end(&jm);
    if (strcmp(ids, "{}") == 0)
        cl_route_stored(b);
    else
        db_apply_changes(b->c->pg, rooms, ids, mods, cl_on_applied, b);
    free(rooms);
    free(ids);
    free(mods);
}

static void cl_on_stored(int err, PGresult *res, void *ud)
{
    struct cl_batch *b = ud;
    classifier_t *c = b->c;
    if (c->closing)
        return;
    const char *state = err && res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state && strcmp(state, "23505") == 0) {
        cl_on_collision(b, PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME),
                        PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        return;
    }
    if (err || PQntuples(res) != 1) {
        cl_fail(b, "store", err ? err : ERR_INTERNAL);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        cl_on_fenced(b, PQgetvalue(res, 0, 2));
        return;
    }
    /* A (room, seq) of the batch held by another message in some month's
     * partition: the check that replaced the unique (room, seq). */
    if (PQnfields(res) > 3 && PQgetvalue(res, 0, 3)[0] == 't') {
        cl_on_collision(b, "messages_room_seq", "a (room, seq) of the batch is another message's");
        return;
    }
    /* Rows not inserted must be the ids PostgreSQL had at these very seqs
     * (known): anything else is an id stored under another seq meanwhile. */
    long inserted = strtol(PQgetvalue(res, 0, 1), NULL, 10), expected = 0;
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        if (!it->skip && it->type == REC_MSG && it->dup != ROUTES_DUP_OTHER) {
            expected += it->known < 0;
            cl_floor_raise(b, it->room, it->msg.seq);
        }
    }
    if (inserted != expected) {
        char d[64];
        snprintf(d, sizeof d, "inserted %ld of %ld new", inserted, expected);
        cl_on_collision(b, "messages_room_id", d);
        return;
    }
    cl_apply(b);
}

/* The (partition, epoch, done offset) triples of the batch's messages, as
 * array literals. */
static void cl_fence_arrays(struct cl_batch *b, char **parts, char **epochs, char **offsets)
{
    classifier_t *c = b->c;
    struct jbuf jp, je, jo;
    jbuf_init(&jp, 64);
    jbuf_init(&je, 64);
    jbuf_init(&jo, 64);
    int32_t last = -1;
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        if (it->skip || it->type != REC_MSG || it->partition == last)
            continue;
        /* Consecutive repeats skipped; a partition listed twice is harmless:
         * the store compares matched rows with the array's cardinality. */
        last = it->partition;
        db_array_int(&jp, it->partition);
        const struct cl_fence *f = (size_t)it->partition < c->n_fences ? &c->fences[it->partition] : NULL;
        db_array_int(&je, f ? f->epoch : 0);
        db_array_int(&jo, f ? f->done : 0);
    }
    *parts = db_array_end(&jp);
    *epochs = db_array_end(&je);
    *offsets = db_array_end(&jo);
}

static void cl_store(struct cl_batch *b)
{
    classifier_t *c = b->c;
    cl_step(b, CL_STEP_SEQUENCE);
    const struct chat_msg **msgs = calloc(b->n_items, sizeof *msgs);
    CHATD_ASSERT(msgs != NULL);
    size_t n = 0, fresh = 0;
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        if (it->skip || it->type != REC_MSG || it->dup == ROUTES_DUP_OTHER)
            continue;
        msgs[n++] = &it->msg;
        fresh += it->dup == 0;
    }
    metric_add(c->m.sequenced, (double)fresh);
    if (n == 0) {
        cl_stored(b);
    } else {
        struct db_fence f = { .topic = c->conf->topic_send };
        char *parts, *epochs, *offsets;
        cl_fence_arrays(b, &parts, &epochs, &offsets);
        f.parts = parts;
        f.epochs = epochs;
        f.offsets = offsets;
        db_store_msgs(c->pg, &f, msgs, n, cl_on_stored, b);
        free(parts);
        free(epochs);
        free(offsets);
    }
    free(msgs);
}

/* ---- 2. seqs (Redis; member events: their routes) ---- */

struct cl_ref {
    struct cl_batch *b;
    size_t i;
};

static struct cl_ref *cl_ref_new(struct cl_batch *b, size_t i)
{
    struct cl_ref *r = malloc(sizeof *r);
    CHATD_ASSERT(r != NULL);
    r->b = b;
    r->i = i;
    return r;
}

static void cl_route_done(struct cl_batch *b) { cl_redis_step_done(b, cl_store); }

static void cl_item_gws(struct cl_item *it, const int *gws, size_t n)
{
    free(it->gws);
    it->gws = malloc((n ? n : 1) * sizeof *gws);
    CHATD_ASSERT(it->gws != NULL);
    memcpy(it->gws, gws, n * sizeof *gws);
    it->n_gws = n;
}

static void cl_on_assigned(int err, void *ud)
{
    struct cl_room *r = ud;
    struct cl_batch *b = r->b;
    classifier_t *c = b->c;
    if (err)
        b->err = err;
    for (size_t k = 0; !err && k < r->n; k++) {
        struct cl_item *it = &b->items[r->idx[k]];
        it->msg.seq = r->ai[k].seq;
        it->dup = r->ai[k].dup;
        if (it->dup == ROUTES_DUP_OTHER)
            metric_inc(c->m.dups);
    }
    cl_route_done(b);
}

static void cl_on_dests(int err, const int *gws, size_t n, void *ud)
{
    struct cl_ref *ref = ud;
    struct cl_batch *b = ref->b;
    if (err)
        b->err = err;
    else
        cl_item_gws(&b->items[ref->i], gws, n);
    free(ref);
    cl_route_done(b);
}

static void cl_room_add(struct cl_room *r, struct cl_item *it, size_t i)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 8;
        r->ai = realloc(r->ai, r->cap * sizeof *r->ai);
        r->idx = realloc(r->idx, r->cap * sizeof *r->idx);
        CHATD_ASSERT(r->ai && r->idx);
    }
    snprintf(it->tag, sizeof it->tag, "%d:%" PRId64, it->partition, it->offset);
    r->ai[r->n] = (struct routes_assign_item){
        .msg_id = it->msg.id, .known = it->known, .tag = it->tag,
    };
    r->idx[r->n++] = i;
}

/* One assign call per room (its messages in offset order), one dests call
 * per member event. */
static void cl_route(struct cl_batch *b)
{
    classifier_t *c = b->c;
    b->err = 0;
    b->pending = 1;
    struct cl_room *r, *tmp;
    HASH_ITER(hh, b->rooms, r, tmp)
        r->n = 0;
    for (size_t i = 0; i < b->n_items; i++) {
        struct cl_item *it = &b->items[i];
        if (it->skip)
            continue;
        if (it->type != REC_MSG) {
            b->pending++;
            routes_dests(c->routes, it->room, it->user[0] ? it->user : NULL, cl_on_dests,
                         cl_ref_new(b, i));
            continue;
        }
        HASH_FIND_STR(b->rooms, it->room, r);
        CHATD_ASSERT(r != NULL);
        cl_room_add(r, it, i);
    }
    HASH_ITER(hh, b->rooms, r, tmp) {
        if (r->n == 0)
            continue;
        b->pending++;
        routes_assign(c->routes, r->name, r->floor, r->ai, r->n, cl_on_assigned, r);
    }
    cl_route_done(b);
}

/* ---- 1. what PostgreSQL already has ---- */

static void cl_lookup_done(struct cl_batch *b)
{
    classifier_t *c = b->c;
    if (--b->pending > 0 || c->closing)
        return;
    if (b->err) {
        cl_fail(b, "lookup", b->err);
    } else {
        cl_step(b, CL_STEP_LOOKUP);
        cl_resume_check(b);
        cl_route(b);
    }
}

static void cl_on_rooms_max(int err, PGresult *res, void *ud)
{
    struct cl_batch *b = ud;
    if (err)
        b->err = err;
    for (int i = 0; !err && i < PQntuples(res); i++) {
        struct cl_room *r;
        HASH_FIND_STR(b->rooms, PQgetvalue(res, i, 0), r);
        if (r)
            r->floor = strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    cl_lookup_done(b);
}

static void cl_on_known_ids(int err, PGresult *res, void *ud)
{
    struct cl_batch *b = ud;
    if (err)
        b->err = err;
    /* Few rows in the common case (only re-consumed or resent messages). */
    for (int i = 0; !err && i < PQntuples(res); i++)
        for (size_t k = 0; k < b->n_items; k++) {
            struct cl_item *it = &b->items[k];
            if (!it->skip && it->type == REC_MSG && !strcmp(it->msg.id, PQgetvalue(res, i, 1)) &&
                !strcmp(it->room, PQgetvalue(res, i, 0)))
                it->known = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
    cl_lookup_done(b);
}

static void cl_lookup(struct cl_batch *b)
{
    classifier_t *c = b->c;
    cl_step(b, CL_STEP_FENCE);
    struct jbuf rooms, pairs_r, pairs_i, pairs_t, pairs_c;
    jbuf_init(&rooms, 256);
    jbuf_init(&pairs_r, 256);
    jbuf_init(&pairs_i, 256);
    jbuf_init(&pairs_t, 256);
    jbuf_init(&pairs_c, 64);
    for (size_t i = 0; i < b->n_items; i++) {
        struct cl_item *it = &b->items[i];
        it->known = -1;
        if (it->skip || it->type != REC_MSG)
            continue;
        struct cl_room *r;
        HASH_FIND_STR(b->rooms, it->room, r);
        if (!r) {
            r = calloc(1, sizeof *r);
            CHATD_ASSERT(r != NULL);
            r->name = it->room;
            r->b = b;
            HASH_ADD_KEYPTR(hh, b->rooms, r->name, strlen(r->name), r);
            r->floor = cl_floor_get(b, it->room);
            if (r->floor < 0) {
                r->floor = 0;
                db_array_add(&rooms, it->room);
            }
        }
        db_array_add(&pairs_r, it->room);
        db_array_add(&pairs_i, it->msg.id);
        db_array_int(&pairs_t, it->msg.ts);
        db_array_add(&pairs_c, it->msg.cid ? "t" : "f");
    }
    int ask_floors = rooms.len > 0;
    char *rs = db_array_end(&rooms), *ps = db_array_end(&pairs_r), *is = db_array_end(&pairs_i);
    char *ts = db_array_end(&pairs_t), *cs = db_array_end(&pairs_c);
    b->err = 0;
    b->pending = 1;
    if (ask_floors) {
        b->pending++;
        db_rooms_max(c->pg, rs, cl_on_rooms_max, b);
    }
    if (b->rooms) {
        b->pending++;
        db_known_ids(c->pg, ps, is, ts, cs, c->conf->resend_window_s * 1000, cl_on_known_ids, b);
    }
    free(rs);
    free(ps);
    free(is);
    free(ts);
    free(cs);
    cl_lookup_done(b);
}

/* ---- 0. ownership ---- */

/* Records of partitions this classifier no longer owns are dropped (the
 * owner re-consumes them: they are never committed here), at every step
 * that could write. */
static void cl_drop_lost(struct cl_batch *b)
{
    classifier_t *c = b->c;
    size_t lost = 0;
    /* Once librdkafka reports the assignment lost (a session that timed
     * out while the process was frozen, or max.poll.interval.ms exceeded
     * by a batch stuck in retries: it has left the group), nothing the
     * held consumer holds is its own any more, though its own list still
     * says owned, and a fenced batch would retake the epoch from the real
     * owner (issue 15 review). Only then: a batch dropped by this
     * process's own clock at max.poll.interval.ms, before librdkafka's
     * check (every 500 ms or so) saw the gap, let the consumer poll again
     * in time, so it never left, nobody read the records again, and they
     * were lost (Redis down 3 s past the interval: 7 of 10 acked messages;
     * test_f10's test_batch_stuck_past_max_poll_interval_while_owned). */
    int all = kafka_consumer_assignment_lost(c->consumer);
    for (size_t i = 0; i < b->n_items; i++) {
        struct cl_item *it = &b->items[i];
        if (!it->lost && (all || !kafka_consumer_owns(c->consumer, it->partition))) {
            it->skip = it->lost = 1;
            lost++;
        }
    }
    if (lost) {
        metric_add(c->m.lost, (double)lost);
        log_warn("batch_records_dropped", "records=%zu of=%zu reason=%s", lost, b->n_items,
                 all ? "assignment_lost" : "partition_not_owned");
    }
}


/* A partition just taken resumes where its previous owners got to
 * (PostgreSQL's next_offset), not at Kafka's committed offset, which is
 * sent once a minute: the batch's records below it are dropped as done
 * (they were stored and produced) and the consumer seeks past the rest of
 * what it would fetch again. Kafka's offset ahead (an owner that stored
 * nothing since, an older chatd): nothing to do. Only marked here: they
 * are dropped once the lookup has found their messages stored
 * (cl_resume_check). */
static void cl_resume_at(struct cl_batch *b, int32_t p, int64_t next)
{
    for (size_t i = 0; i < b->n_items; i++) {
        struct cl_item *it = &b->items[i];
        if (it->partition == p && it->offset < next && !it->lost && !it->skip)
            it->resume = next;
    }
}

/* An offset is only an offset of one topic: the embedded broker keeps its
 * topics in memory, so its restart (or an operator's recreated topic)
 * starts chat-send again at 0 while PostgreSQL keeps the earlier topic's
 * next_offset, and the new topic's first records were dropped as done:
 * acked, never stored. So a partition's marked records are dropped only
 * if its messages among them are all stored (a done message is); a
 * message not stored proves next_offset an earlier topic's: nothing is
 * dropped and the offsets done start again from this batch. Without a
 * message to prove it (member events only) nothing is dropped either:
 * they are idempotent, and the seek could pass over messages. */
static void cl_resume_check(struct cl_batch *b)
{
    classifier_t *c = b->c;
    for (size_t i = 0; i < b->n_items; i++) {
        if (!b->items[i].resume)
            continue;
        int32_t p = b->items[i].partition;
        int64_t next = b->items[i].resume, last = -1;
        size_t msgs = 0, stored = 0, done = 0;
        for (size_t j = i; j < b->n_items; j++) {
            const struct cl_item *it = &b->items[j];
            if (it->partition != p)
                continue;
            last = it->offset;
            if (it->resume && !it->skip && it->type == REC_MSG) {
                msgs++;
                stored += it->known >= 0;
            }
        }
        int ok = msgs > 0 && stored == msgs;
        for (size_t j = i; j < b->n_items; j++) {
            struct cl_item *it = &b->items[j];
            if (it->partition != p || !it->resume)
                continue;
            it->resume = 0;
            if (ok && !it->skip) {
                it->skip = 1;
                done++;
            }
        }
        if (!ok) {
            if (stored < msgs) {
                struct cl_fence *f = cl_fence_of(c, p);
                f->done = f->saved = 0;
                log_warn("partition_offset_stale", "partition=%d offset=%" PRId64
                         " messages=%zu stored=%zu note=\"an earlier topic's: not resumed at\"",
                         p, next, msgs, stored);
            }
            continue;
        }
        metric_add(c->m.resumed, (double)done);
        int seek = last + 1 < next && kafka_consumer_seek(c->consumer, p, next) == 0;
        log_info("partition_resumed", "partition=%d offset=%" PRId64 " skipped=%zu seek=%d", p,
                 next, done, seek);
    }
}

static void cl_on_fence_taken(int err, PGresult *res, void *ud)
{
    struct cl_batch *b = ud;
    classifier_t *c = b->c;
    if (c->closing)
        return;
    if (err) {
        cl_fail(b, "fence", err);
        return;
    }
    char list[256] = "";
    size_t o = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        int32_t p = (int32_t)strtol(PQgetvalue(res, i, 0), NULL, 10);
        struct cl_fence *f = cl_fence_of(c, p);
        f->epoch = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        f->since = kafka_consumer_owned_since(c->consumer, p);
        f->done = f->saved = 0;
        if (PQnfields(res) > 2 && !PQgetisnull(res, i, 2)) {
            f->done = f->saved = strtoll(PQgetvalue(res, i, 2), NULL, 10);
            cl_resume_at(b, p, f->done);
        }
        if (o + 40 < sizeof list)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%d@%" PRId64, o ? "," : "", p,
                                  f->epoch);
    }
    log_info("partition_fence_taken", "partitions=%s owner=%s", list, c->owner);
    /* Someone else may have stored into these rooms since the floors were
     * cached (a refusal retaken in the same generation): assign sets the
     * counter to the floor, so a stale one would only cost a collision. */
    cl_floors_clear(c);
    cl_rooms_clear(b);
    cl_lookup(b);
}

/* Takes the epoch of every partition of the batch this classifier does not
 * hold yet for its current ownership; 1 if the batch must wait (a take in
 * flight, or a refusal too recent to retake). */
static int cl_fence_need(struct cl_batch *b)
{
    classifier_t *c = b->c;
    struct jbuf jp;
    jbuf_init(&jp, 64);
    uint64_t now = uv_now(c->loop), wait = 0;
    int32_t *seen = calloc(b->n_items, sizeof *seen);
    size_t n_seen = 0;
    CHATD_ASSERT(seen != NULL);
    for (size_t i = 0; i < b->n_items; i++) {
        const struct cl_item *it = &b->items[i];
        size_t k = 0;
        while (k < n_seen && seen[k] != it->partition)
            k++;
        if (it->skip || it->type != REC_MSG || k < n_seen)
            continue; /* each partition once: a take may not update a row twice */
        seen[n_seen++] = it->partition;
        struct cl_fence *f = cl_fence_of(c, it->partition);
        unsigned since = kafka_consumer_owned_since(c->consumer, it->partition);
        if (f->epoch && f->since == since)
            continue;
        if (f->refused_ms && now < f->refused_ms + c->fence_wait_ms && f->since == since) {
            uint64_t w = f->refused_ms + c->fence_wait_ms - now;
            wait = w > wait ? w : wait;
            continue;
        }
        f->refused_ms = 0;
        db_array_int(&jp, it->partition);
    }
    free(seen);
    char *parts = db_array_end(&jp);
    int take = strcmp(parts, "{}") != 0;
    if (wait) {
        uv_timer_start(&b->retry, cl_on_retry, wait, 0);
    } else if (take) {
        db_fence_take(c->pg, c->conf->topic_send, c->owner, parts, cl_on_fence_taken, b);
    }
    free(parts);
    return wait || take;
}

static void cl_run(struct cl_batch *b)
{
    classifier_t *c = b->c;
    if (c->closing)
        return;
    if (!routes_live_known(c->routes)) { /* every route would look dead */
        uv_timer_start(&b->retry, cl_on_retry, 20, 0); /* only at start */
        return;
    }
    cl_drop_lost(b);
    if (cl_fence_need(b))
        return;
    cl_rooms_clear(b);
    cl_lookup(b);
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
    if (rec->version > RECORD_VERSION_MAX || !proto_room_valid(rec->key, rec->key_len) ||
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
         !cl_hex(it->msg.id) || !auth_user_valid(it->msg.from, strlen(it->msg.from)) ||
         (it->msg.target && !cl_hex(it->msg.target)))) {
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
    CHATD_ASSERT(c->cur == NULL);
    struct cl_batch *b = c->out == &c->slot[0] ? &c->slot[1] : &c->slot[0];
    CHATD_ASSERT(b->items == NULL);
    kafka_consumer_hold(kc, 1);
    b->items = calloc(n, sizeof *b->items);
    CHATD_ASSERT(b->items != NULL);
    b->n_items = n;
    b->stored = 0;
    b->attempt = 0;
    b->t0_ns = b->mark_ns = uv_hrtime();
    memset(b->step_ns, 0, sizeof b->step_ns);
    b->gen = kafka_consumer_generation(kc);
    c->cur = b;
    int64_t oldest = INT64_MAX;
    for (size_t i = 0; i < n; i++) {
        cl_item_load(c, &b->items[i], &recs[i]);
        if (recs[i].ts_ms > 0 && recs[i].ts_ms < oldest)
            oldest = recs[i].ts_ms;
    }
    /* The oldest record only: it waited longest, the others' waits are
     * bounded by it, and when this process first had each record is not
     * known apart (kafka_consumer_batch_got_ns). One observation per batch,
     * as for the other steps. The Kafka timestamp (the gateway's produce,
     * its clock) adds hop 1 and the fetch: a clock behind counts as 0. */
    uint64_t got = kafka_consumer_batch_got_ns(kc);
    metric_observe(c->m.step[CL_STEP_QUEUE], got < b->t0_ns ? (double)(b->t0_ns - got) / 1e9 : 0.0);
    if (oldest != INT64_MAX) {
        uint64_t wall = cl_now_ms();
        metric_observe(c->m.step[CL_STEP_PRODUCED],
                       wall > (uint64_t)oldest ? (double)(wall - (uint64_t)oldest) / 1000.0 : 0.0);
    }
    metric_inc(c->m.batches);
    metric_add(c->m.records, (double)n);
    cl_run(b);
}

/* ---- offsets of quiet partitions ---- */

static void cl_on_flushed(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    c->flushing = 0;
    if (c->closing)
        return;
    if (err) { /* the next batch's store or flush carries them */
        log_warn("offsets_save_failed", "err=%s", err_code(err));
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        long p = strtol(PQgetvalue(res, i, 0), NULL, 10);
        if (p >= 0 && (size_t)p < c->n_fences && c->fences[p].saving > c->fences[p].saved)
            c->fences[p].saved = c->fences[p].saving;
    }
}

static void cl_on_flush_timer(uv_timer_t *t)
{
    classifier_t *c = t->data;
    if (c->closing || c->flushing || !pg_client_ready(c->pg))
        return;
    struct jbuf jp, je, jo;
    jbuf_init(&jp, 64);
    jbuf_init(&je, 64);
    jbuf_init(&jo, 64);
    size_t n = 0;
    for (size_t p = 0; p < c->n_fences; p++) {
        struct cl_fence *f = &c->fences[p];
        if (!f->epoch || f->done <= f->saved ||
            f->since != kafka_consumer_owned_since(c->consumer, (int32_t)p))
            continue;
        f->saving = f->done;
        db_array_int(&jp, (int64_t)p);
        db_array_int(&je, f->epoch);
        db_array_int(&jo, f->done);
        n++;
    }
    char *parts = db_array_end(&jp), *epochs = db_array_end(&je), *offsets = db_array_end(&jo);
    if (n) {
        struct db_fence f = { .topic = c->conf->topic_send, .parts = parts, .epochs = epochs,
                              .offsets = offsets };
        c->flushing = 1;
        db_offsets_save(c->pg, &f, cl_on_flushed, c);
    }
    free(parts);
    free(epochs);
    free(offsets);
}

/* ---- messages' partitions ---- */

/* Every classifier keeps the months ahead created and, with --retention,
 * drops the expired ones (migrations/006); the function's advisory lock
 * lets one do it at a time, and a classifier is always running wherever
 * messages are stored. At start (after the connect), then hourly; after a
 * failure (a lock not granted within 1 s, PostgreSQL down) sooner. */
#define CL_MAINTAIN_FIRST_MS 1000
#define CL_MAINTAIN_EVERY_MS (3600 * 1000)
#define CL_MAINTAIN_RETRY_MS (15 * 1000)
/* One month ahead is made a month before it starts; each empty month
 * costs a probe to the lookups that reach it (a seq at or below the
 * room's head in db_store_msgs, a resent cid in db_known_ids). */
#define CL_MONTHS_AHEAD 1

/* The rooms' own retention (migrations/008) in steps of at most this many
 * rooms and deleted rows: each is one statement on the classifier's only
 * connection, so its stores wait behind it for as long (milliseconds). */
#define CL_EXPIRE_ROOMS 1000
#define CL_EXPIRE_ROWS 2000
#define CL_EXPIRE_PAUSE_MS 50     /* between steps: the stores go first */

/* A closed month in room order (migrations/011): its copy runs on
 * upkeep_pg, whose statement deadline is this (a month of 100 million rows
 * copies in minutes); the swap waits at most CL_COMPACT_LOCK_MS for
 * messages' lock (every statement over messages queues behind it while it
 * waits), tried CL_COMPACT_TRIES times CL_COMPACT_RETRY_MS apart, then at
 * the next upkeep. */
#define CL_COMPACT_TIMEOUT_MS (2 * 3600 * 1000)
#define CL_COMPACT_LOCK_MS 300
#define CL_COMPACT_TRIES 5
#define CL_COMPACT_RETRY_MS (10 * 1000)

static void cl_on_maintain_timer(uv_timer_t *t);
static void cl_on_expire_timer(uv_timer_t *t);
static void cl_on_compact_timer(uv_timer_t *t);

static void cl_expire_reset(classifier_t *c)
{
    free(c->expire.after);
    c->expire.after = NULL;
    c->expire.deleted = 0;
    c->expire.rooms = c->expire.steps = 0;
}

static void cl_on_expired(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    if (c->closing)
        return;
    if (err || PQntuples(res) != 1) {
        log_warn("rooms_expire_failed", "err=%s sqlstate=%s steps=%d deleted=%lld retry_ms=%d",
                 err_code(err ? err : ERR_INTERNAL),
                 res && PQresultErrorField(res, PG_DIAG_SQLSTATE) ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "-",
                 c->expire.steps, (long long)c->expire.deleted, CL_MAINTAIN_RETRY_MS);
        cl_expire_reset(c);
        uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_RETRY_MS, 0);
        return;
    }
    long rooms = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    if (rooms < 0) { /* another classifier's upkeep holds the lock: it does this */
        log_debug("rooms_expired", "busy=1 steps=%d", c->expire.steps);
        cl_expire_reset(c);
        uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_EVERY_MS, 0);
        return;
    }
    c->expire.steps++;
    c->expire.rooms += (int)rooms;
    c->expire.deleted += strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    free(c->expire.after);
    c->expire.after = PQgetisnull(res, 0, 2) ? NULL : strdup(PQgetvalue(res, 0, 2));
    CHATD_ASSERT(c->expire.after || PQgetisnull(res, 0, 2));
    if (PQgetvalue(res, 0, 3)[0] == 't') {
        uv_timer_start(&c->maintain, cl_on_expire_timer, CL_EXPIRE_PAUSE_MS, 0);
        return;
    }
    log_info("rooms_expired", "rooms=%d deleted=%lld steps=%d", c->expire.rooms,
             (long long)c->expire.deleted, c->expire.steps);
    cl_expire_reset(c);
    if (c->upkeep_pg) { /* then a closed month in room order, in steps */
        memset(&c->compact, 0, sizeof c->compact);
        cl_on_compact_timer(&c->maintain);
        return;
    }
    uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_EVERY_MS, 0);
}

static void cl_on_compacted(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    if (c->closing)
        return;
    uint64_t now = uv_now(c->loop), ms = now - c->compact.step_t0;
    if (err || PQntuples(res) != 1) {
        /* Hourly, not sooner: a failed copy may have cost minutes. */
        log_warn("messages_compact_failed", "err=%s sqlstate=%s step_ms=%llu",
                 err_code(err ? err : ERR_INTERNAL),
                 res && PQresultErrorField(res, PG_DIAG_SQLSTATE) ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "-",
                 (unsigned long long)ms);
        uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_EVERY_MS, 0);
        return;
    }
    const char *part = PQgetisnull(res, 0, 0) ? "-" : PQgetvalue(res, 0, 0);
    const char *step = PQgetvalue(res, 0, 1);
    long long n = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    uint64_t next = CL_EXPIRE_PAUSE_MS;
    if (!strcmp(step, "started")) {
        c->compact.t0 = c->compact.step_t0;
        c->compact.tries = 0;
    } else if (!strcmp(step, "copied")) {
        c->compact.copy_ms = ms;
        log_info("messages_compact_copied", "part=%s rows=%lld copy_ms=%llu", part, n, (unsigned long long)ms);
    } else if (!strcmp(step, "busy") && !PQgetisnull(res, 0, 0)) {
        /* The swap's lock was not had in CL_COMPACT_LOCK_MS (or the start's
         * trigger lock in 1 s): a busy moment. */
        if (++c->compact.tries < CL_COMPACT_TRIES) {
            next = CL_COMPACT_RETRY_MS;
        } else {
            log_warn("messages_compact_busy", "part=%s tries=%d lock_ms=%d note=\"swap at the next upkeep\"",
                     part, c->compact.tries, CL_COMPACT_LOCK_MS);
            next = CL_MAINTAIN_EVERY_MS;
        }
    } else if (!strcmp(step, "done")) {
        log_info("messages_compacted", "part=%s noted=%lld copy_ms=%llu swap_ms=%llu total_ms=%llu tries=%d", part,
                 n, (unsigned long long)c->compact.copy_ms, (unsigned long long)ms,
                 (unsigned long long)(c->compact.t0 ? now - c->compact.t0 : ms), c->compact.tries + 1);
        next = CL_MAINTAIN_EVERY_MS; /* one month per upkeep */
    } else if (!strcmp(step, "ordered") || !strcmp(step, "gone")) {
        log_info("messages_compacted", "part=%s step=%s", part, step); /* cheap: the next month */
    } else { /* none; busy: another classifier's upkeep does it */
        log_debug("messages_compacted", "step=%s", step);
        next = CL_MAINTAIN_EVERY_MS;
    }
    uv_timer_start(&c->maintain, next == CL_MAINTAIN_EVERY_MS ? cl_on_maintain_timer : cl_on_compact_timer,
                   next, 0);
}

static void cl_on_compact_timer(uv_timer_t *t)
{
    classifier_t *c = t->data;
    if (c->closing)
        return;
    if (!pg_client_ready(c->upkeep_pg)) { /* still connecting at start, or reconnecting */
        if (++c->compact.tries < CL_COMPACT_TRIES) {
            uv_timer_start(&c->maintain, cl_on_compact_timer, CL_MAINTAIN_FIRST_MS, 0);
            return;
        }
        log_warn("messages_compact_failed", "err=%s note=\"upkeep connection not ready; the next upkeep\"",
                 err_code(ERR_UNAVAILABLE));
        uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_EVERY_MS, 0);
        return;
    }
    c->compact.step_t0 = uv_now(c->loop);
    db_messages_compact(c->upkeep_pg, c->conf->compact_after_s, CL_COMPACT_LOCK_MS, cl_on_compacted, c);
}

static void cl_on_expire_timer(uv_timer_t *t)
{
    classifier_t *c = t->data;
    if (c->closing)
        return;
    db_rooms_expire(c->pg, c->expire.after, CL_EXPIRE_ROOMS, CL_EXPIRE_ROWS, cl_on_expired, c);
}

static void cl_on_maintained(int err, PGresult *res, void *ud)
{
    classifier_t *c = ud;
    if (c->closing)
        return;
    uint64_t next = CL_MAINTAIN_EVERY_MS;
    if (err || PQntuples(res) != 1) {
        log_warn("messages_maintain_failed", "err=%s sqlstate=%s retry_ms=%d",
                 err_code(err ? err : ERR_INTERNAL),
                 res && PQresultErrorField(res, PG_DIAG_SQLSTATE) ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "-",
                 CL_MAINTAIN_RETRY_MS);
        next = CL_MAINTAIN_RETRY_MS;
    } else {
        long created = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        const char *dropped = PQgetvalue(res, 0, 1);
        if (created >= 0) /* hourly: which months went, and that the upkeep runs */
            log_info("messages_partitions", "created=%ld dropped=%s retention_s=%lld", created,
                     dropped[0] ? log_q(dropped, strlen(dropped)) : "-", c->conf->retention_s);
        else
            log_debug("messages_partitions", "busy=1 note=\"another classifier's upkeep\"");
        if (created >= 0) { /* then the rooms' own retention, in steps */
            cl_expire_reset(c);
            cl_on_expire_timer(&c->maintain);
            return;
        }
    }
    uv_timer_start(&c->maintain, cl_on_maintain_timer, next, 0);
}

static void cl_on_maintain_timer(uv_timer_t *t)
{
    classifier_t *c = t->data;
    if (c->closing)
        return;
    if (!pg_client_ready(c->pg)) { /* still connecting: no failure to report */
        uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_FIRST_MS, 0);
        return;
    }
    db_messages_maintain(c->pg, CL_MONTHS_AHEAD, c->conf->retention_s, cl_on_maintained, c);
}

/* ---- lifecycle ---- */

static int cl_batches_busy(void *ud)
{
    const classifier_t *c = ud;
    /* failed: nothing in flight will be committed; give the lease back now */
    return !c->failed && (c->cur || c->out);
}

static void cl_metrics_init(classifier_t *c)
{
    c->m.batches = metrics_counter("chatd_classifier_batches_total", "batches processed", NULL);
    c->m.records = metrics_counter("chatd_classifier_records_total", "chat-send records consumed", NULL);
    c->m.sequenced = metrics_counter("chatd_classifier_messages_total", "messages given a new seq", NULL);
    c->m.dups = metrics_counter("chatd_classifier_duplicates_total", "messages whose id had a seq from another record (resent cid)", NULL);
    c->m.deliveries = metrics_counter("chatd_classifier_deliveries_total", "chat-receive records produced for messages", NULL);
    c->m.retries = metrics_counter("chatd_classifier_retries_total", "batch retries after a backend error", NULL);
    c->m.skipped = metrics_counter("chatd_classifier_records_skipped_total", "records of an unknown version or undecodable", NULL);
    c->m.collisions = metrics_counter("chatd_classifier_seq_collisions_total", "stores refused because a seq or id was held by another message (then resequenced)", NULL);
    c->m.fenced = metrics_counter("chatd_classifier_fenced_total", "stores refused because another classifier took a partition's epoch", NULL);
    c->m.lost = metrics_counter("chatd_classifier_records_dropped_total", "records dropped because their partition was no longer owned", NULL);
    c->m.resumed = metrics_counter("chatd_classifier_records_resumed_past_total", "records skipped on a partition's take: below the offset its previous owner stored in PostgreSQL", NULL);
    c->m.batch_seconds = metrics_histogram("chatd_classifier_batch_seconds", "time to process one batch", NULL);
    c->m.sequence_seconds = metrics_histogram("chatd_sequence_latency_seconds", "gateway receive to classifier produce", NULL);
    for (int k = 0; k < CL_STEPS; k++)
        c->m.step[k] = metrics_histogram("chatd_classifier_step_seconds", "a batch's time per step (queue, since_produced: its oldest record before it started)", cl_step_labels[k]);
}

int classifier_init(classifier_t **out, const struct classifier_deps *d)
{
    classifier_t *c = calloc(1, sizeof *c);
    if (!c)
        return ERR_NOMEM;
    c->loop = d->loop;
    c->conf = d->conf;
    c->producer = d->producer;
    kafka_producer_warm(c->producer, d->conf->topic_receive);
    c->routes = d->routes;
    c->redis = d->redis;
    cl_metrics_init(c);
    int lease = !strcmp(d->conf->ownership, "lease") ||
                (!d->conf->ownership[0] && d->kafka->embedded);
    char host[64] = "?", v[32], member[160];
    gethostname(host, sizeof host - 1);
    snprintf(c->owner, sizeof c->owner, "%s:%d", host, (int)getpid());
    /* A restarted pod may reuse host and pid (pid 1): the lease's member
     * name must not be a dead predecessor's. */
    snprintf(member, sizeof member, "%s:%08" PRIx64, c->owner,
             (uv_hrtime() ^ ((uint64_t)getpid() << 32)) & 0xffffffffu);
    int rc = pg_client_init(&c->pg, d->loop, d->conf->pg, (unsigned)d->conf->backend_timeout_ms);
    if (rc == 0 && d->conf->compact_after_s > 0)
        rc = pg_client_init(&c->upkeep_pg, d->loop, d->conf->pg, CL_COMPACT_TIMEOUT_MS);
    if (rc == 0 && lease)
        rc = kafka_consumer_init_manual(&c->consumer, d->loop, d->kafka, d->conf->group_id,
                                        d->conf->topic_send, (size_t)d->conf->classifier_batch,
                                        cl_on_batch, c);
    else if (rc == 0)
        rc = kafka_consumer_init_group(&c->consumer, d->loop, d->kafka, d->conf->group_id,
                                       d->conf->topic_send, (size_t)d->conf->classifier_batch,
                                       cl_on_batch, c);
    if (rc == 0 && lease)
        rc = ownership_init(&c->own, d->loop, d->conf, c->consumer, member, cl_batches_busy, c);
    if (rc) {
        log_error("classifier_init_failed", "err=%s", err_code(rc));
        if (c->consumer)
            kafka_consumer_close(c->consumer);
        if (c->pg)
            pg_client_close(c->pg);
        if (c->upkeep_pg)
            pg_client_close(c->upkeep_pg);
        free(c);
        return rc;
    }
    /* A zombie learns it lost its partitions within a session timeout: after
     * a refusal, retake only once that much has passed. */
    c->fence_wait_ms = 6000;
    if (c->own)
        c->fence_wait_ms = OWNERSHIP_LEASE_MS + 1000;
    else if (kafka_consumer_setting(c->consumer, "session.timeout.ms", v, sizeof v) == 0)
        c->fence_wait_ms = (unsigned)strtoul(v, NULL, 10) + 1000;
    for (int i = 0; i < 2; i++) {
        c->slot[i].c = c;
        uv_timer_init(d->loop, &c->slot[i].retry);
        c->slot[i].retry.data = &c->slot[i];
    }
    uv_timer_init(d->loop, &c->maintain);
    c->maintain.data = c;
    uv_timer_init(d->loop, &c->flush);
    c->flush.data = c;
    uv_timer_start(&c->maintain, cl_on_maintain_timer, CL_MAINTAIN_FIRST_MS, 0);
    log_info("classifier_started", "group=%s topic=%s ownership=%s", d->conf->group_id,
             d->conf->topic_send, lease ? "lease" : "group");
    *out = c;
    return 0;
}

/* Ready once in the group: a rolling update then replaces the next old
 * classifier only after the new one can take its partitions. */
int classifier_ready(const classifier_t *c)
{
    return !c->draining && redis_client_ready(c->redis) && pg_client_ready(c->pg) &&
           kafka_producer_healthy(c->producer) && kafka_consumer_healthy(c->consumer) &&
           kafka_consumer_joined(c->consumer) && (!c->own || ownership_ready(c->own));
}

int classifier_pg_ready(const classifier_t *c) { return pg_client_ready(c->pg); }

void classifier_drain(classifier_t *c)
{
    c->draining = 1;
    if (c->own)
        ownership_drain(c->own);
    if (!c->cur)
        kafka_consumer_hold(c->consumer, 1);
}

void classifier_fail(classifier_t *c)
{
    if (c->failed)
        return;
    c->failed = 1;
    log_warn("classifier_failed", "batches=%d leases=%d note=\"a Kafka client failed for good: "
             "the batches in flight are abandoned uncommitted, re-read by the next owner\"",
             (c->cur != NULL) + (c->out != NULL), c->own != NULL);
    classifier_drain(c);
}

int classifier_busy(const classifier_t *c)
{
    if (c->failed)
        return c->own && ownership_leaving(c->own);
    return c->cur || c->out || (c->own && ownership_leaving(c->own));
}

void classifier_close(classifier_t *c)
{
    c->closing = 1;
    for (int i = 0; i < 2; i++) {
        if (c->slot[i].items)
            log_warn("batch_abandoned", "records=%zu note=\"re-consumed by the next owner\"",
                     c->slot[i].n_items);
        uv_close((uv_handle_t *)&c->slot[i].retry, NULL);
    }
    uv_close((uv_handle_t *)&c->maintain, NULL);
    uv_close((uv_handle_t *)&c->flush, NULL);
    ownership_close(c->own);
    kafka_consumer_close(c->consumer);
    pg_client_close(c->pg);
    if (c->upkeep_pg)
        pg_client_close(c->upkeep_pg);
}

void classifier_free(classifier_t *c)
{
    cl_batch_free(&c->slot[0]);
    cl_batch_free(&c->slot[1]);
    cl_floors_clear(c);
    free(c->expire.after);
    free(c->fences);
    ownership_free(c->own);
    free(c);
}
