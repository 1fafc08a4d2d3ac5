#include "kafka/kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>

#include "lib/err.h"
#include "lib/log.h"
#include "lib/metrics.h"

/* Events handled per wakeup before the loop gets to serve other fds; the rest
 * is drained on the next turn through a zero timer. */
#define KAFKA_DRAIN_MAX 10000
/* Shutdown: how long to wait for delivery reports of purged messages. */
#define KAFKA_PURGE_WAIT_MS 1000
/* librdkafka 2.0.2 aborts when a cooperative-sticky member that joined is
 * destroyed before its first assignment (fixed upstream in 2.3.0, #4381):
 * close waits this long for one. */
#define KAFKA_FIRST_ASSIGN_WAIT_MS 5000

#define KAFKA_PRODUCER_MAGIC 0x4b50524fu
#define KAFKA_CONSUMER_MAGIC 0x4b434f4eu
#define KAFKA_DR_MAGIC 0x4b44524eu

#define kafka_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ---- loop integration: one rd_kafka queue -> pipe -> uv_poll ---- */

struct kafka_pump {
    uv_poll_t poll;
    uv_timer_t again;           /* zero timeout: finish a capped drain next turn */
    rd_kafka_queue_t *q;
    int rfd, wfd;
    int open_handles;
    void (*drain)(struct kafka_pump *pp);
    void (*on_closed)(struct kafka_pump *pp); /* frees the owner */
};

static void kafka_pump_on_timer(uv_timer_t *t)
{
    struct kafka_pump *pp = t->data;
    pp->drain(pp);
}

static void kafka_pump_on_readable(uv_poll_t *h, int status, int events)
{
    struct kafka_pump *pp = h->data;
    char buf[64];
    (void)events;
    if (status < 0)
        log_error("kafka_poll_error", "err=%s", uv_strerror(status));
    for (;;) {
        ssize_t n = read(pp->rfd, buf, sizeof buf);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        break; /* EAGAIN: empty */
    }
    pp->drain(pp);
}

static void kafka_pump_again(struct kafka_pump *pp)
{
    uv_timer_start(&pp->again, kafka_pump_on_timer, 0, 0);
}

static void kafka_pump_pause(struct kafka_pump *pp)
{
    uv_poll_stop(&pp->poll);
    uv_timer_stop(&pp->again);
}

/* Starts (or restarts) watching, and drains once right away: the wake-up byte
 * may already have been consumed, or the queue filled before io events were on. */
static void kafka_pump_resume(struct kafka_pump *pp)
{
    uv_poll_start(&pp->poll, UV_READABLE, kafka_pump_on_readable);
    kafka_pump_again(pp);
}

/* Last fallible step of an _init: on failure nothing is left to undo here. */
static int kafka_pump_init(struct kafka_pump *pp, uv_loop_t *loop, rd_kafka_queue_t *q)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        log_error("kafka_pipe_failed", "err=%s", strerror(errno));
        return ERR_INTERNAL;
    }
    int r = uv_poll_init(loop, &pp->poll, fds[0]);
    if (r < 0) {
        log_error("kafka_poll_init_failed", "err=%s", uv_strerror(r));
        close(fds[0]);
        close(fds[1]);
        return ERR_INTERNAL;
    }
    uv_timer_init(loop, &pp->again);
    pp->poll.data = pp;
    pp->again.data = pp;
    pp->rfd = fds[0];
    pp->wfd = fds[1];
    pp->q = q;
    pp->open_handles = 2;
    rd_kafka_queue_io_event_enable(q, pp->wfd, "1", 1);
    kafka_pump_resume(pp);
    return 0;
}

static void kafka_pump_on_close(uv_handle_t *h)
{
    struct kafka_pump *pp = h->data;
    if (--pp->open_handles > 0)
        return;
    close(pp->rfd);
    close(pp->wfd);
    pp->on_closed(pp);
}

/* Call after the rd_kafka_t is destroyed: the pipe outlives every writer. */
static void kafka_pump_close(struct kafka_pump *pp)
{
    uv_close((uv_handle_t *)&pp->poll, kafka_pump_on_close);
    uv_close((uv_handle_t *)&pp->again, kafka_pump_on_close);
}

/* ---- configuration ---- */

/* Log callback for messages librdkafka emits without a handle (config
 * errors), on the calling thread. With log.queue=true everything else
 * arrives as RD_KAFKA_EVENT_LOG on the loop. */
static void kafka_log_line(int level, const char *client, const char *fac, const char *msg)
{
    size_t len = strlen(msg);
    if (level <= 3)
        log_error("kafka_log", "client=%s fac=%s msg=%s", client, fac, log_q(msg, len));
    else if (level == 4)
        log_warn("kafka_log", "client=%s fac=%s msg=%s", client, fac, log_q(msg, len));
    else if (level <= 6)
        log_info("kafka_log", "client=%s fac=%s msg=%s", client, fac, log_q(msg, len));
    else
        log_debug("kafka_log", "client=%s fac=%s msg=%s", client, fac, log_q(msg, len));
}

static void kafka_on_rdlog(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_log_line(level, rk ? rd_kafka_name(rk) : "-", fac, buf);
}

static int kafka_conf_set(rd_kafka_conf_t *kc, const char *key, const char *val)
{
    char errstr[256];
    if (rd_kafka_conf_set(kc, key, val, errstr, sizeof errstr) == RD_KAFKA_CONF_OK)
        return 0;
    log_error("kafka_bad_option", "key=%s value=%s err=%s", log_q(key, strlen(key)),
              log_q(val, strlen(val)), log_q(errstr, strlen(errstr)));
    return ERR_BAD_REQUEST;
}

/* How long a client waits on one request to a broker that went silent (its
 * host dropped off the network: no reset, no answer). librdkafka's 60 s
 * default held every fetch and metadata request in flight to an isolated
 * partition leader for a minute after the majority had elected a new one
 * (docs/RELIABILITY.md P5); a timed-out request closes the connection, and
 * the partition follows the new leader at the next metadata refresh. It
 * bounds Fetch (fetch.wait.max.ms + this), Metadata, FindCoordinator,
 * OffsetCommit (a Kafka 4 broker answers one within offsets.commit.timeout.ms,
 * 5 s) and ListOffsets; group requests carry timeouts of their own (session,
 * max.poll.interval.ms). A ProduceRequest already waits only the lesser of
 * this and its first message's remaining message.timeout.ms (10 s), so a
 * send is not answered `unavailable` ("stored":"maybe") more often. Too
 * low and a slow but live broker's answers are cut off, its connection
 * dropped and the requests retried: 10 s is 20 times a fetch's wait. The
 * embedded broker is in-process (never silent): librdkafka's default. */
#define KAFKA_SOCKET_TIMEOUT_MS "10000"
/* The consumers refresh the metadata of the topics they use this often on
 * real Kafka (the producer: kafka_producer_init). A broker whose requests
 * time out triggers one refresh; when that refresh still names the old
 * leader (the majority had not elected yet), the consumer's default
 * interval, 5 minutes, kept the partition on the dead broker. */
#define KAFKA_METADATA_REFRESH_MS "2000"

/* defaults: NULL-terminated key, value pairs. conf->opts go on top of them. */
static int kafka_conf_build(rd_kafka_conf_t **out, const struct kafka_conf *conf,
                            const char *const *defaults, int events)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    int err = 0;
    rd_kafka_conf_set_log_cb(kc, kafka_on_rdlog);
    if (conf->brokers)
        err = kafka_conf_set(kc, "bootstrap.servers", conf->brokers);
    if (!err && conf->client_id)
        err = kafka_conf_set(kc, "client.id", conf->client_id);
    if (!err)
        err = kafka_conf_set(kc, "statistics.interval.ms", "1000");
    /* librdkafka fails a record whose leader is down (message.timeout.ms)
     * and notices a broker's return only when that broker's thread wakes,
     * which it does after its reconnect backoff: up to 10 s by default, so
     * a join during an outage was answered `unavailable` 5-8 s past
     * message.timeout.ms (test_member_changes_answered_once_kafka_has_their_
     * record). One attempt a second to a down broker costs nothing worth
     * that wait; identical connect failures are logged once. */
    if (!err)
        err = kafka_conf_set(kc, "reconnect.backoff.max.ms", "1000");
    if (!err && !conf->embedded)
        err = kafka_conf_set(kc, "socket.timeout.ms", KAFKA_SOCKET_TIMEOUT_MS);
    for (size_t i = 0; !err && defaults[i]; i += 2)
        err = kafka_conf_set(kc, defaults[i], defaults[i + 1]);
    for (size_t i = 0; !err && i < conf->n_opts; i++) {
        const char *opt = conf->opts[i];
        const char *eq = strchr(opt, '=');
        char key[256];
        if (!eq || eq == opt || (size_t)(eq - opt) >= sizeof key) {
            log_error("kafka_bad_option", "opt=%s err=\"expected key=value\"",
                      log_q(opt, strlen(opt)));
            err = ERR_BAD_REQUEST;
            break;
        }
        memcpy(key, opt, (size_t)(eq - opt));
        key[eq - opt] = 0;
        err = kafka_conf_set(kc, key, eq + 1);
    }
    /* Not overridable: librdkafka must never log from its own threads. */
    if (!err)
        err = kafka_conf_set(kc, "log.queue", "true");
    if (err) {
        rd_kafka_conf_destroy(kc);
        return err;
    }
    rd_kafka_conf_set_events(kc, events);
    *out = kc;
    return 0;
}

