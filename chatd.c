/* chatd: parse the configuration, start the role(s), run the loop, drain on
 * SIGTERM. One libuv loop per process; see docs/ARCHITECTURE.md. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#ifdef __GLIBC__ /* defined by the headers above */
#include <malloc.h>
#endif

#include "conf/conf.h"
#include "kafka/broker.h"
#include "kafka/kafka.h"
#include "lib/err.h"
#include "lib/log.h"
#include "lib/loopstat.h"
#include "lib/metrics.h"
#include "lib/slab.h"
#include "net/authkeys.h"
#include "net/http.h"
#include "roles/api.h"
#include "roles/broker.h"
#include "roles/classifier.h"
#include "roles/gateway.h"
#include "store/migrate.h"
#include "store/redis.h"
#include "store/routes.h"
#include "store/sentinel.h"

/* Lifetime of a message id's seq in Redis. Only a cache: past it the
 * classifier learns the seq from PostgreSQL (roles/classifier.h, step 1). */
#define CHATD_DEDUP_TTL_S 86400
/* Gateway producer linger.ms: on the embedded broker 2 ms measured best
 * (docs/PERFORMANCE.md, table 2 variants). On Apache Kafka 5 ms (librdkafka's
 * own default) cut the CPU per message by a fifth to a quarter with every
 * member of rooms of 10 sending, but cost rooms of 1000 at 25 msgs/s 1-4 ms
 * at the median ("The gateways' linger.ms on Apache Kafka"): 2 everywhere,
 * --kafka-opt=linger.ms=N overrides (docs/DEPLOY.md). */
#define CHATD_GATEWAY_LINGER_MS 2
/* A Kafka client's fatal error ends the process with this code after a
 * drain of at most CHATD_FATAL_DRAIN_MS (kafka_on_fatal). */
#define CHATD_EXIT_KAFKA_FATAL 3
#define CHATD_FATAL_DRAIN_MS 3000

struct chatd {
    struct conf conf;
    uv_loop_t *loop;
    char brokers[512];
    struct kafka_conf kafka;
    kafka_broker_t *broker;
    http_server_t *http;
    http_server_t *admin;        /* --admin-listen, or NULL */
    api_t *api;                  /* --api-listen, or NULL */
    redis_client_t *redis;
    routes_t *routes;
    kafka_producer_t *producer;
    gateway_t *gateway;
    classifier_t *classifier;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain;
    uv_timer_t trim;
    uint64_t drain_deadline;
    int draining;
    int fatal;                   /* a Kafka client failed: exit CHATD_EXIT_KAFKA_FATAL */
    int closed;                  /* chatd_close_all ran: nothing left to drain */
    metric_t *up;
};

static int chatd_has_gateway(const struct chatd *d) { return d->conf.role == ROLE_GATEWAY || d->conf.role == ROLE_ALL; }
static int chatd_has_classifier(const struct chatd *d) { return d->conf.role == ROLE_CLASSIFIER || d->conf.role == ROLE_ALL; }

static int chatd_ready(const struct chatd *d)
{
    if (d->draining)
        return 0;
    if (d->gateway && !gateway_ready(d->gateway))
        return 0;
    if (d->classifier && !classifier_ready(d->classifier))
        return 0;
    return 1;
}

/* GET /readyz/backends, for operators and alerts: one line per backend the
 * process uses, "NAME up|down", and "ready yes|no" (= /readyz); 200 only if
 * every line is good. /readyz is what the Service routes on and leaves out
 * what every pod lacks alike (a gateway's PostgreSQL: roles/gateway.h). */
