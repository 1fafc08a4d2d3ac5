#include "conf/conf.h"

#include "net/jwks.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <unistd.h>

#include "net/http.h"
#include "net/proto.h"

#ifndef CHATD_VERSION
#define CHATD_VERSION "0.1.0"
#endif

enum conf_type { T_STR, T_INT, T_SIZE, T_DOUBLE, T_BOOL, T_ROLE, T_LISTEN, T_LEVEL, T_KOPT };

struct conf_flag {
    const char *name;
    enum conf_type type;
    size_t off;
    size_t cap;          /* T_STR buffer size */
    const char *def;     /* default as text; NULL = none */
    long lo, hi;         /* T_INT/T_SIZE bounds */
    const char *help;
};

#define F_STR(n, field, d, h) { n, T_STR, offsetof(struct conf, field), sizeof(((struct conf *)0)->field), d, 0, 0, h }
#define F_INT(n, field, d, lo, hi, h) { n, T_INT, offsetof(struct conf, field), 0, d, lo, hi, h }
#define F_SIZE(n, field, d, lo, hi, h) { n, T_SIZE, offsetof(struct conf, field), 0, d, lo, hi, h }
#define F_DBL(n, field, d, h) { n, T_DOUBLE, offsetof(struct conf, field), 0, d, 0, 0, h }

