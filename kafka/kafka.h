/* kafka: librdkafka producer and consumers driven by the libuv loop.
 *
 * Every rd_kafka_t's queue is forwarded to one queue whose IO event
 * (rd_kafka_queue_io_event_enable) writes to a non-blocking pipe watched by
 * uv_poll: the loop wakes when librdkafka has something (a delivery report,
 * messages, a rebalance, a log line, stats) and drains it with zero timeouts.
 * Nothing here blocks the loop except *_close() at shutdown.
 *
 * Producer: idempotent, acks=all. Each kafka_produce() gets exactly one
 * delivery callback, from the loop, never from inside kafka_produce().
 *
 * Consumers hand records to the role in batches (up to max_batch per call).
 * A group consumer (classifier) subscribes with the cooperative-sticky
 * assignor, commits only the offsets the role stores (kafka_consumer_commit)
 * and can be held (no deliveries) while the role processes a batch. An
 * assigned consumer (gateway) owns one fixed partition, starts at its end
 * and never commits.
 *
 * Client settings: every "key=value" in kafka_conf.opts is applied last, so
 * --kafka-opt can override anything (session.timeout.ms, linger.ms, ...).
 */
#ifndef CHATD_KAFKA_H
#define CHATD_KAFKA_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct kafka_conf {
    const char *brokers;        /* "host:port,..." */
    const char *const *opts;    /* "key=value" overrides */
    size_t n_opts;
    const char *client_id;      /* e.g. "chatd-gateway-3" */
    int embedded;               /* brokers are librdkafka's mock cluster */
    /* Producer linger.ms (opts override it). A gateway produces one record
     * per client message and needs the wait to batch them; a classifier's
     * records are already one per gateway per batch, so it sends at once
     * (what arrives while a request is in flight is still batched). */
    int linger_ms;
};

/* Metadata chatd puts in record headers (see docs/ARCHITECTURE.md). */
struct kafka_rec {
    int32_t partition;
    int64_t offset;
    int64_t ts_ms;           /* record timestamp */
    const char *key;         /* not NUL-terminated */
    size_t key_len;
    const char *val;         /* not NUL-terminated */
    size_t val_len;
    int version;             /* header "v" as int, 0 when absent */
    char type;               /* header "t" first byte, 0 when absent */
    const char *user;        /* header "u", NULL when absent */
    size_t user_len;
};

struct kafka_hdrs {           /* what kafka_produce writes as headers */
    int version;             /* "v" */
    char type;               /* "t" */
    const char *user;        /* "u", optional */
    size_t user_len;
};

/* ---- producer ---- */
typedef struct kafka_producer kafka_producer_t;
/* err is 0 when the broker acknowledged (acks=all), ERR_UNAVAILABLE when
 * the record was certainly not written, ERR_IN_DOUBT when it may have been
 * (its request was sent, then timed out or lost its connection). */
typedef void (*kafka_delivery_cb)(int err, void *opaque);
/* That err from librdkafka's error and rd_kafka_msg_status_t of a report. */
int kafka_delivery_err(int rd_err, int status);

int kafka_producer_init(kafka_producer_t **out, uv_loop_t *loop, const struct kafka_conf *conf);
/* Copies key and value. partition < 0 means "by key" (librdkafka's default
 * partitioner, the same in every chatd process). Returns 0 (cb will be
 * called once) or ERR_UNAVAILABLE / ERR_TOO_LARGE (cb will not be called). */
int kafka_produce(kafka_producer_t *p, const char *topic, int32_t partition, const void *key,
                  size_t key_len, const void *val, size_t val_len, const struct kafka_hdrs *h,
                  kafka_delivery_cb cb, void *opaque);
/* Asks for topic's metadata now. librdkafka learns a topic's partitions
 * lazily: a topic first named by kafka_produce() waits for the next 1 s
 * metadata scan, so the first messages after a start would take up to a
 * second. Roles call this at init for the topics they produce to. */
void kafka_producer_warm(kafka_producer_t *p, const char *topic);
/* 1 while at least one broker connection is up (from librdkafka stats). */
int kafka_producer_healthy(const kafka_producer_t *p);
/* 1 once the producer reported a fatal error: nothing it holds will be
 * delivered any more (its reports may never come: close it with 0). */
