/* broker: the embedded Kafka-protocol broker (librdkafka's mock cluster).
 *
 * For development and tests only: it speaks the Kafka wire protocol on
 * 127.0.0.1 at ephemeral ports (librdkafka 2.0.2 cannot choose a port), so
 * its bootstrap address is published in a file for other processes. Its
 * state lives in memory: stopping it loses every record.
 * The mock runs on librdkafka's own threads; nothing here touches the loop.
 */
#ifndef CHATD_BROKER_H
#define CHATD_BROKER_H

#include <stddef.h>

typedef struct kafka_broker kafka_broker_t;

struct kafka_topic_spec {
    const char *name;
    int partitions;
};

/* Starts n_brokers mock brokers and creates the topics. Returns 0 or ERR_*. */
int kafka_broker_start(kafka_broker_t **out, int n_brokers, const struct kafka_topic_spec *topics,
                       size_t n_topics);
/* "127.0.0.1:PORT,..." valid until stop. */
const char *kafka_broker_bootstraps(const kafka_broker_t *b);
/* Writes the bootstrap address to path atomically (tmp + rename). */
int kafka_broker_write_bootstrap(const kafka_broker_t *b, const char *path);
/* Fault injection for tests (broker ids start at 1). */
int kafka_broker_set_down(kafka_broker_t *b, int broker_id, int down);
/* The next n requests of Kafka API api_key (0 Produce, 1 Fetch, ...) fail
 * with errors[i] (Kafka's numeric error codes). 0 or ERR_BAD_REQUEST. */
int kafka_broker_push_errors(kafka_broker_t *b, int api_key, const int *errors, size_t n);
/* Every response of broker_id is delayed by rtt_ms (0: none). 0 or ERR_*. */
int kafka_broker_set_rtt(kafka_broker_t *b, int broker_id, int rtt_ms);
void kafka_broker_stop(kafka_broker_t *b);

#endif