static const struct conf_flag conf_flags[] = {
    { "role", T_ROLE, offsetof(struct conf, role), 0, "all", 0, 0,
      "gateway | classifier | all | broker" },
    { "listen", T_LISTEN, offsetof(struct conf, listen), 0, "0.0.0.0:8080", 0, 0,
      "HOST:PORT for /healthz, /readyz, /metrics (and /ws, /api, / on gateways)" },
    /* lo = 1: may be empty (off) */
    { "admin-listen", T_LISTEN, offsetof(struct conf, admin), 0, "", 1, 0,
      "HOST:PORT of a second listener for /metrics, /healthz, /readyz only; when set, /metrics is "
      "served only there (keep it off the port clients reach). '' = off" },
    { "api-listen", T_LISTEN, offsetof(struct conf, api), 0, "", 1, 0,
      "HOST:PORT of the server API for the application's backend (docs/API.md; needs "
      "CHATD_API_KEY; gateways only). '' = off" },
    F_INT("gateway-id", gateway_id, NULL, 0, 65535,
          "this gateway's id = its chat-receive partition (default: the number after the last '-' of the hostname, else 0)"),
    F_STR("kafka", kafka, "embedded",
          "'embedded' or HOST:PORT,... ; embedded = in-process broker (all), or the broker named by --kafka-bootstrap-file"),
    F_STR("kafka-bootstrap-file", kafka_bootstrap_file, "",
          "where an embedded broker writes its address, and where other roles read it"),
    { "kafka-opt", T_KOPT, 0, 0, NULL, 0, 0, "librdkafka property key=value (repeatable; applied last)" },
    F_STR("redis", redis, "redis://127.0.0.1:6379/0",
          "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (percent-escape @ : / in the password; "
          "with a password, set CHATD_REDIS from a secret, not the flag: argv is visible in ps)"),
    F_STR("redis-sentinels", redis_sentinels, "",
          "HOST[:PORT],... of Redis Sentinels (port 26379 when absent): chatd asks them for the "
          "master, checks it with ROLE and follows a failover; --redis then gives only the "
          "credentials (also AUTH to the Sentinels) and db. '' = no Sentinel"),
    F_STR("redis-master-name", redis_master, "mymaster", "the master name the Sentinels monitor"),
    F_STR("pg", pg, "host=127.0.0.1 port=5432 dbname=chatd user=chatd", "libpq conninfo or postgresql:// URI"),
    { "dev-tokens", T_BOOL, offsetof(struct conf, dev_tokens), 0, "0", 0, 0,
      "enable POST /api/dev/token (demo only: anyone can become anyone)" },
    { "fault-injection", T_BOOL, offsetof(struct conf, fault_injection), 0, "0", 0, 0,
      "embedded broker: serve POST /faults/... to take brokers down or fail requests (tests only)" },
    F_STR("jwks-file", jwks_file, "",
          "JWK Set file of the identity provider's public keys (RS256, ES256, EdDSA; chosen by kid); "
          "reloaded when it changes and on SIGHUP. '' = none"),
    F_STR("jwt-algs", jwt_algs_list, "",
          "JWT algorithms accepted, comma-separated, of HS256,RS256,ES256,EdDSA; the token never "
          "chooses ('' = HS256, or with --jwks-file RS256,ES256,EdDSA plus HS256 if CHATD_JWT_SECRET is set)"),
    F_STR("jwt-issuer", jwt_issuer, "", "if set, tokens must carry this iss"),
    F_STR("jwt-audience", jwt_audience, "", "if set, tokens' aud must be or contain this"),
    F_STR("topic-send", topic_send, "chat-send", "topic gateways produce client messages to"),
    F_STR("topic-receive", topic_receive, "chat-receive", "topic classifiers produce deliveries to (partition = gateway id)"),
    F_INT("send-partitions", send_partitions, "12", 1, 10000,
          "chat-send partitions (the embedded broker, or --kafka-create-topics, creates them)"),
    F_INT("receive-partitions", receive_partitions, "16", 1, 10000,
          "chat-receive partitions = the most gateways (the embedded broker, or --kafka-create-topics, creates them)"),
    { "kafka-create-topics", T_BOOL, offsetof(struct conf, kafka_create_topics), 0, "0", 0, 0,
      "real Kafka: create missing topics (partitions above, --replication-factor) and grow chat-receive "
      "to this gateway's id; off: a missing topic stops the start with the command to run" },
    F_INT("replication-factor", replication_factor, "-1", -1, 32,
          "replicas of topics chatd creates (-1: the brokers' default.replication.factor)"),
    F_INT("embedded-brokers", embedded_brokers, "1", 1, 9, "brokers in the embedded mock cluster"),
    F_STR("group", group_id, "chatd-classifier", "classifier consumer group id"),
    F_STR("ownership", ownership, "",
          "how classifiers share chat-send: 'group' (Kafka's consumer group), 'lease' (leases in "
          "PostgreSQL, docs/ARCHITECTURE.md \"Failover\"); '' = lease with the embedded broker, "
          "else group"),
    F_SIZE("max-frame", max_frame, "65536", 1024, 16777216, "largest client WebSocket message, bytes (close 1009 above)"),
    F_SIZE("max-text", max_text, "4096", 1, 1048576, "largest message text, bytes (too_large above)"),
    F_SIZE("send-queue", send_queue, "1048576", 4096, 1073741824,
           "per-connection output bound, bytes: a slower client is disconnected"),
    F_DBL("rate", rate, "20", "client requests per second per connection (token bucket)"),
    F_DBL("rate-burst", rate_burst, "50", "token bucket depth"),
    F_INT("heartbeat", heartbeat_s, "25", 1, 3600, "seconds of silence before the server pings a client"),
    F_INT("pong-timeout", pong_timeout_s, "10", 1, 3600, "seconds to wait for any frame after a ping"),
    F_INT("classifier-batch", classifier_batch, "1000", 1, 5000, "records a classifier sequences per batch"),
    F_INT("backend-timeout-ms", backend_timeout_ms, "2000", 10, 600000, "deadline of one Redis or PostgreSQL call"),
    F_INT("pg-conns", pg_conns, "4", 1, 64,
          "PostgreSQL connections per gateway; each user's statements always take the same one (their "
          "order holds), so concurrent commits share WAL flushes and a slow query holds up only its users"),
    F_INT("gateway-ttl", gateway_ttl_s, "10", 2, 3600, "seconds a dead gateway keeps receiving routes (liveness TTL)"),
    F_INT("drain", drain_s, "10", 0, 3600, "seconds allowed for draining on SIGTERM"),
    F_INT("history-max", history_max, "1000", 1, 100000, "largest sync/REST page"),
    F_INT("history-concurrency", history_concurrency, "64", 1, 100000,
          "history reads (sync, REST) in flight per gateway; more are answered unavailable / 503"),
    F_INT("handshake-concurrency", handshake_concurrency, "256", 1, 100000,
          "upgrades in flight per gateway (loading the user's rooms); more get 503 + Retry-After"),
    F_INT("max-conns", max_conns, "10000", 1, 1000000,
          "WebSocket connections (open + being set up) per gateway; more get 503 + Retry-After before the upgrade"),
    F_INT("max-conns-per-user", max_conns_per_user, "32", 1, 100000,
          "WebSocket connections of one user per gateway; more get 429 before the upgrade"),
    F_INT("max-inflight-per-user", max_inflight_per_user, "16", 1, 100000,
          "requests of one user waiting for PostgreSQL or Redis (join, leave, sync, rooms, read, presence) "
          "per gateway, over all its connections; more are answered rate_limited"),
    F_INT("max-rooms-per-user", max_rooms_per_user, "1000", 1, 1000000,
          "rooms one user may be a member of; a join beyond is forbidden (a dm's peer is then not added)"),
    F_STR("origins", origins, "",
          "browser Origins allowed to open /ws, comma-separated (e.g. https://chat.example.com); "
          "'' = same-origin only, '*' = any; requests without Origin (non-browser) are allowed; 403 otherwise"),
    F_SIZE("max-header-bytes", max_header, "16384", 1024, 1048576,
           "HTTP request line + headers, bytes (431 above; at most 130 KiB less a request's bookkeeping)"),
    F_SIZE("max-url-bytes", max_url, "8192", 256, 1048576, "HTTP request target (path + query), bytes (414 above)"),
    F_INT("request-timeout-ms", request_timeout_ms, "10000", 100, 600000,
          "a connection must deliver a complete HTTP request (the upgrade included) within this; "
          "408 + close when part of one came, plain close when idle (slowloris)"),
    F_INT("max-http-conns", max_http_conns, "4096", 1, 1000000,
          "sockets still in the HTTP phase (not yet upgraded); a new one above this gets 503 and is closed"),
    F_INT("migrate-wait", migrate_wait_s, "30", 0, 3600, "seconds to wait for PostgreSQL at start"),
    F_STR("retention", retention, "0",
          "keep messages at least this long, then drop them by whole months (N followed by s, m, h "
          "or d, e.g. 90d; classifiers enforce it); 0 = keep for ever"),
    F_STR("resend-window", resend_window, "0",
          "how far back a message's cid is looked for when it is sent again (N followed by s, m, h or "
          "d, e.g. 31d): a resend later than that is stored again; 0 = for ever (every month kept is "
          "probed; PROTOCOL.md: never stored twice)"),
    F_STR("compact-after", compact_after, "2d",
          "put a month's messages in room order (history pages of quiet rooms read a few disk pages, not "
          "one per message) this long after it ended, online, one month per hourly upkeep (N followed "
          "by s, m, h or d; classifiers); 0 = never"),
    { "log-level", T_LEVEL, offsetof(struct conf, log_level), 0, "info", 0, 0, "debug | info | warn | error" },
};
#define CONF_NFLAGS (sizeof conf_flags / sizeof conf_flags[0])