static void kafka_on_log_event(rd_kafka_t *rk, rd_kafka_event_t *ev)
{
    const char *fac = "", *str = "";
    int level = 6;
    if (rd_kafka_event_log(ev, &fac, &str, &level) == 0)
        kafka_log_line(level, rd_kafka_name(rk), fac, str);
}

/* Loop thread only (error events are polled there). */
static unsigned kafka_fatal_count;
static void (*kafka_fatal_cb)(void *ud);
static void *kafka_fatal_ud;

unsigned kafka_fatal_errors(void) { return kafka_fatal_count; }

void kafka_on_fatal(void (*cb)(void *ud), void *ud)
{
    kafka_fatal_cb = cb;
    kafka_fatal_ud = ud;
}

/* Returns 1 if the error is fatal for the client instance. */
static int kafka_on_error_event(rd_kafka_t *rk, rd_kafka_event_t *ev, int *healthy)
{
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    const char *s = rd_kafka_event_error_string(ev);
    int fatal = rd_kafka_event_error_is_fatal(ev);
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        *healthy = 0;
    if (fatal)
        log_error("kafka_fatal", "client=%s err=%s msg=%s", rd_kafka_name(rk),
                  rd_kafka_err2name(err), log_q(s, strlen(s)));
    else
        log_warn("kafka_error", "client=%s err=%s msg=%s", rd_kafka_name(rk),
                 rd_kafka_err2name(err), log_q(s, strlen(s)));
    if (fatal && kafka_fatal_count++ == 0 && kafka_fatal_cb)
        kafka_fatal_cb(kafka_fatal_ud);
    return fatal;
}

/* ---- owned partitions (small set) ---- */

struct kafka_parts {
    int32_t *v;
    unsigned *since;             /* consumer generation when v[i] was assigned */
    size_t n, cap;
};

static int kafka_parts_has(const struct kafka_parts *s, int32_t p)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] == p)
            return 1;
    return 0;
}

static void kafka_parts_add(struct kafka_parts *s, int32_t p)
{
    if (kafka_parts_has(s, p))
        return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int32_t *v = realloc(s->v, cap * sizeof *v);
        CHATD_ASSERT(v != NULL);
        s->v = v;
        unsigned *since = realloc(s->since, cap * sizeof *since);
        CHATD_ASSERT(since != NULL);
        s->since = since;
        s->cap = cap;
    }
    s->since[s->n] = 0;
    s->v[s->n++] = p;
}

static void kafka_parts_del(struct kafka_parts *s, int32_t p)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] == p) {
            s->n--;
            s->v[i] = s->v[s->n];
            s->since[i] = s->since[s->n];
            return;
        }
}

/* ---- statistics ---- */

static int kafka_stats_healthy(const cJSON *root)
{
    const cJSON *brokers = cJSON_GetObjectItemCaseSensitive(root, "brokers");
    const cJSON *b;
    cJSON_ArrayForEach(b, brokers) {
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(b, "source");
        const cJSON *state = cJSON_GetObjectItemCaseSensitive(b, "state");
        if (!cJSON_IsString(src) || !cJSON_IsString(state))
            continue;
        if (strcmp(src->valuestring, "internal") == 0 || strcmp(src->valuestring, "logical") == 0)
            continue;
        if (strcmp(state->valuestring, "UP") == 0)
            return 1;
    }
    return 0;
}

/* The group member holds its assignment (possibly empty). */
static int kafka_stats_steady(const cJSON *root)
{
    const cJSON *cgrp = cJSON_GetObjectItemCaseSensitive(root, "cgrp");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(cgrp, "join_state");
    return cJSON_IsString(js) && strcmp(js->valuestring, "steady") == 0;
}

static int64_t kafka_stats_num(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
}

/* Lag from the offset the role stored (consumer_lag_stored: what it has
 * done), not from the committed one: a group consumer commits to Kafka
 * once a minute (KAFKA_COMMIT_INTERVAL_MS), so the committed lag would
 * carry up to a minute of traffic. Before the role stores one (a partition
 * just assigned, idle) and for a consumer that never stores (gateway): the
 * position. -1 when no owned partition has a known lag. */
static int64_t kafka_stats_lag(const cJSON *root, const char *topic, const struct kafka_parts *own)
{
    const cJSON *topics = cJSON_GetObjectItemCaseSensitive(root, "topics");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(topics, topic);
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(t, "partitions");
    const cJSON *p;
    int64_t sum = 0;
    int known = 0;
    if (own->n == 0)
        return 0;
    cJSON_ArrayForEach(p, parts) {
        int64_t id = kafka_stats_num(p, "partition");
        if (id < 0 || !kafka_parts_has(own, (int32_t)id))
            continue;
        int64_t lag = kafka_stats_num(p, "consumer_lag_stored");
        if (lag < 0) {
            int64_t end = kafka_stats_num(p, "ls_offset");
            int64_t pos = kafka_stats_num(p, "app_offset");
            if (end < 0)
                end = kafka_stats_num(p, "hi_offset");
            if (end >= 0 && pos >= 0 && pos <= end)
                lag = end - pos;
        }
        if (lag >= 0) {
            sum += lag;
            known = 1;
        }
    }
    return known ? sum : -1;
}

/* The topic's partitions in the metadata librdkafka holds (0: not yet). */
static int kafka_stats_partitions(const cJSON *root, const char *topic)
{
    const cJSON *topics = cJSON_GetObjectItemCaseSensitive(root, "topics");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(topics, topic);
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(t, "partitions");
    const cJSON *p;
    int n = 0;
    cJSON_ArrayForEach(p, parts) {
        if (kafka_stats_num(p, "partition") >= 0 &&
            !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "unknown")))
            n++;
    }
    return n;
}

/* 1 once every owned partition is being fetched ("active"): until then an
 * assigned consumer started at the end would skip what is produced now. */
static int kafka_stats_fetching(const cJSON *root, const char *topic, const struct kafka_parts *own)
{
    const cJSON *topics = cJSON_GetObjectItemCaseSensitive(root, "topics");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(topics, topic);
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(t, "partitions");
    const cJSON *p;
    size_t active = 0;
    cJSON_ArrayForEach(p, parts) {
        int64_t id = kafka_stats_num(p, "partition");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(p, "fetch_state");
        if (id >= 0 && kafka_parts_has(own, (int32_t)id) && cJSON_IsString(st) &&
            !strcmp(st->valuestring, "active"))
            active++;
    }
    return active == own->n;
}

/* ---- metrics ---- */

/* One series per process, registered by the first client (a Prometheus
 * scrape rejects duplicate series). Index 0: assigned, 1: group consumer. */
static struct {
    metric_t *produced, *errors, *latency;
    metric_t *consumed[2], *lag[2];
} kafka_m;

static void kafka_metrics_init(void)
{
    static const char *const kind[2] = { "consumer=\"assigned\"", "consumer=\"group\"" };
    if (kafka_m.produced)
        return;
    kafka_m.produced = metrics_counter("chatd_kafka_produced_total",
                                       "Records acknowledged by Kafka.", NULL);
    kafka_m.errors = metrics_counter("chatd_kafka_delivery_errors_total",
                                     "Records Kafka did not acknowledge.", NULL);
    kafka_m.latency = metrics_histogram("chatd_kafka_delivery_seconds",
                                        "Time from produce to delivery report.", NULL);
    for (int i = 0; i < 2; i++) {
        kafka_m.consumed[i] = metrics_counter("chatd_kafka_consumed_total",
                                              "Records handed to the role.", kind[i]);
        kafka_m.lag[i] = metrics_gauge("chatd_kafka_consumer_lag",
                                       "Records behind the end of the owned partitions.", kind[i]);
    }
}

/* ===================================================================== */
/* ---- producer ---- */

struct kafka_dr {                /* one per kafka_produce() awaiting its report */
    unsigned magic;
    struct kafka_dr *prev, *next;
    kafka_delivery_cb cb;
    void *opaque;
    uint64_t t0_ns;
};

struct kafka_producer {
    unsigned magic;
    struct kafka_pump pump;
    uv_loop_t *loop;
    rd_kafka_t *rk;
    struct kafka_dr pending;     /* list head */
    size_t inflight;
    int healthy, fatal, closing, dispatching;
    uint64_t err_log_ms;         /* rate limit for delivery error lines */
    unsigned long err_suppressed;
};

static void kafka_producer_finish(kafka_producer_t *p, struct kafka_dr *d, int err)
{
    CHATD_ASSERT(d->magic == KAFKA_DR_MAGIC);
    d->prev->next = d->next;
    d->next->prev = d->prev;
    p->inflight--;
    d->magic = 0;
    kafka_delivery_cb cb = d->cb;
    void *opaque = d->opaque;
    free(d);
    if (cb)
        cb(err, opaque);
}

