/* ownership: which chat-send partitions a classifier consumes, by lease in
 * PostgreSQL instead of Kafka's group coordinator (--ownership=lease, the
 * default with the embedded broker; docs/ARCHITECTURE.md "Failover").
 *
 * Every OWNERSHIP_BEAT_MS the member renews its row of migrations/010
 * (expires_at = the server's now() + OWNERSHIP_LEASE_MS; only the server's
 * clock is compared) listing the partitions it holds, and reads the others'
 * live rows. Each member computes the same desired owner of every
 * partition by rendezvous hashing over the live members that do not drain:
 * when one dies only its partitions move, when one joins only those it
 * wins. A member gives back a partition it should no longer own
 * (kafka_consumer_release: after the batch in flight) and takes one it
 * should own once no live member lists it, i.e. once its owner released it
 * or its lease expired (kafka_consumer_assign at partition_owners'
 * next_offset). The classifier's fence epoch, taken on the first batch of
 * each ownership, still decides who may store: the lease only schedules.
 *
 * A member that cannot renew for a lease (PostgreSQL unreachable, the
 * process frozen) releases everything as lost (its batch in flight is
 * dropped, as a group consumer's lost assignment). Draining: it asks for
 * nothing more, keeps what it holds until the classifier is idle, then
 * deletes its row so the others take its partitions at once.
 *
 * Uses its own PostgreSQL connection: a beat never waits behind a batch's
 * statements. The consumer (kafka_consumer_init_manual) outlives it.
 */
#ifndef CHATD_OWNERSHIP_H
#define CHATD_OWNERSHIP_H

#include <uv.h>

#include "conf/conf.h"
#include "kafka/kafka.h"

#define OWNERSHIP_LEASE_MS 1500
#define OWNERSHIP_BEAT_MS 100

typedef struct ownership ownership_t;
/* 1 while the classifier has a batch in flight. */
typedef int (*ownership_busy_cb)(void *ud);

/* member: unique per process (copied). 0 or an err.h code. */
int ownership_init(ownership_t **out, uv_loop_t *loop, const struct conf *conf,
                   kafka_consumer_t *consumer, const char *member, ownership_busy_cb busy,
                   void *ud);
/* 1 after the first beat answered (the member knows its partitions). */
int ownership_ready(const ownership_t *o);
/* SIGTERM: take nothing more; once busy() is 0, delete the row. */
void ownership_drain(ownership_t *o);
/* 1 while draining and the row is not deleted yet (or the delete failed:
 * then the lease expires by itself). */
int ownership_leaving(const ownership_t *o);
/* Stops beating and closes the connection (its callbacks still come, from
 * the loop); the consumer must still be open. NULL-tolerant. */
void ownership_close(ownership_t *o);
/* After the loop has run the close callbacks. NULL-tolerant. */
void ownership_free(ownership_t *o);

#endif
