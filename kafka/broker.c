#include "kafka/broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "lib/err.h"
#include "lib/log.h"

#define KAFKA_BROKER_MAGIC 0x4b42524bu

struct kafka_broker {
    unsigned magic;
    rd_kafka_t *rk;              /* hosts the mock cluster, produces nothing */
    rd_kafka_mock_cluster_t *mc;
    char *bootstraps;
    int n_brokers;
};

/* Called on librdkafka's threads: no log_q() (static buffers), quote into
 * the stack; log_event itself formats on the stack and writes one line. */
static void kafka_broker_on_rdlog(const rd_kafka_t *rk, int level, const char *fac,
                                  const char *buf)
{
    char q[512];
    size_t o = 0;
    (void)rk;
    q[o++] = '"';
    for (const char *s = buf; *s && o < sizeof q - 6; s++)
        q[o++] = (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) ? '\'' : *s;
    q[o++] = '"';
    q[o] = 0;
    if (level <= 3)
        log_error("kafka_broker_log", "fac=%s msg=%s", fac, q);
    else if (level == 4)
        log_warn("kafka_broker_log", "fac=%s msg=%s", fac, q);
    else
        log_debug("kafka_broker_log", "fac=%s msg=%s", fac, q);
}

int kafka_broker_start(kafka_broker_t **out, int n_brokers, const struct kafka_topic_spec *topics,
                       size_t n_topics)
{
    char errstr[512];
    if (n_brokers < 1)
        return ERR_BAD_REQUEST;
    kafka_broker_t *b = calloc(1, sizeof *b);
    if (!b)
        return ERR_NOMEM;
    b->magic = KAFKA_BROKER_MAGIC;
    b->n_brokers = n_brokers;
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(kc, kafka_broker_on_rdlog);
    /* The host client has no bootstrap servers of its own: quiet about it. */
    if (rd_kafka_conf_set(kc, "log_level", "3", errstr, sizeof errstr) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(kc, "client.id", "chatd-embedded-broker", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
        log_error("kafka_broker_start_failed", "err=%s", log_q(errstr, strlen(errstr)));
        rd_kafka_conf_destroy(kc);
        free(b);
        return ERR_INTERNAL;
    }
    b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof errstr);
    if (!b->rk) {
        log_error("kafka_broker_start_failed", "err=%s", log_q(errstr, strlen(errstr)));
        rd_kafka_conf_destroy(kc);
        free(b);
        return ERR_INTERNAL;
    }
    b->mc = rd_kafka_mock_cluster_new(b->rk, n_brokers);
    if (!b->mc) {
        log_error("kafka_broker_start_failed", "err=\"mock cluster\"");
        kafka_broker_stop(b);
        return ERR_INTERNAL;
    }
    int rf = n_brokers < 3 ? n_brokers : 3;
    for (size_t i = 0; i < n_topics; i++) {
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(b->mc, topics[i].name, topics[i].partitions, rf);
        if (err) {
            log_error("kafka_broker_topic_failed", "topic=%s partitions=%d err=%s",
                      topics[i].name, topics[i].partitions, rd_kafka_err2name(err));
            kafka_broker_stop(b);
            return ERR_BAD_REQUEST;
        }
    }
    b->bootstraps = strdup(rd_kafka_mock_cluster_bootstraps(b->mc));
    if (!b->bootstraps) {
        kafka_broker_stop(b);
        return ERR_NOMEM;
    }
    log_info("kafka_broker_started", "brokers=%d bootstraps=%s topics=%zu", n_brokers,
             b->bootstraps, n_topics);
    *out = b;
    return 0;
}

const char *kafka_broker_bootstraps(const kafka_broker_t *b)
{
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    return b->bootstraps;
}

static int kafka_broker_write_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

int kafka_broker_write_bootstrap(const kafka_broker_t *b, const char *path)
{
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return ERR_BAD_REQUEST;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        goto fail;
    if (kafka_broker_write_all(fd, b->bootstraps, strlen(b->bootstraps)) < 0 || fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        goto fail;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        goto fail;
    }
    log_info("kafka_broker_bootstrap_written", "path=%s bootstraps=%s", log_q(path, strlen(path)),
             b->bootstraps);
    return 0;
fail:
    log_error("kafka_broker_bootstrap_failed", "path=%s err=%s", log_q(path, strlen(path)),
              log_q(strerror(errno), strlen(strerror(errno))));
    return ERR_INTERNAL;
}

int kafka_broker_set_down(kafka_broker_t *b, int broker_id, int down)
{
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    if (broker_id < 1 || broker_id > b->n_brokers)
        return ERR_NOT_FOUND;
    rd_kafka_resp_err_t err = down ? rd_kafka_mock_broker_set_down(b->mc, broker_id)
                                   : rd_kafka_mock_broker_set_up(b->mc, broker_id);
    if (err) {
        log_error("kafka_broker_set_down_failed", "broker=%d down=%d err=%s", broker_id, down,
                  rd_kafka_err2name(err));
        return ERR_INTERNAL;
    }
    log_info("kafka_broker_state", "broker=%d down=%d", broker_id, down);
    return 0;
}

int kafka_broker_set_rtt(kafka_broker_t *b, int broker_id, int rtt_ms)
{
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    if (broker_id < 1 || broker_id > b->n_brokers)
        return ERR_NOT_FOUND;
    if (rtt_ms < 0 || rtt_ms > 60000)
        return ERR_BAD_REQUEST;
    rd_kafka_resp_err_t err = rd_kafka_mock_broker_set_rtt(b->mc, broker_id, rtt_ms);
    if (err) {
        log_error("kafka_broker_set_rtt_failed", "broker=%d rtt_ms=%d err=%s", broker_id, rtt_ms,
                  rd_kafka_err2name(err));
        return ERR_INTERNAL;
    }
    log_info("kafka_broker_rtt", "broker=%d rtt_ms=%d", broker_id, rtt_ms);
    return 0;
}

int kafka_broker_push_errors(kafka_broker_t *b, int api_key, const int *errors, size_t n)
{
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    if (api_key < 0 || api_key > 100 || n == 0 || n > 1000)
        return ERR_BAD_REQUEST;
    rd_kafka_resp_err_t *errs = calloc(n, sizeof *errs);
    if (!errs)
        return ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        errs[i] = (rd_kafka_resp_err_t)errors[i];
    rd_kafka_mock_push_request_errors_array(b->mc, (int16_t)api_key, n, errs);
    free(errs);
    log_info("kafka_broker_errors_pushed", "api_key=%d count=%zu first=%d", api_key, n, errors[0]);
    return 0;
}

void kafka_broker_stop(kafka_broker_t *b)
{
    if (!b)
        return;
    CHATD_ASSERT(b->magic == KAFKA_BROKER_MAGIC);
    if (b->mc)
        rd_kafka_mock_cluster_destroy(b->mc);
    if (b->rk)
        rd_kafka_destroy(b->rk);
    free(b->bootstraps);
    b->magic = 0;
    free(b);
}