static void kafka_producer_log_failure(kafka_producer_t *p, const rd_kafka_message_t *m)
{
    uint64_t now = uv_now(p->loop);
    if (p->err_log_ms && now - p->err_log_ms < 1000) {
        p->err_suppressed++;
        return;
    }
    log_warn("kafka_delivery_failed", "client=%s topic=%s partition=%" PRId32 " err=%s suppressed=%lu",
             rd_kafka_name(p->rk), rd_kafka_topic_name(m->rkt), m->partition,
             rd_kafka_err2name(m->err), p->err_suppressed);
    p->err_log_ms = now ? now : 1;
    p->err_suppressed = 0;
}

/* librdkafka knows whether a failed record reached a broker: never sent
 * (or refused as not written) is NOT_PERSISTED; a request sent and then
 * timed out or cut off is POSSIBLY_PERSISTED, and the broker may have
 * appended it. Only the first is a certain "not written". */
int kafka_delivery_err(int rd_err, int status)
{
    if (rd_err == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    return status == RD_KAFKA_MSG_STATUS_NOT_PERSISTED ? ERR_UNAVAILABLE : ERR_IN_DOUBT;
}

static void kafka_producer_on_dr(kafka_producer_t *p, rd_kafka_event_t *ev)
{
    const rd_kafka_message_t *m;
    uint64_t now = uv_hrtime();
    while ((m = rd_kafka_event_message_next(ev)) != NULL) {
        struct kafka_dr *d = m->_private;
        CHATD_ASSERT(d != NULL);
        if (m->err) {
            metric_inc(kafka_m.errors);
            kafka_producer_log_failure(p, m);
        } else {
            metric_inc(kafka_m.produced);
            metric_observe(kafka_m.latency, (double)(now - d->t0_ns) / 1e9);
        }
        kafka_producer_finish(p, d, kafka_delivery_err(m->err, rd_kafka_message_status(m)));
    }
}

static void kafka_producer_on_event(kafka_producer_t *p, rd_kafka_event_t *ev)
{
    switch (rd_kafka_event_type(ev)) {
    case RD_KAFKA_EVENT_DR:
        kafka_producer_on_dr(p, ev);
        break;
    case RD_KAFKA_EVENT_LOG:
        kafka_on_log_event(p->rk, ev);
        break;
    case RD_KAFKA_EVENT_ERROR:
        if (kafka_on_error_event(p->rk, ev, &p->healthy))
            p->fatal = 1;
        break;
    case RD_KAFKA_EVENT_STATS: {
        cJSON *root = cJSON_Parse(rd_kafka_event_stats(ev));
        if (root) {
            p->healthy = kafka_stats_healthy(root);
            cJSON_Delete(root);
        }
        break;
    }
    default:
        break;
    }
}

static void kafka_producer_drain(struct kafka_pump *pp)
{
    kafka_producer_t *p = kafka_container_of(pp, kafka_producer_t, pump);
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    p->dispatching = 1;
    for (int i = 0; i < KAFKA_DRAIN_MAX; i++) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(pp->q, 0);
        if (!ev) {
            p->dispatching = 0;
            return;
        }
        kafka_producer_on_event(p, ev);
        rd_kafka_event_destroy(ev);
    }
    p->dispatching = 0;
    kafka_pump_again(pp);
}

static void kafka_producer_on_closed(struct kafka_pump *pp)
{
    kafka_producer_t *p = kafka_container_of(pp, kafka_producer_t, pump);
    p->magic = 0;
    free(p);
}

int kafka_producer_init(kafka_producer_t **out, uv_loop_t *loop, const struct kafka_conf *conf)
{
    char linger[16];
    snprintf(linger, sizeof linger, "%d", conf->linger_ms);
    const char *const defaults[] = {
        "enable.idempotence", "true",
        "acks", "all",
        "linger.ms", linger,
        /* A send waits at most this long for Kafka before the client hears
         * "unavailable" (librdkafka's default is 5 minutes). */
        "message.timeout.ms", "10000",
        /* When request R1 fails "possibly persisted" (timeout, dropped
         * connection) and a later R2 succeeds, librdkafka acknowledges R1's
         * records without resending them: a real broker appends R2 only
         * after R1 (idempotence sequences). The mock cluster checks
         * sequences only for transactional producers and appends R2 alone,
         * so R1 would be acked and never stored. One request in flight per
         * connection on the embedded broker (test_acked_is_stored); real
         * brokers keep librdkafka's 5. */
        "max.in.flight.requests.per.connection", conf->embedded ? "1" : "5",
        /* A gateway that joins grows chat-receive (kafka_topics_ensure)
         * before it registers as live; a classifier producing to the new
         * partition fails with _UNKNOWN_PARTITION (its batch retried) until
         * its next metadata refresh, 5 minutes by default: on real Kafka
         * refresh the topics in use every 2 s (tests/faults/test_f9). The
         * embedded broker's topics never grow. */
        "topic.metadata.refresh.interval.ms", conf->embedded ? "300000" : KAFKA_METADATA_REFRESH_MS,
        NULL,
    };
    char errstr[512];
    rd_kafka_conf_t *kc;
    int err = kafka_conf_build(&kc, conf, defaults,
                               RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_LOG | RD_KAFKA_EVENT_ERROR |
                                   RD_KAFKA_EVENT_STATS);
    if (err)
        return err;
    kafka_metrics_init();
    kafka_producer_t *p = calloc(1, sizeof *p);
    if (!p) {
        rd_kafka_conf_destroy(kc);
        return ERR_NOMEM;
    }
    p->magic = KAFKA_PRODUCER_MAGIC;
    p->loop = loop;
    p->pending.prev = p->pending.next = &p->pending;
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof errstr);
    if (!p->rk) {
        log_error("kafka_init_failed", "type=producer err=%s", log_q(errstr, strlen(errstr)));
        rd_kafka_conf_destroy(kc);
        free(p);
        return ERR_BAD_REQUEST;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(p->rk);
    rd_kafka_set_log_queue(p->rk, q);
    p->pump.drain = kafka_producer_drain;
    p->pump.on_closed = kafka_producer_on_closed;
    err = kafka_pump_init(&p->pump, loop, q);
    if (err) {
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(p->rk);
        free(p);
        return err;
    }
    char linger_now[16] = "?", inflight_now[16] = "?";
    kafka_producer_setting(p, "linger.ms", linger_now, sizeof linger_now);
    kafka_producer_setting(p, "max.in.flight.requests.per.connection", inflight_now, sizeof inflight_now);
    log_info("kafka_producer_ready", "client=%s brokers=%s linger_ms=%s max_in_flight=%s",
             rd_kafka_name(p->rk), conf->brokers ? conf->brokers : "-", linger_now, inflight_now);
    *out = p;
    return 0;
}

void kafka_producer_warm(kafka_producer_t *p, const char *topic)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    /* rd_kafka_topic_new() (unlike producev's internal lookup) queries the
     * leader at once; the topic then stays known to rk after our handle goes. */
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, topic, NULL);
    if (!rkt) {
        log_warn("kafka_warm_failed", "client=%s topic=%s err=%s", rd_kafka_name(p->rk), topic,
                 rd_kafka_err2name(rd_kafka_last_error()));
        return;
    }
    rd_kafka_topic_destroy(rkt);
}

int kafka_produce(kafka_producer_t *p, const char *topic, int32_t partition, const void *key,
                  size_t key_len, const void *val, size_t val_len, const struct kafka_hdrs *h,
                  kafka_delivery_cb cb, void *opaque)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    if (p->closing || p->fatal)
        return ERR_UNAVAILABLE;
    struct kafka_dr *d = malloc(sizeof *d);
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(h ? 3 : 0);
    if (!d) {
        rd_kafka_headers_destroy(hdrs);
        return ERR_UNAVAILABLE;
    }
    if (h) {
        char v[16];
        int vn = snprintf(v, sizeof v, "%d", h->version);
        rd_kafka_header_add(hdrs, "v", 1, v, vn);
        rd_kafka_header_add(hdrs, "t", 1, &h->type, 1);
        if (h->user)
            rd_kafka_header_add(hdrs, "u", 1, h->user, (ssize_t)h->user_len);
    }
    *d = (struct kafka_dr){ .magic = KAFKA_DR_MAGIC, .cb = cb, .opaque = opaque,
                            .t0_ns = uv_hrtime() };
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_PARTITION(partition < 0 ? RD_KAFKA_PARTITION_UA : partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)val, val_len), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(d),
        RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(hdrs);
        free(d);
        if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
            return ERR_TOO_LARGE;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            log_warn("kafka_produce_failed", "client=%s topic=%s partition=%" PRId32 " err=%s",
                     rd_kafka_name(p->rk), topic, partition, rd_kafka_err2name(err));
        return ERR_UNAVAILABLE;
    }
    d->prev = p->pending.prev;
    d->next = &p->pending;
    p->pending.prev->next = d;
    p->pending.prev = d;
    p->inflight++;
    return 0;
}

int kafka_producer_test_fatal(kafka_producer_t *p)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    rd_kafka_resp_err_t e = rd_kafka_test_fatal_error(p->rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                                      "chatd fault injection");
    return e ? ERR_UNAVAILABLE : 0;
}

