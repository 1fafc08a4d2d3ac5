#include "roles/broker.h"

#include "lib/err.h"
#include "lib/log.h"

int broker_role_start(kafka_broker_t **out, const struct conf *c)
{
    const struct kafka_topic_spec topics[] = {
        { c->topic_send, c->send_partitions },
        { c->topic_receive, c->receive_partitions },
    };
    int rc = kafka_broker_start(out, c->embedded_brokers, topics, 2);
    if (rc) {
        log_error("broker_start_failed", "err=%s", err_code(rc));
        return rc;
    }
    const char *bs = kafka_broker_bootstraps(*out);
    if (c->kafka_bootstrap_file[0] && (rc = kafka_broker_write_bootstrap(*out, c->kafka_bootstrap_file))) {
        log_error("bootstrap_write_failed", "path=%s err=%s", c->kafka_bootstrap_file, err_code(rc));
        kafka_broker_stop(*out);
        return rc;
    }
    log_info("broker_started", "bootstrap=%s brokers=%d send_partitions=%d receive_partitions=%d file=%s",
             bs, c->embedded_brokers, c->send_partitions, c->receive_partitions,
             c->kafka_bootstrap_file[0] ? c->kafka_bootstrap_file : "-");
    return 0;
}
