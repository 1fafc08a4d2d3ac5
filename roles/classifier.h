/* classifier: consumes chat-send as one consumer group (cooperative-sticky),
 * or with --ownership=lease by leases in PostgreSQL (roles/ownership.h, the
 * default with the embedded broker), and for each batch, in offset order:
 *   1. reads from PostgreSQL the seqs of the batch's message ids already
 *      stored and, for rooms it has not stored into since its last
 *      rebalance, their max stored seq (pipelined prepared statements), so
 *      Redis can never hand out a stored seq again, even after losing its
 *      keys (the max of a room it stores into is kept in memory: while the
 *      assignment holds nobody else writes the room);
 *   2. assigns each message its room's next seq and reads the room's live
 *      gateways in one Redis script (dedup by message id, so a re-consumed
 *      record or a resent cid keeps its seq); events only read routes;
 *   3. stores the batch's messages in PostgreSQL in one statement;
 *   4. produces one record per destination gateway to chat-receive at
 *      partition = gateway id (a resent cid is not delivered again);
 *   5. commits the offsets once every produced record is acknowledged.
 * Two batches overlap: while one waits for its acknowledgements (4-5) the
 * next is sequenced and stored (1-3), and it is produced only after the
 * first is committed, so chat-receive gets them in order and a room's seqs
 * are assigned strictly in offset order. Any failure retries that batch
 * with backoff (every step is idempotent); a batch waiting behind a failed
 * one waits until it has been produced again.
 * Every classifier also keeps messages' monthly partitions, at start and
 * hourly: the months ahead created, and with --retention the expired ones
 * dropped (store/migrations/006, docs/ARCHITECTURE.md "Retention").
 */
#ifndef CHATD_CLASSIFIER_H
#define CHATD_CLASSIFIER_H

#include <uv.h>

#include "conf/conf.h"
#include "kafka/kafka.h"
#include "store/routes.h"

typedef struct classifier classifier_t;

struct classifier_deps {
    uv_loop_t *loop;
    const struct conf *conf;
    const struct kafka_conf *kafka;
    kafka_producer_t *producer;   /* shared, owned by main */
    routes_t *routes;             /* shared, owned by main */
    redis_client_t *redis;        /* shared, owned by main */
};

int classifier_init(classifier_t **out, const struct classifier_deps *d);
int classifier_ready(const classifier_t *c);
int classifier_pg_ready(const classifier_t *c);
/* Stops taking new batches; the ones in flight finish. */
void classifier_drain(classifier_t *c);
/* A Kafka client of the process failed for good (kafka_on_fatal): as
 * classifier_drain, but the batches in flight may never finish (a fatal
 * producer cannot route them, a fatal consumer cannot commit), so they stop
 * being retried and are abandoned at classifier_close, never committed:
 * the next owner re-reads them (their seqs kept by the dedup). The lease
 * (--ownership=lease) is given back at once, not after its expiry. */
void classifier_fail(classifier_t *c);
/* 1 while a batch is in flight (after classifier_fail: while the lease is
 * being given back). */
int classifier_busy(const classifier_t *c);
/* Leaves the group (blocking, shutdown only); the batches in flight are
 * abandoned (re-consumed by the next owner). Then, once the loop has
 * run dry, classifier_free. */
void classifier_close(classifier_t *c);
void classifier_free(classifier_t *c);

#endif