int kafka_producer_fatal(const kafka_producer_t *p)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    return p->fatal;
}

int kafka_producer_healthy(const kafka_producer_t *p)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    return p->healthy && !p->fatal;
}

size_t kafka_producer_inflight(const kafka_producer_t *p)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    return p->inflight;
}

int kafka_producer_setting(const kafka_producer_t *p, const char *name, char *buf, size_t len)
{
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    size_t n = len;
    return rd_kafka_conf_get(rd_kafka_conf(p->rk), name, buf, &n) == RD_KAFKA_CONF_OK ? 0 : ERR_NOT_FOUND;
}

/* Serves the queue on this thread until every report arrived or deadline.
 * (rd_kafka_flush cannot be used: in event mode it waits for the messages
 * held by our own undestroyed delivery events.) */
static void kafka_producer_serve_until(kafka_producer_t *p, uint64_t deadline_ns)
{
    while (p->inflight > 0) {
        uint64_t now = uv_hrtime();
        if (now >= deadline_ns)
            break;
        uint64_t left_ms = (deadline_ns - now) / 1000000;
        rd_kafka_event_t *ev = rd_kafka_queue_poll(p->pump.q, left_ms > 100 ? 100 : (int)left_ms);
        if (ev) {
            kafka_producer_on_event(p, ev);
            rd_kafka_event_destroy(ev);
        }
    }
}

void kafka_producer_close(kafka_producer_t *p, int timeout_ms)
{
    if (!p)
        return;
    CHATD_ASSERT(p->magic == KAFKA_PRODUCER_MAGIC);
    CHATD_ASSERT(!p->dispatching && !p->closing);
    p->closing = 1;
    kafka_pump_pause(&p->pump);
    size_t start = p->inflight;
    rd_kafka_flush(p->rk, 0); /* wakes the brokers: linger.ms no longer applies */
    kafka_producer_serve_until(p, uv_hrtime() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000);
    size_t left = p->inflight;
    if (left > 0) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        kafka_producer_serve_until(p, uv_hrtime() + (uint64_t)KAFKA_PURGE_WAIT_MS * 1000000);
    }
    /* Drain what is left (logs, stats) so no event outlives the handle. */
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(p->pump.q, 0)) != NULL) {
        kafka_producer_on_event(p, ev);
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_io_event_enable(p->pump.q, -1, NULL, 0);
    rd_kafka_queue_destroy(p->pump.q);
    rd_kafka_destroy(p->rk);
    p->rk = NULL;
    /* Exactly one callback per accepted record, even those librdkafka lost
     * (whose request may have been sent). */
    while (p->pending.next != &p->pending)
        kafka_producer_finish(p, p->pending.next, ERR_IN_DOUBT);
    log_info("kafka_producer_closed", "pending_at_close=%zu undelivered=%zu", start, left);
    kafka_pump_close(&p->pump);
}

/* ===================================================================== */
/* ---- consumers ---- */

struct kafka_consumer {
    unsigned magic;
    struct kafka_pump pump;
    uv_loop_t *loop;
    rd_kafka_t *rk;
    char *topic;
    int group;                   /* 1: group member (commits), 0: fixed partition */
    int manual;                  /* group.id for offsets, no subscribe: kafka_consumer_assign */
    struct kafka_parts releasing; /* manual: to unassign once not held */
    struct kafka_parts sought;   /* group: seeks asked for since the last rebalance event */
    int lost;                    /* manual: everything released as lost, not yet applied */
    rd_kafka_topic_t *rkt;       /* manual: keeps the topic's metadata known */
    int n_partitions;            /* manual: the topic's partitions, from stats; 0 unknown */
    int32_t partition;           /* assigned consumer's partition */
    size_t max_batch;
    kafka_batch_cb cb;
    void *user;
    rd_kafka_event_t **batch_ev; /* events own the messages recs point into */
    struct kafka_rec *recs;
    size_t n_batch;
    struct kafka_parts own;
    int held, closing, dispatching, healthy, fatal;
    uint64_t got_ns;             /* held: when records were first seen waiting (uv_hrtime), 0 none */
    uint64_t batch_got_ns;       /* the batch being delivered: kafka_consumer_batch_got_ns */
    int assigned_once;           /* a first assignment completed (group) */
    int join_nudged;             /* past the first assign event (group) */
    unsigned generation;         /* bumped on every assign and revoke */
    int64_t lag;
};