int kafka_producer_fatal(const kafka_producer_t *p);
/* Records produced but not yet acknowledged. */
size_t kafka_producer_inflight(const kafka_producer_t *p);
/* Fatal errors reported by any Kafka client of this process (librdkafka:
 * the instance is unusable until the process restarts); /healthz fails on
 * one, so the kubelet restarts the pod instead of leaving it unready. */
unsigned kafka_fatal_errors(void);
/* cb(ud) runs once, from the loop, at the process's first fatal error (a
 * librdkafka 2.0.2 idempotent producer hits one when an isolated partition
 * leader returns: docs/RELIABILITY.md P5). The process cannot heal it: chatd
 * drains and exits non-zero (chatd.c). cb may drain, not close: it runs
 * inside the failed client's event dispatch. */
void kafka_on_fatal(void (*cb)(void *ud), void *ud);
/* Fault injection (--fault-injection): raises a fabricated fatal error in
 * the producer, as rd_kafka_test_fatal_error does for librdkafka's tests. */
int kafka_producer_test_fatal(kafka_producer_t *p);
/* The effective value of a librdkafka property (defaults + opts), for logs
 * and tests. 0, or ERR_NOT_FOUND for an unknown name. */
int kafka_producer_setting(const kafka_producer_t *p, const char *name, char *buf, size_t len);
/* Shutdown only: flushes up to timeout_ms (blocking), then destroys. Pending
 * callbacks are called (ERR_UNAVAILABLE or ERR_IN_DOUBT for the undelivered). */
void kafka_producer_close(kafka_producer_t *p, int timeout_ms);

/* ---- consumers ---- */
typedef struct kafka_consumer kafka_consumer_t;
/* recs valid only during the call. */
typedef void (*kafka_batch_cb)(kafka_consumer_t *c, const struct kafka_rec *recs, size_t n,
                               void *user);

int kafka_consumer_init_group(kafka_consumer_t **out, uv_loop_t *loop,
                              const struct kafka_conf *conf, const char *group_id,
                              const char *topic, size_t max_batch, kafka_batch_cb cb,
                              void *user);
int kafka_consumer_init_assigned(kafka_consumer_t **out, uv_loop_t *loop,
                                 const struct kafka_conf *conf, const char *topic,
                                 int32_t partition, size_t max_batch, kafka_batch_cb cb,
                                 void *user);
/* A group-less member (classifier, --ownership=lease: roles/ownership.h):
 * group_id names the offsets, but it never subscribes; its partitions are
 * whatever kafka_consumer_assign gave it and kafka_consumer_release has not
 * taken back, with the same owns / owned_since / generation as a group
 * consumer's assign and revoke events. Never "assignment lost". */
int kafka_consumer_init_manual(kafka_consumer_t **out, uv_loop_t *loop,
                               const struct kafka_conf *conf, const char *group_id,
                               const char *topic, size_t max_batch, kafka_batch_cb cb,
                               void *user);
/* Manual: starts fetching partition at offset next (< 0: Kafka's committed
 * offset, else auto.offset.reset) as a new ownership; partition < 0 only
 * marks the consumer joined (its first, possibly empty, assignment). A
 * partition being released is kept instead. 0, or ERR_BAD_REQUEST (not
 * manual, closing), ERR_UNAVAILABLE (librdkafka refused). */
int kafka_consumer_assign(kafka_consumer_t *c, int32_t partition, int64_t next);
/* Manual: stops owning partition, at once when no batch is held, else once
 * the held batch lets the consumer go (like a group consumer's revoke). 0,
 * ERR_NOT_FOUND (not owned), ERR_BAD_REQUEST. */
int kafka_consumer_release(kafka_consumer_t *c, int32_t partition);
/* Manual: releases every partition, and kafka_consumer_assignment_lost is
 * 1 until that is applied (the held batch is dropped, not stored): the
 * member's lease may have lapsed and another may own them already. */
void kafka_consumer_release_lost(kafka_consumer_t *c);
/* Manual: the topic's partition count as librdkafka's metadata has it
 * (from the stats, statistics.interval.ms = 1 s), 0 until known. */
