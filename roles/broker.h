/* broker: the embedded Kafka-protocol broker as a role (development and
 * tests only). Starts librdkafka's mock cluster with chat-send and
 * chat-receive created at the configured partition counts and publishes its
 * bootstrap address (log line + --kafka-bootstrap-file).
 */
#ifndef CHATD_ROLE_BROKER_H
#define CHATD_ROLE_BROKER_H

#include "conf/conf.h"
#include "kafka/broker.h"
#include "net/http.h"

/* Returns 0 with *out started, or an ERR_* code (logged). */
int broker_role_start(kafka_broker_t **out, const struct conf *c);

/* With --fault-injection (tests only), the broker's HTTP port also serves
 *   POST /faults/broker/{id}/down | /up
 *   POST /faults/request-errors  {"api_key":0,"errors":[7,7]}
 * Returns 0 if req is not one of these paths. */
int broker_role_http(kafka_broker_t *b, http_req_t *req);

#endif