static int kafka_parse_int(const char *s, size_t n)
{
    long v = 0;
    int neg = 0;
    size_t i = 0;
    if (n > 0 && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    for (; i < n && i < 10; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return (int)(neg ? -v : v);
}

static void kafka_rec_from_msg(struct kafka_rec *r, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs;
    rd_kafka_timestamp_type_t tstype;
    *r = (struct kafka_rec){
        .partition = m->partition,
        .offset = m->offset,
        .ts_ms = rd_kafka_message_timestamp(m, &tstype),
        .key = m->key,
        .key_len = m->key_len,
        .val = m->payload,
        .val_len = m->len,
    };
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    const void *v;
    size_t n;
    if (rd_kafka_header_get_last(hdrs, "v", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v)
        r->version = kafka_parse_int(v, n);
    if (rd_kafka_header_get_last(hdrs, "t", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v && n > 0)
        r->type = *(const char *)v;
    if (rd_kafka_header_get_last(hdrs, "u", &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v) {
        r->user = v;
        r->user_len = n;
    }
}

static void kafka_consumer_deliver(kafka_consumer_t *c)
{
    size_t n = c->n_batch;
    if (n == 0)
        return;
    metric_add(kafka_m.consumed[c->group], (double)n);
    c->batch_got_ns = c->got_ns ? c->got_ns : uv_hrtime();
    c->got_ns = 0;
    c->cb(c, c->recs, n, c->user);
    for (size_t i = 0; i < n; i++)
        rd_kafka_event_destroy(c->batch_ev[i]);
    c->n_batch = 0;
}

/* Keeps ev in the batch, or destroys it if it carries an error, not a record. */
static void kafka_consumer_on_fetch(kafka_consumer_t *c, rd_kafka_event_t *ev)
{
    const rd_kafka_message_t *m = rd_kafka_event_message_next(ev);
    if (!m || m->err) {
        if (m && m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            log_debug("kafka_partition_eof", "client=%s partition=%" PRId32,
                      rd_kafka_name(c->rk), m->partition);
        else if (m)
            log_warn("kafka_consume_error", "client=%s partition=%" PRId32 " err=%s",
                     rd_kafka_name(c->rk), m->partition, rd_kafka_err2name(m->err));
        rd_kafka_event_destroy(ev);
        return;
    }
    kafka_rec_from_msg(&c->recs[c->n_batch], m);
    c->batch_ev[c->n_batch++] = ev;
}

static void kafka_parts_str(const rd_kafka_topic_partition_list_t *l, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < l->cnt && o + 16 < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId32, i ? "," : "", l->elems[i].partition);
}

/* A member's first cooperative round gives it nothing when the others
 * still own every partition: they revoke what it is to get, rejoin at once,
 * and the second round assigns it. librdkafka 2.0.2 sends this member's
 * JoinGroup for that round only when a heartbeat says the group rebalances,
 * and then at most one JoinGroup a second (rdkafka_cgrp.c, rkcg_join_intvl),
 * so the moved partitions waited about 1 s with nobody sequencing them
 * (docs/RELIABILITY.md, fault 13). A subscribe made while the rebalance
 * event is unanswered is postponed, and applying it once the assign is
 * answered skips that backoff: the member rejoins at once. Only on a
 * member's first assign event: the old owner's assign after its revoke is
 * empty too but rejoins at once by itself, and a member left empty for good
 * (more members than partitions) must not rejoin on every round. */
static void kafka_consumer_nudge_join(kafka_consumer_t *c)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        log_warn("kafka_rejoin_failed", "client=%s topic=%s err=%s", rd_kafka_name(c->rk),
                 c->topic, rd_kafka_err2name(err));
    else
        log_info("kafka_rejoin", "client=%s topic=%s reason=first_assignment_empty",
                 rd_kafka_name(c->rk), c->topic);
}

/* librdkafka pauses a member's whole assignment while a cooperative
 * rebalance event waits for the application and resumes the partitions it
 * keeps when the event is answered. The resume is applied on librdkafka's
 * main thread and does not wake the thread of the partitions' broker: if that
 * thread was idle (every partition it fetches paused, no Fetch in flight) it
 * fetches them again only at its next wake-up, up to 1 s later (a fixed
 * timeout in librdkafka 2.0.2, rdkafka_broker.c rd_kafka_max_block_ms). The
 * kept rooms then stalled ~1.0 s on a join, in 4 of 15 joins on Apache Kafka
 * (docs/RELIABILITY.md, fault 13). A seek wakes that thread; seeking each
 * kept partition to the application's position (the next record it has not
 * seen) loses and repeats nothing. Synchronous (a few ms): a record fetched
 * between the resume and the seek is dropped by the seek's version barrier
 * and fetched again, never handed over twice. A partition sought by the role
 * since the last event (kafka_consumer_seek) or with no position yet is left
 * alone. */
#define KAFKA_WAKE_SEEK_MS 1000

static void kafka_consumer_wake_kept(kafka_consumer_t *c,
                                     const rd_kafka_topic_partition_list_t *moved)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)c->own.n + 1);
    for (size_t i = 0; i < c->own.n; i++) {
        int in_event = 0;
        for (int k = 0; k < moved->cnt && !in_event; k++)
            in_event = moved->elems[k].partition == c->own.v[i] &&
                       strcmp(moved->elems[k].topic, c->topic) == 0;
        if (!in_event && !kafka_parts_has(&c->sought, c->own.v[i]))
            rd_kafka_topic_partition_list_add(l, c->topic, c->own.v[i]);
    }
    c->sought.n = 0;
    if (l->cnt > 0 && rd_kafka_position(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(l->cnt);
        for (int i = 0; i < l->cnt; i++)
            if (l->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && l->elems[i].offset >= 0)
                rd_kafka_topic_partition_list_add(seek, c->topic, l->elems[i].partition)->offset =
                    l->elems[i].offset;
        rd_kafka_error_t *error =
            seek->cnt ? rd_kafka_seek_partitions(c->rk, seek, KAFKA_WAKE_SEEK_MS) : NULL;
        if (error) {
            log_warn("kafka_wake_seek_failed", "client=%s err=%s", rd_kafka_name(c->rk),
                     rd_kafka_error_name(error));
            rd_kafka_error_destroy(error);
        }
        rd_kafka_topic_partition_list_destroy(seek);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void kafka_consumer_on_rebalance(kafka_consumer_t *c, rd_kafka_event_t *ev)
{
    rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_event_topic_partition_list(ev);
    int coop = strcmp(rd_kafka_rebalance_protocol(c->rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    char list[512];
    kafka_parts_str(parts, list, sizeof list);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        log_info("kafka_assigned", "client=%s topic=%s partitions=%s", rd_kafka_name(c->rk),
                 c->topic, list);
        if (coop && parts->cnt == 0 && !c->join_nudged)
            kafka_consumer_nudge_join(c);
        c->join_nudged = 1; /* only a member's first assignment */
        if (coop)
            error = rd_kafka_incremental_assign(c->rk, parts);
        else
            rd_kafka_assign(c->rk, parts);
        c->assigned_once = 1;
        c->generation++;
        for (int i = 0; i < parts->cnt; i++)
            if (strcmp(parts->elems[i].topic, c->topic) == 0)
                kafka_parts_add(&c->own, parts->elems[i].partition);
        for (size_t i = 0; i < c->own.n; i++)
            for (int k = 0; k < parts->cnt; k++)
                if (c->own.v[i] == parts->elems[k].partition)
                    c->own.since[i] = c->generation;
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        log_info("kafka_revoked", "client=%s topic=%s partitions=%s lost=%d",
                 rd_kafka_name(c->rk), c->topic, list, rd_kafka_assignment_lost(c->rk));
        if (coop)
            error = rd_kafka_incremental_unassign(c->rk, parts);
        else
            rd_kafka_assign(c->rk, NULL);
        for (int i = 0; i < parts->cnt; i++)
            if (strcmp(parts->elems[i].topic, c->topic) == 0)
                kafka_parts_del(&c->own, parts->elems[i].partition);
        if (!coop)
            c->own.n = 0;
        c->generation++;
    } else {
        log_error("kafka_rebalance_error", "client=%s err=%s", rd_kafka_name(c->rk),
                  rd_kafka_err2name(err));
        rd_kafka_assign(c->rk, NULL);
        c->own.n = 0;
    }
    if (error) {
        const char *s = rd_kafka_error_string(error);
        log_error("kafka_assign_failed", "client=%s err=%s", rd_kafka_name(c->rk),
                  log_q(s, strlen(s)));
        rd_kafka_error_destroy(error);
    } else if (coop && (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ||
                        err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)) {
        kafka_consumer_wake_kept(c, parts);
    }
}

static void kafka_consumer_on_event(kafka_consumer_t *c, rd_kafka_event_t *ev)
{
    switch (rd_kafka_event_type(ev)) {
    case RD_KAFKA_EVENT_REBALANCE:
        kafka_consumer_on_rebalance(c, ev);
        break;
    case RD_KAFKA_EVENT_OFFSET_COMMIT:
        if (rd_kafka_event_error(ev))
            log_warn("kafka_commit_failed", "client=%s err=%s", rd_kafka_name(c->rk),
                     rd_kafka_err2name(rd_kafka_event_error(ev)));
        break;
    case RD_KAFKA_EVENT_LOG:
        kafka_on_log_event(c->rk, ev);
        break;
    case RD_KAFKA_EVENT_ERROR:
        if (kafka_on_error_event(c->rk, ev, &c->healthy))
            c->fatal = 1;
        break;
    case RD_KAFKA_EVENT_STATS: {
        cJSON *root = cJSON_Parse(rd_kafka_event_stats(ev));
        if (root) {
            c->healthy = kafka_stats_healthy(root) &&
                         (c->group || kafka_stats_fetching(root, c->topic, &c->own));
            c->lag = kafka_stats_lag(root, c->topic, &c->own);
            if (c->manual)
                c->n_partitions = kafka_stats_partitions(root, c->topic);
            if (c->group && !c->manual && kafka_stats_steady(root))
                c->assigned_once = 1; /* an empty assignment has no event */
            if (c->lag >= 0)
                metric_set(kafka_m.lag[c->group], (double)c->lag);
            cJSON_Delete(root);
        }
        break;
    }
    default:
        break;
    }
}

/* Manual: a release asked for while a batch was held is applied between
 * batches, where a group consumer serves its revokes: the role sees the
 * partition go only once the batch that may hold its records is done. */
static void kafka_consumer_release_pending(kafka_consumer_t *c)
{
    if (c->held || c->releasing.n == 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)c->releasing.n);
    for (size_t i = 0; i < c->releasing.n; i++) {
        rd_kafka_topic_partition_list_add(l, c->topic, c->releasing.v[i]);
        kafka_parts_del(&c->own, c->releasing.v[i]);
    }
    c->releasing.n = 0;
    int lost = c->lost;
    c->lost = 0;
    char list[512];
    kafka_parts_str(l, list, sizeof list);
    rd_kafka_error_t *error = rd_kafka_incremental_unassign(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    c->generation++;
    log_info("kafka_revoked", "client=%s topic=%s partitions=%s lost=%d manual=1",
             rd_kafka_name(c->rk), c->topic, list, lost);
    if (error) {
        const char *s = rd_kafka_error_string(error);
        log_error("kafka_unassign_failed", "client=%s err=%s", rd_kafka_name(c->rk),
                  log_q(s, strlen(s)));
        rd_kafka_error_destroy(error);
    }
}

/* Records are batched up to max_batch; any other event first flushes the
 * batch so the role sees records and rebalances in queue order. */
static void kafka_consumer_drain(struct kafka_pump *pp)
{
    kafka_consumer_t *c = kafka_container_of(pp, kafka_consumer_t, pump);
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (c->held) { /* the first wake-up of a hold: see kafka_consumer_hold */
        if (!c->got_ns)
            c->got_ns = uv_hrtime();
        uv_poll_stop(&pp->poll);
        return;
    }
    int i;
    c->dispatching = 1;
    kafka_consumer_release_pending(c);
    for (i = 0; i < KAFKA_DRAIN_MAX && !c->held; i++) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(pp->q, 0);
        if (!ev)
            break;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_FETCH) {
            kafka_consumer_on_fetch(c, ev);
            if (c->n_batch == c->max_batch)
                kafka_consumer_deliver(c);
            continue;
        }
        kafka_consumer_deliver(c);
        kafka_consumer_on_event(c, ev);
        rd_kafka_event_destroy(ev);
    }
    if (!c->held) {
        kafka_consumer_deliver(c);
        /* The queue is empty: a stamp a hold left (woken by a stats or log
         * event, no record) would date the next record, however much later. */
        if (i < KAFKA_DRAIN_MAX)
            c->got_ns = 0;
    }
    c->dispatching = 0;
    kafka_consumer_release_pending(c);
    if (i == KAFKA_DRAIN_MAX && !c->held)
        kafka_pump_again(pp);
}

static void kafka_consumer_free(kafka_consumer_t *c)
{
    free(c->topic);
    free(c->batch_ev);
    free(c->recs);
    free(c->own.v);
    free(c->own.since);
    free(c->releasing.v);
    free(c->releasing.since);
    free(c->sought.v);
    free(c->sought.since);
    c->magic = 0;
    free(c);
}

static void kafka_consumer_on_closed(struct kafka_pump *pp)
{
    kafka_consumer_free(kafka_container_of(pp, kafka_consumer_t, pump));
}

/* Group: subscribe (partitions come with rebalance events). Assigned: one
 * partition from its end, without a group. */
static rd_kafka_resp_err_t kafka_consumer_start(kafka_consumer_t *c, const char *topic,
                                               int32_t partition)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;
    if (c->manual) {
        /* Partitions come with kafka_consumer_assign; a topic handle makes
         * librdkafka fetch the topic's metadata now, so its partition count
         * reaches the stats and its leaders are known before an assign. */
        c->rkt = rd_kafka_topic_new(c->rk, topic, NULL);
        err = c->rkt ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_last_error();
    } else if (c->group) {
        rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
        err = rd_kafka_subscribe(c->rk, l);
    } else {
        rd_kafka_topic_partition_list_add(l, topic, partition)->offset = RD_KAFKA_OFFSET_END;
        err = rd_kafka_assign(c->rk, l);
        if (!err)
            kafka_parts_add(&c->own, partition);
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        log_error("kafka_subscribe_failed", "client=%s topic=%s err=%s", rd_kafka_name(c->rk),
                  topic, rd_kafka_err2name(err));
    return err;
}

#define KAFKA_EMBEDDED_FETCH_WAIT_MS "2"

/* Failover time (issue 18, docs/ARCHITECTURE.md "Failover"): a dead
 * classifier's partitions move once the coordinator expires its session, so
 * the session is short; a C client heartbeats from librdkafka's own thread
 * (no GC, the loop's stalls do not delay it). A real broker refuses a
 * session below its group.min.session.timeout.ms (6 s by default): k8s/
 * and scripts/kafka.py lower it to 1 s. librdkafka's mock cluster checks
 * sessions once a second, holds a first JoinGroup 3 s and expires a member
 * whose JoinGroup is held longer than its session (the group never forms),
 * so the embedded broker keeps a session above 3 s. A heartbeat is how a
 * member learns that the group rebalances (a leave, a join): 100 ms. */
#define KAFKA_SESSION_TIMEOUT_MS "2000"
#define KAFKA_EMBEDDED_SESSION_TIMEOUT_MS "3500"
#define KAFKA_HEARTBEAT_MS "100"
/* Kafka 4's coordinator answers a member's heartbeat only once the offset
 * commits pending on the group's __consumer_offsets partition have
 * replicated (up to offsets.commit.timeout.ms, 5 s): committing every
 * 200 ms, both classifiers lost their sessions whenever that partition
 * could not replicate for a session (docs/RELIABILITY.md P2b, P2d). The
 * classifier keeps its offsets in PostgreSQL beside the fence
 * (migrations/009) and a new owner starts there, so Kafka's offsets are
 * only for operators' tools and a fallback: once a minute, on a revoke and
 * at close. */
#define KAFKA_COMMIT_INTERVAL_MS "60000"

static int kafka_consumer_new(kafka_consumer_t **out, uv_loop_t *loop,
                              const struct kafka_conf *conf, const char *group_id,
                              const char *topic, int32_t partition, int manual,
                              size_t max_batch, kafka_batch_cb cb, void *user)
{
    char gw_group[64];
    const char *group_defaults[] = {
        "group.id", group_id,
        "partition.assignment.strategy", "cooperative-sticky",
        /* The role stores an offset once its records are done
         * (kafka_consumer_commit) and librdkafka commits the stored offsets
         * every minute, on a revoke and at close. Its timer skips a commit
         * while the group rebalances; an application commit sent then gets
         * ILLEGAL_GENERATION, and librdkafka 2.0.2 answers that by dropping
         * the member's whole assignment (the survivor of a failover lost
         * every partition it had: issue 18). */
        "enable.auto.commit", "true",
        "enable.auto.offset.store", "false",
        "auto.commit.interval.ms", KAFKA_COMMIT_INTERVAL_MS,
        "auto.offset.reset", "earliest",
        "session.timeout.ms",
        conf->embedded ? KAFKA_EMBEDDED_SESSION_TIMEOUT_MS : KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms", KAFKA_HEARTBEAT_MS,
        /* A real broker answers a waiting fetch as soon as data arrives; the
         * mock cluster holds it for the whole wait, so keep it short there.
         * 2 ms (bench/probe.py, rooms of 10 at 3,750 msgs/s): p99 14 ms
         * against 26 ms with 5, the same CPU per message, +0.03 core for
         * an idle 5-process cluster; 1 ms cost more CPU and a worse tail. */
        "fetch.wait.max.ms", conf->embedded ? KAFKA_EMBEDDED_FETCH_WAIT_MS : "500",
        "topic.metadata.refresh.interval.ms", conf->embedded ? "300000" : KAFKA_METADATA_REFRESH_MS,
        NULL,
    };
    const char *assigned_defaults[] = {
        "group.id", gw_group,
        "enable.auto.commit", "false",
        "enable.auto.offset.store", "false",
        "fetch.wait.max.ms", conf->embedded ? KAFKA_EMBEDDED_FETCH_WAIT_MS : "500",
        "topic.metadata.refresh.interval.ms", conf->embedded ? "300000" : KAFKA_METADATA_REFRESH_MS,
        NULL,
    };
    char errstr[512];
    rd_kafka_conf_t *kc;
    int err;
    if (!topic || !cb || max_batch == 0 || (!group_id && partition < 0))
        return ERR_BAD_REQUEST;
    snprintf(gw_group, sizeof gw_group, "chatd-gw-%" PRId32, partition);
    err = kafka_conf_build(&kc, conf, group_id ? group_defaults : assigned_defaults,
                           RD_KAFKA_EVENT_FETCH | RD_KAFKA_EVENT_REBALANCE |
                               RD_KAFKA_EVENT_OFFSET_COMMIT | RD_KAFKA_EVENT_LOG |
                               RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_STATS);
    if (err)
        return err;
    kafka_metrics_init();
    kafka_consumer_t *c = calloc(1, sizeof *c);
    if (c) {
        c->topic = strdup(topic);
        c->batch_ev = calloc(max_batch, sizeof *c->batch_ev);
        c->recs = calloc(max_batch, sizeof *c->recs);
    }
    if (!c || !c->topic || !c->batch_ev || !c->recs) {
        rd_kafka_conf_destroy(kc);
        if (c)
            kafka_consumer_free(c);
        return ERR_NOMEM;
    }
    c->magic = KAFKA_CONSUMER_MAGIC;
    c->loop = loop;
    c->group = group_id != NULL;
    c->manual = manual;
    c->partition = group_id ? -1 : partition;
    c->max_batch = max_batch;
    c->cb = cb;
    c->user = user;
    c->lag = -1;
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, sizeof errstr);
    if (!c->rk) {
        log_error("kafka_init_failed", "type=consumer err=%s", log_q(errstr, strlen(errstr)));
        rd_kafka_conf_destroy(kc);
        kafka_consumer_free(c);
        return ERR_BAD_REQUEST;
    }
    rd_kafka_poll_set_consumer(c->rk);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(c->rk);
    CHATD_ASSERT(q != NULL); /* group.id is always set */
    rd_kafka_set_log_queue(c->rk, q);

    rd_kafka_resp_err_t rerr = kafka_consumer_start(c, topic, partition);
    c->pump.drain = kafka_consumer_drain;
    c->pump.on_closed = kafka_consumer_on_closed;
    err = rerr ? ERR_UNAVAILABLE : kafka_pump_init(&c->pump, loop, q);
    if (err) {
        rd_kafka_queue_destroy(q);
        if (c->rkt)
            rd_kafka_topic_destroy(c->rkt);
        rd_kafka_destroy(c->rk);
        kafka_consumer_free(c);
        return err;
    }
    char wait_now[16] = "?";
    size_t wait_len = sizeof wait_now;
    rd_kafka_conf_get(rd_kafka_conf(c->rk), "fetch.wait.max.ms", wait_now, &wait_len);
    char session[16] = "?", heartbeat[16] = "?";
    size_t session_len = sizeof session, heartbeat_len = sizeof heartbeat;
    rd_kafka_conf_get(rd_kafka_conf(c->rk), "session.timeout.ms", session, &session_len);
    rd_kafka_conf_get(rd_kafka_conf(c->rk), "heartbeat.interval.ms", heartbeat, &heartbeat_len);
    if (c->manual)
        log_info("kafka_consumer_ready", "client=%s group=%s topic=%s fetch_wait_ms=%s manual=1",
                 rd_kafka_name(c->rk), group_id, topic, wait_now);
    else if (c->group)
        log_info("kafka_consumer_ready",
                 "client=%s group=%s topic=%s fetch_wait_ms=%s session_ms=%s heartbeat_ms=%s",
                 rd_kafka_name(c->rk), group_id, topic, wait_now, session, heartbeat);
    else
        log_info("kafka_consumer_ready", "client=%s topic=%s partition=%" PRId32 " fetch_wait_ms=%s",
                 rd_kafka_name(c->rk), topic, partition, wait_now);
    *out = c;
    return 0;
}

int kafka_consumer_init_group(kafka_consumer_t **out, uv_loop_t *loop,
                              const struct kafka_conf *conf, const char *group_id,
                              const char *topic, size_t max_batch, kafka_batch_cb cb,
                              void *user)
{
    if (!group_id)
        return ERR_BAD_REQUEST;
    return kafka_consumer_new(out, loop, conf, group_id, topic, -1, 0, max_batch, cb, user);
}

int kafka_consumer_init_manual(kafka_consumer_t **out, uv_loop_t *loop,
                               const struct kafka_conf *conf, const char *group_id,
                               const char *topic, size_t max_batch, kafka_batch_cb cb,
                               void *user)
{
    if (!group_id)
        return ERR_BAD_REQUEST;
    return kafka_consumer_new(out, loop, conf, group_id, topic, -1, 1, max_batch, cb, user);
}

int kafka_consumer_assign(kafka_consumer_t *c, int32_t partition, int64_t next)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (!c->manual || c->closing)
        return ERR_BAD_REQUEST;
    c->assigned_once = 1;
    if (partition < 0)
        return 0;
    if (c->lost) /* the held batch must be dropped first */
        return ERR_UNAVAILABLE;
    if (kafka_parts_has(&c->releasing, partition)) { /* wanted back before it went */
        kafka_parts_del(&c->releasing, partition);
        return 0;
    }
    if (kafka_parts_has(&c->own, partition))
        return 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, partition)->offset =
        next >= 0 ? next : RD_KAFKA_OFFSET_STORED;
    rd_kafka_error_t *error = rd_kafka_incremental_assign(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (error) {
        const char *s = rd_kafka_error_string(error);
        log_error("kafka_assign_failed", "client=%s partition=%" PRId32 " err=%s",
                  rd_kafka_name(c->rk), partition, log_q(s, strlen(s)));
        rd_kafka_error_destroy(error);
        return ERR_UNAVAILABLE;
    }
    c->generation++;
    kafka_parts_add(&c->own, partition);
    for (size_t i = 0; i < c->own.n; i++)
        if (c->own.v[i] == partition)
            c->own.since[i] = c->generation;
    log_info("kafka_assigned", "client=%s topic=%s partitions=%" PRId32 " offset=%" PRId64,
             rd_kafka_name(c->rk), c->topic, partition, next);
    return 0;
}

int kafka_consumer_partitions(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return c->n_partitions;
}

void kafka_consumer_release_lost(kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (!c->manual || c->closing || c->own.n == 0)
        return;
    for (size_t i = 0; i < c->own.n; i++)
        kafka_parts_add(&c->releasing, c->own.v[i]);
    c->lost = 1;
    if (!c->dispatching)
        kafka_consumer_release_pending(c);
}

int kafka_consumer_release(kafka_consumer_t *c, int32_t partition)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (!c->manual || c->closing)
        return ERR_BAD_REQUEST;
    if (!kafka_parts_has(&c->own, partition))
        return ERR_NOT_FOUND;
    kafka_parts_add(&c->releasing, partition);
    if (!c->dispatching)
        kafka_consumer_release_pending(c);
    return 0;
}