static const char *const conf_role_names[] = { "all", "gateway", "classifier", "broker" };

const char *conf_role_name(enum conf_role r) { return conf_role_names[r]; }

void conf_usage(FILE *out)
{
    fprintf(out, "usage: chatd [--flag=value ...]\n\n"
                 "Every flag is also read from the environment as CHATD_<FLAG> (e.g. CHATD_LISTEN);\n"
                 "the command line wins. The JWT secret is read only from CHATD_JWT_SECRET\n"
                 "(and, during a rotation, CHATD_JWT_SECRET_PREVIOUS, also accepted); the server\n"
                 "API's key only from CHATD_API_KEY (and CHATD_API_KEY_PREVIOUS).\n\n");
    for (size_t i = 0; i < CONF_NFLAGS; i++) {
        const struct conf_flag *f = &conf_flags[i];
        fprintf(out, "  --%-22s %s", f->name, f->help);
        if (f->def && f->type != T_BOOL)
            fprintf(out, " [default: %s]", f->def[0] ? f->def : "\"\"");
        fputc('\n', out);
    }
    fprintf(out, "  --%-22s %s\n  --%-22s %s\n", "help", "print this and exit", "version",
            "print the version and exit");
}

static int conf_parse_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int conf_parse_listen(struct conf_addr *a, const char *v, int may_be_empty)
{
    if (!v[0] && may_be_empty) {
        memset(a, 0, sizeof *a);
        return 0;
    }
    const char *colon = strrchr(v, ':');
    long port;
    if (!colon || colon == v || (size_t)(colon - v) >= sizeof a->host ||
        conf_parse_long(colon + 1, 0, 65535, &port) < 0)
        return -1;
    const char *h = v;
    size_t hl = (size_t)(colon - v);
    if (h[0] == '[' && h[hl - 1] == ']') { /* [::1]:8080 */
        h++;
        hl -= 2;
    }
    if (hl == 0)
        return -1;
    memcpy(a->host, h, hl);
    a->host[hl] = 0;
    a->port = (int)port;
    a->set = 1;
    return 0;
}