static void chatd_http_backends(struct chatd *d, http_req_t *req)
{
    char body[160];
    size_t n = 0;
    int all = 1;
    int pg = -1; /* -1: no PostgreSQL in this process */
    if (d->gateway)
        pg = gateway_pg_ready(d->gateway);
    if (d->classifier)
        pg = (pg != 0) && classifier_pg_ready(d->classifier);
    const struct {
        const char *name;
        int up; /* -1: not used by this process */
    } b[] = {
        {"redis", d->redis ? redis_client_ready(d->redis) : -1},
        {"postgres", pg},
        {"kafka", d->producer ? kafka_producer_healthy(d->producer) && !kafka_fatal_errors() : -1},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        if (b[i].up < 0)
            continue;
        all &= b[i].up;
        n += (size_t)snprintf(body + n, sizeof body - n, "%s %s\n", b[i].name, b[i].up ? "up" : "down");
    }
    int ready = chatd_ready(d);
    n += (size_t)snprintf(body + n, sizeof body - n, "ready %s\n", ready ? "yes" : "no");
    http_respond(req, all && ready ? 200 : 503, "text/plain", body, n, NULL);
}

/* The paths Kubernetes and Prometheus use. /metrics is left to the admin
 * listener when there is one: the client port may face the internet, and a
 * scrape costs a render of every series. Returns 1 if it answered. */
static int chatd_http_ops(struct chatd *d, http_req_t *req, int metrics)
{
    const char *path = http_req_path(req);
    if (!strcmp(path, "/healthz")) {
        /* A fatal Kafka client error is not healed by waiting: 503, so the
         * liveness probe restarts the pod (it would stay unready forever). */
        if (kafka_fatal_errors())
            http_respond(req, 503, "text/plain", "kafka client failed\n", 20, NULL);
        else
            http_respond(req, 200, "text/plain", "ok\n", 3, NULL);
    } else if (!strcmp(path, "/readyz")) {
        int ok = chatd_ready(d);
        http_respond(req, ok ? 200 : 503, "text/plain", ok ? "ready\n" : "not ready\n", ok ? 6 : 10, NULL);
    } else if (metrics && !strcmp(path, "/readyz/backends")) {
        chatd_http_backends(d, req);
    } else if (metrics && !strcmp(path, "/metrics")) {
        size_t len;
        char *text = metrics_render(&len);
        if (text)
            http_respond(req, 200, "text/plain; version=0.0.4", text, len, NULL);
        else
            http_respond_error(req, 500, "internal", "out of memory");
        free(text);
    } else {
        return 0;
    }
    return 1;
}

static void chatd_on_http(http_req_t *req, void *user)
{
    struct chatd *d = user;
    if (chatd_http_ops(d, req, !d->admin))
        return;
    if (d->conf.fault_injection && d->producer && !strcmp(http_req_path(req), "/faults/kafka-fatal")) {
        int rc = kafka_producer_test_fatal(d->producer);
        if (rc)
            http_respond_error(req, 500, err_code(rc), "fatal error not raised");
        else
            http_respond(req, 200, "text/plain", "ok\n", 3, NULL);
        return;
    }
    if (d->broker && d->conf.fault_injection && broker_role_http(d->broker, req))
        return;
    if (!d->gateway || !gateway_http(d->gateway, req))
        http_respond_error(req, 404, "not_found", "no such path");
}

static void chatd_on_admin_http(http_req_t *req, void *user)
{
    if (!chatd_http_ops(user, req, 1))
        http_respond_error(req, 404, "not_found", "no such path");
}

static void chatd_on_redis_connect(redis_client_t *r, void *user)
{
    struct chatd *d = user;
    (void)r;
    if (d->gateway)
        gateway_on_redis_connect(d->gateway);
}

/* ---- shutdown ---- */

static void chatd_close_all(struct chatd *d)
{
    d->closed = 1;
    if (d->gateway)
        gateway_close(d->gateway);
    if (d->classifier)
        classifier_close(d->classifier);
    if (d->producer) /* a fatal one delivers nothing more: purge at once */
        kafka_producer_close(d->producer, kafka_producer_fatal(d->producer) ? 0 : 5000);
    if (d->redis)
        redis_client_close(d->redis);
    if (d->routes)
        routes_close(d->routes);
    if (d->http)
        http_server_close(d->http);
    if (d->admin)
        http_server_close(d->admin);
    if (d->api)
        api_close(d->api);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->drain, NULL);
    uv_close((uv_handle_t *)&d->trim, NULL);
    authkeys_stop();
    loopstat_stop();
}