int kafka_consumer_init_assigned(kafka_consumer_t **out, uv_loop_t *loop,
                                 const struct kafka_conf *conf, const char *topic,
                                 int32_t partition, size_t max_batch, kafka_batch_cb cb,
                                 void *user)
{
    if (partition < 0)
        return ERR_BAD_REQUEST;
    return kafka_consumer_new(out, loop, conf, NULL, topic, partition, 0, max_batch, cb, user);
}

void kafka_consumer_hold(kafka_consumer_t *c, int hold)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    hold = hold != 0;
    if (c->closing || c->held == hold)
        return;
    c->held = hold;
    if (hold) {
        /* The pipe stays watched until its first wake-up, which stamps when
         * records began to wait for the role (kafka_consumer_batch_got_ns),
         * then the watch stops: one wake-up per hold at most. Records left
         * in the queue by a batch cut at max_batch wait from now on. */
        uv_timer_stop(&c->pump.again);
        c->got_ns = rd_kafka_queue_length(c->pump.q) > 0 ? uv_hrtime() : 0;
    } else {
        kafka_pump_resume(&c->pump);
    }
}

uint64_t kafka_consumer_batch_got_ns(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return c->batch_got_ns;
}

int kafka_consumer_commit(kafka_consumer_t *c, int32_t partition, int64_t next_offset)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (!c->group)
        return ERR_BAD_REQUEST;
    if (c->closing)
        return ERR_UNAVAILABLE;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, partition)->offset = next_offset;
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(c->rk, l);
    if (!err)
        err = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    if (err) {
        log_warn("kafka_commit_failed", "client=%s partition=%" PRId32 " offset=%" PRId64 " err=%s",
                 rd_kafka_name(c->rk), partition, next_offset, rd_kafka_err2name(err));
        return ERR_UNAVAILABLE;
    }
    return 0;
}

