/* classifier: consumes chat-send as one consumer group (cooperative-sticky),
 * and for each batch, in offset order:
 *   1. reads from PostgreSQL each room's max stored seq and the seqs of the
 *      batch's message ids already stored (two pipelined queries), so Redis
 *      can never hand out a stored seq again, even after losing its keys;
 *   2. assigns each message its room's next seq and reads the room's live
 *      gateways in one Redis script (dedup by message id, so a re-consumed
 *      record or a resent cid keeps its seq); events only read routes;
 *   3. stores the batch's messages in PostgreSQL in one statement;
 *   4. produces one record per destination gateway to chat-receive at
 *      partition = gateway id (a resent cid is not delivered again);
 *   5. commits the offsets once every produced record is acknowledged.
 * One batch is in flight at a time (the consumer is held meanwhile), so a
 * room's records are handled strictly in order. Any failure retries the
 * whole batch with backoff: every step is idempotent.
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
/* Stops taking new batches; the one in flight finishes. */
void classifier_drain(classifier_t *c);
/* 1 while a batch is in flight. */
int classifier_busy(const classifier_t *c);
/* Leaves the group (blocking, shutdown only); the batch in flight is
 * abandoned (it is re-consumed by the next owner). Then, once the loop has
 * run dry, classifier_free. */
void classifier_close(classifier_t *c);
void classifier_free(classifier_t *c);

#endif