static int chatd_drained(const struct chatd *d)
{
    return (!d->gateway || gateway_clients(d->gateway) == 0) &&
           (!d->classifier || !classifier_busy(d->classifier)) &&
           (!d->producer || kafka_producer_inflight(d->producer) == 0 ||
            kafka_producer_fatal(d->producer));
}

static void chatd_on_drain_tick(uv_timer_t *t)
{
    struct chatd *d = t->data;
    if (!chatd_drained(d) && uv_now(d->loop) < d->drain_deadline)
        return;
    log_info("shutdown", "drained=%d", chatd_drained(d));
    uv_timer_stop(t);
    chatd_close_all(d);
}

static void chatd_drain_start(struct chatd *d, uint64_t grace_ms)
{
    d->draining = 1;
    /* The listener stays open: /readyz answers 503 and /ws refuses while
     * draining, so probes and load balancers see it. */
    if (d->gateway)
        gateway_drain(d->gateway);
    if (d->classifier)
        classifier_drain(d->classifier);
    d->drain_deadline = uv_now(d->loop) + grace_ms;
    uv_timer_start(&d->drain, chatd_on_drain_tick, 0, 50);
}

static void chatd_on_signal(uv_signal_t *s, int signum)
{
    struct chatd *d = s->data;
    if (d->draining) {
        if (signum == SIGINT) {
            log_warn("shutdown_forced", "signal=%d", signum);
            d->drain_deadline = 0;
        }
        return;
    }
    log_info("draining", "signal=%d grace_s=%d", signum, d->conf.drain_s);
    chatd_drain_start(d, (uint64_t)d->conf.drain_s * 1000);
}

/* librdkafka declared a client of this process unusable for good. Waiting
 * heals nothing and a classifier would keep its partitions without
 * sequencing them, so the process drains and exits non-zero for its
 * supervisor to restart it: the gateway's clients are closed with 1012 and
 * reconnect to another gateway (their unacked sends resent with the same
 * cid), the classifier abandons its batches uncommitted and leaves the
 * group (or gives back its lease) at once, so its partitions move now.
 * Called from inside the failed client's dispatch: the closing is done by
 * the drain timer. */
static void chatd_on_kafka_fatal(void *ud)
{
    struct chatd *d = ud;
    if (d->fatal)
        return;
    d->fatal = 1;
    if (d->closed) { /* a client failed while closing: only the exit code is left */
        log_error("kafka_fatal_exit", "role=%s closing=1 exit=%d", conf_role_name(d->conf.role),
                  CHATD_EXIT_KAFKA_FATAL);
        return;
    }
    uint64_t grace = (uint64_t)d->conf.drain_s * 1000;
    if (grace > CHATD_FATAL_DRAIN_MS)
        grace = CHATD_FATAL_DRAIN_MS;
    log_error("kafka_fatal_exit", "role=%s draining=%d grace_ms=%" PRIu64 " exit=%d "
              "note=\"drain, then exit for the supervisor to restart the process\"",
              conf_role_name(d->conf.role), d->draining, grace, CHATD_EXIT_KAFKA_FATAL);
    if (d->classifier)
        classifier_fail(d->classifier);
    if (!d->draining) {
        chatd_drain_start(d, grace);
    } else if (d->drain_deadline > uv_now(d->loop) + grace) {
        d->drain_deadline = uv_now(d->loop) + grace;
    }
}

/* Every CHATD_TRIM_MS, emptied slab blocks are unmapped and glibc is asked
 * to give free heap pages back. After a burst is gone (a connection flood on
 * a gateway, with parser state and half-received messages; a big batch on a
 * classifier) the memory would otherwise stay mapped at its peak. Slabs keep
 * emptied blocks until then, so a burst does not map and unmap them. */
#define CHATD_TRIM_MS 5000