static int conf_set(struct conf *c, const struct conf_flag *f, const char *v)
{
    char *base = (char *)c;
    long x;
    switch (f->type) {
    case T_STR:
        if (strlen(v) >= f->cap)
            return -1;
        strcpy(base + f->off, v);
        return 0;
    case T_INT:
        if (conf_parse_long(v, f->lo, f->hi, &x) < 0)
            return -1;
        *(int *)(base + f->off) = (int)x;
        return 0;
    case T_SIZE:
        if (conf_parse_long(v, f->lo, f->hi, &x) < 0)
            return -1;
        *(size_t *)(base + f->off) = (size_t)x;
        return 0;
    case T_DOUBLE: {
        char *end;
        double d = strtod(v, &end);
        if (end == v || *end || !(d > 0) || d > 1e9)
            return -1;
        *(double *)(base + f->off) = d;
        return 0;
    }
    case T_BOOL:
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(int *)(base + f->off) = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off"))
            *(int *)(base + f->off) = 0;
        else
            return -1;
        return 0;
    case T_ROLE:
        for (int r = 0; r < 4; r++)
            if (!strcmp(v, conf_role_names[r])) {
                c->role = (enum conf_role)r;
                return 0;
            }
        return -1;
    case T_LISTEN:
        return conf_parse_listen((struct conf_addr *)(base + f->off), v, f->lo == 1);
    case T_LEVEL:
        return log_level_parse(v, &c->log_level);
    case T_KOPT:
        if (!strchr(v, '=') || v[0] == '=' || c->n_kafka_opts == CONF_MAX_KAFKA_OPTS)
            return -1;
        c->kafka_opts[c->n_kafka_opts++] = v;
        return 0;
    }
    return -1;
}

static const struct conf_flag *conf_find(const char *name, size_t len)
{
    for (size_t i = 0; i < CONF_NFLAGS; i++)
        if (strlen(conf_flags[i].name) == len && !strncmp(conf_flags[i].name, name, len))
            return &conf_flags[i];
    return NULL;
}

static int conf_set_checked(struct conf *c, const struct conf_flag *f, const char *v, const char *src)
{
    if (conf_set(c, f, v) == 0)
        return 0;
    fprintf(stderr, "chatd: invalid value for --%s (from %s): '%s'\n", f->name, src, v);
    return -1;
}