int kafka_consumer_seek(kafka_consumer_t *c, int32_t partition, int64_t next)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (!c->group || c->closing || !kafka_parts_has(&c->own, partition))
        return ERR_NOT_FOUND;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, partition)->offset = next;
    /* timeout 0: asynchronous, the loop is not blocked; the partition's
     * err is then _IN_PROGRESS (the seek is under way, not failed), and a
     * failure comes back as a consume error of the partition (logged there). */
    rd_kafka_error_t *error = rd_kafka_seek_partitions(c->rk, l, 0);
    rd_kafka_resp_err_t err = error ? rd_kafka_error_code(error) : l->elems[0].err;
    if (err == RD_KAFKA_RESP_ERR__IN_PROGRESS)
        err = RD_KAFKA_RESP_ERR_NO_ERROR;
    kafka_parts_add(&c->sought, partition);
    rd_kafka_topic_partition_list_destroy(l);
    if (error)
        rd_kafka_error_destroy(error);
    if (err) {
        log_warn("kafka_seek_failed", "client=%s partition=%" PRId32 " offset=%" PRId64 " err=%s",
                 rd_kafka_name(c->rk), partition, next, rd_kafka_err2name(err));
        return ERR_UNAVAILABLE;
    }
    return 0;
}

unsigned kafka_consumer_generation(const kafka_consumer_t *c)
{
    return c->generation;
}

int kafka_consumer_owns(const kafka_consumer_t *c, int32_t partition)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return kafka_parts_has(&c->own, partition);
}

int kafka_consumer_assignment_lost(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    if (c->manual)
        return c->lost;
    return c->group && rd_kafka_assignment_lost(c->rk);
}

int kafka_consumer_setting(const kafka_consumer_t *c, const char *name, char *buf, size_t len)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    size_t n = len;
    return rd_kafka_conf_get(rd_kafka_conf(c->rk), name, buf, &n) == RD_KAFKA_CONF_OK ? 0 : ERR_NOT_FOUND;
}

unsigned kafka_consumer_owned_since(const kafka_consumer_t *c, int32_t partition)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    for (size_t i = 0; i < c->own.n; i++)
        if (c->own.v[i] == partition)
            return c->own.since[i];
    return 0;
}

int kafka_consumer_healthy(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return c->healthy && !c->fatal;
}

int kafka_consumer_joined(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return !c->group || c->assigned_once;
}

int64_t kafka_consumer_lag(const kafka_consumer_t *c)
{
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    return c->lag;
}

/* Shutdown only, blocking (bounded): see KAFKA_FIRST_ASSIGN_WAIT_MS. */
static void kafka_consumer_await_assignment(kafka_consumer_t *c)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)KAFKA_FIRST_ASSIGN_WAIT_MS * 1000000;
    log_info("kafka_close_awaits_assignment", "client=%s", rd_kafka_name(c->rk));
    while (!c->assigned_once && uv_hrtime() < deadline) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(c->pump.q, 100);
        if (!ev)
            continue;
        if (rd_kafka_event_type(ev) != RD_KAFKA_EVENT_FETCH) /* records: re-read by the next owner */
            kafka_consumer_on_event(c, ev);
        rd_kafka_event_destroy(ev);
    }
    if (!c->assigned_once)
        log_warn("kafka_close_unassigned", "client=%s waited_ms=%d", rd_kafka_name(c->rk),
                 KAFKA_FIRST_ASSIGN_WAIT_MS);
}

void kafka_consumer_close(kafka_consumer_t *c)
{
    if (!c)
        return;
    CHATD_ASSERT(c->magic == KAFKA_CONSUMER_MAGIC);
    CHATD_ASSERT(!c->dispatching && !c->closing);
    c->closing = 1;
    kafka_pump_pause(&c->pump);
    /* Records fetched but never delivered (held) go back to librdkafka. */
    for (size_t i = 0; i < c->n_batch; i++)
        rd_kafka_event_destroy(c->batch_ev[i]);
    c->n_batch = 0;
    rd_kafka_queue_io_event_enable(c->pump.q, -1, NULL, 0);
    if (c->group && !c->manual && !c->assigned_once)
        kafka_consumer_await_assignment(c);
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(c->rk);
    if (err)
        log_warn("kafka_consumer_close_failed", "client=%s err=%s", rd_kafka_name(c->rk),
                 rd_kafka_err2name(err));
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(c->pump.q, 0)) != NULL) {
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LOG)
            kafka_on_log_event(c->rk, ev);
        rd_kafka_event_destroy(ev);
    }
    log_info("kafka_consumer_closed", "client=%s topic=%s", rd_kafka_name(c->rk), c->topic);
    if (c->rkt)
        rd_kafka_topic_destroy(c->rkt);
    rd_kafka_queue_destroy(c->pump.q);
    rd_kafka_destroy(c->rk);
    c->rk = NULL;
    kafka_pump_close(&c->pump);
}