static void chatd_on_trim(uv_timer_t *t)
{
    (void)t;
    slab_trim();
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* ---- start ---- */

/* Blocking is fine here: the loop has not started. */
static int chatd_read_bootstrap(struct chatd *d)
{
    const char *path = d->conf.kafka_bootstrap_file;
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(d->brokers, 1, sizeof d->brokers - 1, f);
            fclose(f);
            while (n > 0 && (d->brokers[n - 1] == '\n' || d->brokers[n - 1] == ' '))
                n--;
            d->brokers[n] = 0;
            if (n > 0)
                return 0;
        }
        usleep(100 * 1000);
    }
    log_error("bootstrap_missing", "path=%s waited_s=60", path);
    return ERR_UNAVAILABLE;
}

static int chatd_start_kafka(struct chatd *d)
{
    const struct conf *c = &d->conf;
    int rc = 0;
    if (c->role == ROLE_BROKER || (c->role == ROLE_ALL && !strcmp(c->kafka, "embedded"))) {
        if ((rc = broker_role_start(&d->broker, c)))
            return rc;
        snprintf(d->brokers, sizeof d->brokers, "%s", kafka_broker_bootstraps(d->broker));
    } else if (!strcmp(c->kafka, "embedded")) {
        rc = chatd_read_bootstrap(d);
    } else {
        snprintf(d->brokers, sizeof d->brokers, "%s", c->kafka);
    }
    /* Gateways are told apart by id; other roles by process (two classifiers
     * on one host must not share a client.id in broker logs). */
    static char client_id[64];
    int gw_role = c->role == ROLE_GATEWAY || c->role == ROLE_ALL;
    snprintf(client_id, sizeof client_id, "chatd-%s-%d", conf_role_name(c->role),
             gw_role ? c->gateway_id : (int)getpid());
    d->kafka.brokers = d->brokers;
    d->kafka.opts = c->kafka_opts;
    d->kafka.n_opts = c->n_kafka_opts;
    d->kafka.client_id = client_id;
    d->kafka.embedded = !strcmp(c->kafka, "embedded");
    /* A process that runs both roles shares one producer: the gateway's
     * batching wins there (development). */
    d->kafka.linger_ms = gw_role ? CHATD_GATEWAY_LINGER_MS : 0;
    return rc;
}

/* Real Kafka: both topics exist, and this gateway's id has its chat-receive
 * partition (a StatefulSet scaled past the topic). Blocking, before the loop. */
#define CHATD_TOPICS_TIMEOUT_MS 30000

static int chatd_ensure_topics(struct chatd *d)
{
    const struct conf *c = &d->conf;
    struct kafka_topic_need need[] = {
        { c->topic_send, c->send_partitions, 1 },
        { c->topic_receive, c->receive_partitions,
          chatd_has_gateway(d) ? c->gateway_id + 1 : 1 },
    };
    int rc = kafka_topics_ensure(&d->kafka, need, 2, c->kafka_create_topics, c->replication_factor,
                                 CHATD_TOPICS_TIMEOUT_MS);
    if (rc)
        log_error("kafka_topics_not_ready", "brokers=%s err=%s", d->kafka.brokers, err_code(rc));
    return rc;
}

/* Checked here, not in conf/ (whose fuzz target links no store/): a bad
 * list is a bad flag, refused before any backend is waited for. */
static int chatd_check_sentinels(const struct conf *c)
{
    struct sentinel_addr a[SENTINEL_MAX];
    size_t n;
    size_t ml = strlen(c->redis_master);
    if (!c->redis_sentinels[0])
        return 0;
    if (sentinel_list_parse(c->redis_sentinels, a, SENTINEL_MAX, &n) != 0) {
        fprintf(stderr, "chatd: invalid value for --redis-sentinels: '%s' (HOST[:PORT],..., at most %d)\n",
                c->redis_sentinels, SENTINEL_MAX);
        return -1;
    }
    if (ml == 0 || strcspn(c->redis_master, " \r\n") != ml) {
        fprintf(stderr, "chatd: invalid value for --redis-master-name: '%s'\n", c->redis_master);
        return -1;
    }
    return 0;
}