int kafka_consumer_partitions(const kafka_consumer_t *c);
/* hold=1: deliver no more batches until hold=0 (records wait in librdkafka). */
void kafka_consumer_hold(kafka_consumer_t *c, int hold);
/* Inside the batch callback: when the batch's oldest record was first seen
 * waiting in this process (uv_hrtime() ns): the first wake-up of the hold
 * it arrived in (any queued event stamps it: a stats event once a second
 * may make it early by up to the hold), else the drain that delivers it.
 * When librdkafka fetched it is not known. */
uint64_t kafka_consumer_batch_got_ns(const kafka_consumer_t *c);
/* Commit of "next offset to read" for one partition of the subscribed
 * topic: stored at once, sent by librdkafka within auto.commit.interval.ms
 * (60 s: the role keeps its own offsets, see kafka.c), on a revoke and at
 * close, never while the group rebalances. */
int kafka_consumer_commit(kafka_consumer_t *c, int32_t partition, int64_t next_offset);
/* Group consumer: the owned partition is fetched from offset next (the
 * role's own record of what it has done is ahead of Kafka's committed
 * offset). Asynchronous; records already fetched below it are discarded
 * by librdkafka. ERR_NOT_FOUND if the partition is not owned. */
int kafka_consumer_seek(kafka_consumer_t *c, int32_t partition, int64_t next);
/* 1 if partition is currently assigned to this consumer. */
int kafka_consumer_owns(const kafka_consumer_t *c, int32_t partition);
/* Group consumer: 1 once librdkafka considers the whole assignment lost
 * (session timed out, fenced by the coordinator), before the revoke event
 * is served: a held consumer learns it here. */
int kafka_consumer_assignment_lost(const kafka_consumer_t *c);
/* As kafka_producer_setting, for a consumer. */
int kafka_consumer_setting(const kafka_consumer_t *c, const char *name, char *buf, size_t len);
/* Group consumer: the generation at which partition was (last) assigned, 0
 * when it is not owned. State proved for one ownership (a fence epoch)
 * stays valid while this stays the same, whatever happens to the others. */
unsigned kafka_consumer_owned_since(const kafka_consumer_t *c, int32_t partition);
/* Changes whenever partitions are assigned or revoked: state derived from
 * owning a partition is valid only while it stays the same. */
unsigned kafka_consumer_generation(const kafka_consumer_t *c);
/* 1 while a broker is up and, for an assigned consumer, its partition is
 * being fetched (its start offset is resolved). */
int kafka_consumer_healthy(const kafka_consumer_t *c);
/* 1 once a group consumer has completed its first assignment (possibly an
 * empty one); always 1 for an assigned consumer. A group's first join waits
 * out the broker's group.initial.rebalance.delay.ms (3 s by default, and in
 * the mock cluster), during which nothing of the topic is consumed. */
int kafka_consumer_joined(const kafka_consumer_t *c);
/* Sum of consumer lag over assigned partitions, from stats (-1 unknown):
 * from the offsets the role stored (kafka_consumer_commit), else from the
 * position, never from Kafka's committed offset, which a group consumer
 * sends only once a minute. */
int64_t kafka_consumer_lag(const kafka_consumer_t *c);
/* Shutdown only (blocking): leaves the group cleanly, then destroys. */
void kafka_consumer_close(kafka_consumer_t *c);

/* ---- topics (real Kafka only: the embedded broker creates its own) ----
 * Checked once at start-up, blocking, before the loop runs. A topic that is
 * missing, or has fewer than min_partitions, is created (partitions) or
 * grown (to min_partitions) when create is set, else start-up stops with a
 * log line naming the command to run. Metadata comes from a list of all
 * topics, so a broker with auto.create.topics.enable never creates one with
 * its defaults behind chatd's back. replication -1: the brokers' default. */
struct kafka_topic_need {
    const char *name;
    int partitions;          /* when created */
    int min_partitions;      /* fewer: grow (create) or refuse */
};
int kafka_topics_ensure(const struct kafka_conf *conf, const struct kafka_topic_need *topics,
                        size_t n, int create, int replication, int timeout_ms);

#endif