/* ===================================================================== */
/* ---- topics (admin, start-up only, blocking) ---- */

#define KAFKA_ADMIN_MAX_TOPICS 8
#define KAFKA_ADMIN_ROUNDS 5

/* log.queue=true puts an unattached handle's log lines on its main queue. */
static void kafka_admin_drain_logs(rd_kafka_t *rk)
{
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(rk);
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(q, 0)) != NULL) {
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LOG)
            kafka_on_log_event(rk, ev);
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
}

static int kafka_admin_left_ms(uint64_t deadline_ns)
{
    uint64_t now = uv_hrtime();
    return now >= deadline_ns ? 1 : (int)((deadline_ns - now) / 1000000) + 1;
}

/* -1: no such topic, else its partition count. */
static int kafka_md_partitions(const rd_kafka_metadata_t *md, const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++)
        if (!strcmp(md->topics[i].topic, topic))
            return md->topics[i].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                       ? -1
                       : md->topics[i].partition_cnt;
    return -1;
}

/* Waits for one CreateTopics / CreatePartitions result. "Already exists" and
 * "already that many partitions" count as done: another chatd starting at
 * the same time got there first (the next metadata round checks). */
static int kafka_admin_result(rd_kafka_t *rk, rd_kafka_queue_t *q, int timeout_ms)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
    kafka_admin_drain_logs(rk);
    if (!ev) {
        log_error("kafka_admin_timeout", "client=%s waited_ms=%d", rd_kafka_name(rk), timeout_ms);
        return ERR_TIMEOUT;
    }
    const rd_kafka_topic_result_t **res = NULL;
    size_t n = 0;
    int rc = 0;
    if (rd_kafka_event_error(ev)) {
        const char *s = rd_kafka_event_error_string(ev);
        log_error("kafka_admin_failed", "client=%s op=%s err=%s msg=%s", rd_kafka_name(rk),
                  rd_kafka_event_name(ev), rd_kafka_err2name(rd_kafka_event_error(ev)),
                  log_q(s, strlen(s)));
        rc = ERR_UNAVAILABLE;
    } else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_CREATETOPICS_RESULT) {
        res = rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    } else {
        res = rd_kafka_CreatePartitions_result_topics(rd_kafka_event_CreatePartitions_result(ev), &n);
    }
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
        const char *s = rd_kafka_topic_result_error_string(res[i]);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS ||
            e == RD_KAFKA_RESP_ERR_INVALID_PARTITIONS) {
            log_info("kafka_topic_done", "op=%s topic=%s result=%s", rd_kafka_event_name(ev),
                     rd_kafka_topic_result_name(res[i]), rd_kafka_err2name(e));
            continue;
        }
        log_error("kafka_topic_admin_failed", "op=%s topic=%s err=%s msg=%s", rd_kafka_event_name(ev),
                  rd_kafka_topic_result_name(res[i]), rd_kafka_err2name(e), log_q(s ? s : "", s ? strlen(s) : 0));
        rc = ERR_UNAVAILABLE;
    }
    rd_kafka_event_destroy(ev);
    return rc;
}

/* One metadata round: what is missing or too small is queued for creation
 * (create) or refused with the command that fixes it. *todo: operations sent. */
static int kafka_topics_round(rd_kafka_t *rk, rd_kafka_queue_t *q, const struct kafka_conf *conf,
                              const struct kafka_topic_need *topics, size_t n, int create,
                              int replication, uint64_t deadline, int *todo)
{
    const rd_kafka_metadata_t *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, kafka_admin_left_ms(deadline));
    kafka_admin_drain_logs(rk);
    *todo = 0;
    if (e) {
        log_error("kafka_metadata_failed", "brokers=%s err=%s", conf->brokers, rd_kafka_err2name(e));
        return ERR_UNAVAILABLE;
    }
    rd_kafka_NewTopic_t *nt[KAFKA_ADMIN_MAX_TOPICS];
    rd_kafka_NewPartitions_t *np[KAFKA_ADMIN_MAX_TOPICS];
    size_t n_nt = 0, n_np = 0;
    char errstr[256], rf[48] = "";
    int rc = 0;
    if (replication > 0)
        snprintf(rf, sizeof rf, " --replication-factor %d", replication);
    /* Every refusal is logged (rc stays set); a bad spec stops the round. */
    for (size_t i = 0; i < n && rc != ERR_BAD_REQUEST; i++) {
        const struct kafka_topic_need *t = &topics[i];
        int have = kafka_md_partitions(md, t->name);
        if (have >= t->min_partitions)
            continue;
        if (!create && have < 0) {
            log_error("kafka_topic_missing",
                      "topic=%s brokers=%s fix=\"kafka-topics.sh --bootstrap-server %s --create "
                      "--topic %s --partitions %d%s, or start one chatd with --kafka-create-topics\"",
                      t->name, conf->brokers, conf->brokers, t->name, t->partitions, rf);
            rc = ERR_UNAVAILABLE;
        } else if (!create) {
            log_error("kafka_topic_too_small",
                      "topic=%s partitions=%d needed=%d fix=\"kafka-topics.sh --bootstrap-server %s "
                      "--alter --topic %s --partitions %d, or start this chatd with --kafka-create-topics\"",
                      t->name, have, t->min_partitions, conf->brokers, t->name, t->min_partitions);
            rc = ERR_UNAVAILABLE;
        } else if (have < 0) {
            log_info("kafka_topic_create", "topic=%s partitions=%d replication=%d", t->name,
                     t->partitions, replication);
            nt[n_nt] = rd_kafka_NewTopic_new(t->name, t->partitions, replication, errstr, sizeof errstr);
            if (!nt[n_nt]) {
                log_error("kafka_topic_bad_spec", "topic=%s err=%s", t->name, log_q(errstr, strlen(errstr)));
                rc = ERR_BAD_REQUEST;
            } else {
                n_nt++;
            }
        } else {
            log_info("kafka_topic_grow", "topic=%s partitions=%d to=%d", t->name, have, t->min_partitions);
            np[n_np] = rd_kafka_NewPartitions_new(t->name, (size_t)t->min_partitions, errstr, sizeof errstr);
            if (!np[n_np]) {
                log_error("kafka_topic_bad_spec", "topic=%s err=%s", t->name, log_q(errstr, strlen(errstr)));
                rc = ERR_BAD_REQUEST;
            } else {
                n_np++;
            }
        }
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_AdminOptions_t *opt = NULL;
    if (rc == 0 && (n_nt || n_np)) {
        opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
        /* The broker answers once the change is done (or this passed). */
        rd_kafka_AdminOptions_set_operation_timeout(opt, kafka_admin_left_ms(deadline), errstr, sizeof errstr);
        rd_kafka_AdminOptions_set_request_timeout(opt, kafka_admin_left_ms(deadline), errstr, sizeof errstr);
    }
    if (rc == 0 && n_nt) {
        rd_kafka_CreateTopics(rk, nt, n_nt, opt, q);
        rc = kafka_admin_result(rk, q, kafka_admin_left_ms(deadline));
    }
    if (rc == 0 && n_np) {
        rd_kafka_CreatePartitions(rk, np, n_np, opt, q);
        rc = kafka_admin_result(rk, q, kafka_admin_left_ms(deadline));
    }
    if (opt)
        rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_NewTopic_destroy_array(nt, n_nt);
    rd_kafka_NewPartitions_destroy_array(np, n_np);
    *todo = (int)(n_nt + n_np);
    return rc;
}

int kafka_topics_ensure(const struct kafka_conf *conf, const struct kafka_topic_need *topics,
                        size_t n, int create, int replication, int timeout_ms)
{
    const char *const defaults[] = { "allow.auto.create.topics", "false", NULL };
    char errstr[512];
    rd_kafka_conf_t *kc;
    if (n > KAFKA_ADMIN_MAX_TOPICS)
        return ERR_BAD_REQUEST;
    int rc = kafka_conf_build(&kc, conf, defaults, RD_KAFKA_EVENT_LOG);
    if (rc)
        return rc;
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof errstr);
    if (!rk) {
        log_error("kafka_init_failed", "type=admin err=%s", log_q(errstr, strlen(errstr)));
        rd_kafka_conf_destroy(kc);
        return ERR_BAD_REQUEST;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000;
    int todo = 0;
    for (int round = 0; round < KAFKA_ADMIN_ROUNDS; round++) {
        rc = kafka_topics_round(rk, q, conf, topics, n, create, replication, deadline, &todo);
        if (rc || !todo)
            break;
        usleep(200 * 1000); /* the next round's metadata shows what was done */
    }
    if (rc == 0 && todo) {
        log_error("kafka_topics_unsettled", "brokers=%s rounds=%d", conf->brokers, KAFKA_ADMIN_ROUNDS);
        rc = ERR_UNAVAILABLE;
    }
    if (rc == 0)
        for (size_t i = 0; i < n; i++)
            log_info("kafka_topic_ok", "topic=%s min_partitions=%d", topics[i].name, topics[i].min_partitions);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    return rc;
}