static int chatd_start_roles(struct chatd *d)
{
    const struct conf *c = &d->conf;
    int rc = c->redis_sentinels[0]
                 ? redis_client_init_sentinel(&d->redis, d->loop, c->redis, c->redis_sentinels,
                                              c->redis_master, (unsigned)c->backend_timeout_ms,
                                              chatd_on_redis_connect, d)
                 : redis_client_init(&d->redis, d->loop, c->redis, (unsigned)c->backend_timeout_ms,
                                     chatd_on_redis_connect, d);
    if (rc == 0)
        rc = routes_init(&d->routes, d->loop, d->redis, c->receive_partitions, CHATD_DEDUP_TTL_S);
    if (rc == 0)
        rc = kafka_producer_init(&d->producer, d->loop, &d->kafka);
    if (rc)
        return rc;
    if (chatd_has_classifier(d)) {
        struct classifier_deps cd = { d->loop, c, &d->kafka, d->producer, d->routes, d->redis };
        if ((rc = classifier_init(&d->classifier, &cd)))
            return rc;
    }
    if (chatd_has_gateway(d)) {
        struct gateway_deps gd = { d->loop, c, &d->kafka, d->producer, d->routes, d->redis };
        if ((rc = gateway_init(&d->gateway, &gd)))
            return rc;
    }
    return 0;
}

/* The client listener, and the admin one if configured. The admin listener
 * serves Prometheus and the kubelet only: a few sockets. */
#define CHATD_ADMIN_MAX_CONNS 64

static int chatd_listen(struct chatd *d)
{
    const struct conf *c = &d->conf;
    struct http_limits hl = {
        .max_header = c->max_header,
        .max_url = c->max_url,
        .request_timeout_ms = (unsigned)c->request_timeout_ms,
        .max_conns = (unsigned)c->max_http_conns,
        .rate = c->rate,
        .rate_burst = c->rate_burst,
    };
    int rc = http_server_init(&d->http, d->loop, c->listen.host, c->listen.port, chatd_on_http, d);
    if (rc) {
        log_error("listen_failed", "addr=%s:%d err=%d", c->listen.host, c->listen.port, rc);
        return rc;
    }
    http_server_set_limits(d->http, &hl);
    log_info("listening", "addr=%s:%d role=%s metrics=%s", c->listen.host, http_server_port(d->http),
             conf_role_name(c->role), c->admin.set ? "admin" : "here");
    if (!c->admin.set)
        return 0;
    if ((rc = http_server_init(&d->admin, d->loop, c->admin.host, c->admin.port, chatd_on_admin_http, d))) {
        log_error("admin_listen_failed", "addr=%s:%d err=%d", c->admin.host, c->admin.port, rc);
        return rc;
    }
    hl.max_conns = CHATD_ADMIN_MAX_CONNS;
    http_server_set_limits(d->admin, &hl);
    log_info("admin_listening", "addr=%s:%d", c->admin.host, http_server_port(d->admin));
    return 0;
}

/* The server API (roles/api.h), on gateways when --api-listen is set. */
static int chatd_listen_api(struct chatd *d)
{
    if (!d->conf.api.set || !d->gateway)
        return 0;
    return api_init(&d->api, d->loop, &d->conf, d->gateway);
}

static int chatd_run(struct chatd *d)
{
    const struct conf *c = &d->conf;
    d->loop = uv_default_loop();
    int rc = loopstat_start(d->loop);
    /* Keys first: a bad JWKS file stops the process before it connects
     * to anything. */
    if (rc == 0 && chatd_has_gateway(d) && authkeys_start(d->loop, c) < 0)
        rc = ERR_INTERNAL;
    if (rc == 0)
        rc = chatd_start_kafka(d);
    if (rc)
        return rc;
    if (c->role != ROLE_BROKER && !d->kafka.embedded && (rc = chatd_ensure_topics(d)))
        return rc;
    if (c->role != ROLE_BROKER && (rc = pg_migrate(c->pg, c->migrate_wait_s * 1000))) {
        log_error("migrations_failed", "err=%s", err_code(rc));
        return rc;
    }
    if (c->role != ROLE_BROKER && (rc = chatd_start_roles(d)))
        return rc;
    if ((rc = chatd_listen(d)) || (rc = chatd_listen_api(d)))
        return rc;
    uv_signal_init(d->loop, &d->sigterm);
    uv_signal_init(d->loop, &d->sigint);
    uv_timer_init(d->loop, &d->drain);
    uv_timer_init(d->loop, &d->trim);
    d->sigterm.data = d->sigint.data = d->drain.data = d;
    uv_timer_start(&d->trim, chatd_on_trim, CHATD_TRIM_MS, CHATD_TRIM_MS);
    uv_unref((uv_handle_t *)&d->trim);
    uv_signal_start(&d->sigterm, chatd_on_signal, SIGTERM);
    uv_signal_start(&d->sigint, chatd_on_signal, SIGINT);
    kafka_on_fatal(chatd_on_kafka_fatal, d);
    uv_run(d->loop, UV_RUN_DEFAULT);
    return 0;
}