/* The environment first, so the command line can override it. */
static int conf_load_env(struct conf *c)
{
    for (size_t i = 0; i < CONF_NFLAGS; i++) {
        const struct conf_flag *f = &conf_flags[i];
        char env[64] = "CHATD_";
        size_t o = 6;
        for (const char *p = f->name; *p && o < sizeof env - 1; p++)
            env[o++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        env[o] = 0;
        const char *v = getenv(env);
        if (v && conf_set_checked(c, f, v, env) < 0)
            return -1;
    }
    return 0;
}

static int conf_load_args(struct conf *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            conf_usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("chatd %s\n", CHATD_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "chatd: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct conf_flag *f = conf_find(name, nlen);
        if (!f) {
            fprintf(stderr, "chatd: unknown flag '--%.*s' (see --help)\n", (int)nlen, name);
            return -1;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && f->type == T_BOOL)
            v = "1";
        else if (!v && i + 1 < argc)
            v = argv[++i];
        if (!v) {
            fprintf(stderr, "chatd: --%s needs a value\n", f->name);
            return -1;
        }
        if (conf_set_checked(c, f, v, "command line") < 0)
            return -1;
    }
    return 0;
}

/* A StatefulSet pod is named <set>-<ordinal>: that ordinal is the gateway id. */
static int conf_gateway_id_from_hostname(void)
{
    char host[256];
    long id;
    if (gethostname(host, sizeof host) != 0)
        return 0;
    host[sizeof host - 1] = 0;
    const char *dash = strrchr(host, '-');
    if (!dash || conf_parse_long(dash + 1, 0, 65535, &id) < 0)
        return 0;
    return (int)id;
}

/* "0", or N followed by s, m, h or d: seconds in *out; -1 if invalid. */
static int conf_parse_duration(const char *v, long long *out)
{
    if (!strcmp(v, "0")) {
        *out = 0;
        return 0;
    }
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    long long unit = 0;
    if (end != v && end[0] && !end[1])
        unit = end[0] == 's' ? 1 : end[0] == 'm' ? 60 : end[0] == 'h' ? 3600 : end[0] == 'd' ? 86400 : 0;
    /* at most 100 years: the product stays far from overflow */
    if (errno || v[0] == '-' || v[0] == '+' || unit == 0 || n <= 0 || n > 3155760000LL / unit)
        return -1;
    *out = n * unit;
    return 0;
}

static int conf_check(struct conf *c)
{
    if (conf_parse_duration(c->retention, &c->retention_s) < 0) {
        fprintf(stderr, "chatd: invalid value for --retention: '%s' (0, or N followed by s, m, h "
                        "or d, e.g. 90d)\n", c->retention);
        return -1;
    }
    if (conf_parse_duration(c->resend_window, &c->resend_window_s) < 0) {
        fprintf(stderr, "chatd: invalid value for --resend-window: '%s' (0, or N followed by s, m, "
                        "h or d, e.g. 31d)\n", c->resend_window);
        return -1;
    }
    if (conf_parse_duration(c->compact_after, &c->compact_after_s) < 0) {
        fprintf(stderr, "chatd: invalid value for --compact-after: '%s' (0, or N followed by s, m, "
                        "h or d, e.g. 2d)\n", c->compact_after);
        return -1;
    }
    if (c->gateway_id < 0)
        c->gateway_id = conf_gateway_id_from_hostname();
    /* Classifiers route only to ids below --receive-partitions: a gateway
     * above it would never receive anything. */
    if ((c->role == ROLE_GATEWAY || c->role == ROLE_ALL) && c->gateway_id >= c->receive_partitions) {
        fprintf(stderr, "chatd: --gateway-id=%d needs --receive-partitions > %d (the chat-receive "
                        "partitions)\n", c->gateway_id, c->gateway_id);
        return -1;
    }
    if (c->ownership[0] && strcmp(c->ownership, "group") && strcmp(c->ownership, "lease")) {
        fprintf(stderr, "chatd: invalid value for --ownership: '%s' (group or lease)\n",
                c->ownership);
        return -1;
    }
    if (c->role == ROLE_BROKER && strcmp(c->kafka, "embedded") != 0) {
        fprintf(stderr, "chatd: --role=broker runs the embedded broker: --kafka must be 'embedded'\n");
        return -1;
    }
    if ((c->role == ROLE_GATEWAY || c->role == ROLE_CLASSIFIER) && !strcmp(c->kafka, "embedded") &&
        !c->kafka_bootstrap_file[0]) {
        fprintf(stderr, "chatd: --role=%s with --kafka=embedded needs --kafka-bootstrap-file "
                        "(written by a --role=broker process)\n", conf_role_name(c->role));
        return -1;
    }
    const char *secret = getenv("CHATD_JWT_SECRET");
    if (secret && strlen(secret) >= sizeof c->jwt_secret) {
        fprintf(stderr, "chatd: CHATD_JWT_SECRET is too long (max %zu bytes)\n", sizeof c->jwt_secret - 1);
        return -1;
    }
    if (secret)
        strcpy(c->jwt_secret, secret);
    /* Rotation: tokens signed with the previous secret keep working until
     * they expire; new ones are signed (by the issuer) with the current one. */
    const char *prev = getenv("CHATD_JWT_SECRET_PREVIOUS");
    if (prev && strlen(prev) >= sizeof c->jwt_secret_previous) {
        fprintf(stderr, "chatd: CHATD_JWT_SECRET_PREVIOUS is too long (max %zu bytes)\n",
                sizeof c->jwt_secret_previous - 1);
        return -1;
    }
    if (prev)
        strcpy(c->jwt_secret_previous, prev);
    /* The server API's keys, like the JWT secret: from the environment only. */
    const char *keys[2] = { getenv("CHATD_API_KEY"), getenv("CHATD_API_KEY_PREVIOUS") };
    char *dst[2] = { c->api_key, c->api_key_previous };
    for (int i = 0; i < 2; i++) {
        if (keys[i] && strlen(keys[i]) >= sizeof c->api_key) {
            fprintf(stderr, "chatd: %s is too long (max %zu bytes)\n",
                    i ? "CHATD_API_KEY_PREVIOUS" : "CHATD_API_KEY", sizeof c->api_key - 1);
            return -1;
        }
        if (keys[i])
            strcpy(dst[i], keys[i]);
    }
    if (c->api.set && (c->role == ROLE_CLASSIFIER || c->role == ROLE_BROKER)) {
        fprintf(stderr, "chatd: --api-listen is served by gateways (--role=gateway or all)\n");
        return -1;
    }
    /* A key shorter than 16 bytes is a guessable one. */
    if (c->api.set && strlen(c->api_key) < 16) {
        fprintf(stderr, "chatd: --api-listen needs CHATD_API_KEY (at least 16 bytes)\n");
        return -1;
    }
    if (c->api.set && c->api.port != 0 &&
        (c->api.port == c->listen.port || (c->admin.set && c->api.port == c->admin.port))) {
        fprintf(stderr, "chatd: --api-listen must use a port of its own\n");
        return -1;
    }
    if (c->admin.set && c->admin.port != 0 && c->admin.port == c->listen.port) {
        fprintf(stderr, "chatd: --admin-listen must use another port than --listen (%d)\n", c->listen.port);
        return -1;
    }
    /* Each request in progress holds a header buffer of this size, from a
     * slab whose slot cannot exceed its block (lib/slab.h). */
    if (c->max_header > http_max_header_limit()) {
        fprintf(stderr, "chatd: --max-header-bytes=%zu is more than a request buffer can hold "
                        "(at most %zu)\n", c->max_header, http_max_header_limit());
        return -1;
    }
    /* Every reply is paged within half the output bound (roles/gateway.c);
     * that half must hold the largest message, or no page could progress. */
    if (c->send_queue / 2 < proto_msg_bound(c->max_text)) {
        fprintf(stderr, "chatd: --send-queue=%zu cannot hold a --max-text=%zu message in a reply "
                        "(needs at least %zu)\n", c->send_queue, c->max_text, 2 * proto_msg_bound(c->max_text));
        return -1;
    }
    /* ... and the user's `rooms` reply, one entry per room. */
    if (c->send_queue / 2 < (size_t)c->max_rooms_per_user * PROTO_ROOMS_ENTRY_MAX + 256) {
        fprintf(stderr, "chatd: --send-queue=%zu cannot hold the rooms reply of --max-rooms-per-user=%d "
                        "(needs at least %zu)\n", c->send_queue, c->max_rooms_per_user,
                2 * ((size_t)c->max_rooms_per_user * PROTO_ROOMS_ENTRY_MAX + 256));
        return -1;
    }
    if (c->max_url > c->max_header) {
        fprintf(stderr, "chatd: --max-url-bytes must not exceed --max-header-bytes\n");
        return -1;
    }
    if (!c->jwt_algs_list[0])
        c->jwt_algs = !c->jwks_file[0] ? JWKS_ALG_HS256
                                       : JWKS_ALG_ASYMMETRIC | (c->jwt_secret[0] || c->dev_tokens ? JWKS_ALG_HS256 : 0);
    else if (jwks_algs_parse(c->jwt_algs_list, &c->jwt_algs) < 0) {
        fprintf(stderr, "chatd: --jwt-algs: a comma-separated list of HS256, RS256, ES256, EdDSA\n");
        return -1;
    }
    if ((c->jwt_algs & JWKS_ALG_ASYMMETRIC) && !c->jwks_file[0]) {
        fprintf(stderr, "chatd: --jwt-algs=%s needs --jwks-file (the keys of RS256, ES256, EdDSA)\n",
                c->jwt_algs_list);
        return -1;
    }
    if ((c->role == ROLE_GATEWAY || c->role == ROLE_ALL) && (c->jwt_algs & JWKS_ALG_HS256) &&
        !c->jwt_secret[0] && !c->dev_tokens) {
        fprintf(stderr, "chatd: set CHATD_JWT_SECRET (the HS256 secret clients' tokens are signed with), "
                        "or --jwks-file without HS256 in --jwt-algs\n");
        return -1;
    }
    return 0;
}

int conf_load(struct conf *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < CONF_NFLAGS; i++)
        if (conf_flags[i].def && conf_set(c, &conf_flags[i], conf_flags[i].def) < 0)
            CHATD_ASSERT(!"bad default");
    c->gateway_id = -1;
    int rc = conf_load_env(c);
    if (rc == 0)
        rc = conf_load_args(c, argc, argv);
    if (rc == 0)
        rc = conf_check(c);
    return rc;
}