/* Where a container runtime starts processes with a soft open-file limit of
 * 1024, a gateway runs out of descriptors near 1,000 sockets; the hard limit
 * is what the operator granted, so take all of it, and say what it is. */
static void chatd_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        log_warn("nofile_unknown", "err=\"%s\"", strerror(errno));
        return;
    }
    rlim_t was = rl.rlim_cur, want = rl.rlim_max;
    if (want == RLIM_INFINITY) {
        /* Linux refuses an unlimited RLIMIT_NOFILE: its ceiling is nr_open. */
        unsigned long long n = 1048576;
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        if (f) {
            if (fscanf(f, "%llu", &n) != 1)
                n = 1048576;
            fclose(f);
        }
        want = (rlim_t)n;
    }
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_warn("nofile_raise_failed", "soft=%llu hard=%llu err=\"%s\"", (unsigned long long)was,
                     (unsigned long long)rl.rlim_max, strerror(errno));
            return;
        }
    }
    log_info("nofile", "soft=%llu was=%llu hard=%llu", (unsigned long long)rl.rlim_cur,
             (unsigned long long)was, (unsigned long long)rl.rlim_max);
}

int main(int argc, char **argv)
{
    static struct chatd d;
    int rc = conf_load(&d.conf, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (chatd_check_sentinels(&d.conf) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    log_init(d.conf.log_level, conf_role_name(d.conf.role),
             chatd_has_gateway(&d) ? d.conf.gateway_id : -1);
    chatd_raise_nofile();
    if (chatd_has_gateway(&d) && !d.conf.jwt_secret[0]) {
        /* Dev tokens without a secret: a random one, good for this process only. */
        unsigned char r[24];
        FILE *f = fopen("/dev/urandom", "rb");
        if (!f || fread(r, 1, sizeof r, f) != sizeof r)
            return 1;
        fclose(f);
        for (size_t i = 0; i < sizeof r; i++)
            snprintf(d.conf.jwt_secret + 2 * i, 3, "%02x", r[i]);
        log_warn("jwt_secret_generated", "note=\"CHATD_JWT_SECRET unset; tokens valid for this process only\"");
    }
    d.up = metrics_gauge("chatd_up", "1 while the process runs", NULL);
    metric_set(d.up, 1);
    metrics_set_collector(slab_collect);
    rc = chatd_run(&d);
    if (rc) /* start-up failed (logged): nothing is worth a graceful exit */
        return 1;
    /* Every handle is closed; let the last callbacks run, then free. */
    uv_run(d.loop, UV_RUN_DEFAULT);
    if (d.api)
        api_free(d.api);
    if (d.gateway)
        gateway_free(d.gateway);
    if (d.classifier)
        classifier_free(d.classifier);
    if (d.routes)
        routes_free(d.routes);
    if (d.broker)
        kafka_broker_stop(d.broker);
    uv_loop_close(d.loop);
    metrics_free();
    int exit_rc = d.fatal ? CHATD_EXIT_KAFKA_FATAL : 0;
    if (d.fatal)
        log_error("exit", "rc=%d reason=kafka_fatal", exit_rc);
    else
        log_info("exit", "rc=0");
    return exit_rc;
}
