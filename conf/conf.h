/* conf: the command line and the environment, parsed once into one
 * immutable struct.
 *
 * Every flag --name=value is also read from CHATD_NAME (upper-cased, '-' ->
 * '_'); the command line wins over the environment. Unknown flags and
 * invalid values are refused with a message naming the flag; main() exits 2.
 * The JWT secret is read only from CHATD_JWT_SECRET (never a flag: argv is
 * visible in ps). `chatd --help` prints every flag with its default.
 */
#ifndef CHATD_CONF_H
#define CHATD_CONF_H

#include <stddef.h>
#include <stdio.h>

#include "lib/log.h"

enum conf_role { ROLE_ALL = 0, ROLE_GATEWAY, ROLE_CLASSIFIER, ROLE_BROKER };

#define CONF_MAX_KAFKA_OPTS 64

/* A listener address; port 0 = any free port (tests). */
struct conf_addr {
    char host[64];
    int port;
    int set;                     /* 0: --admin-listen not given (or "") */
};

struct conf {
    enum conf_role role;
    struct conf_addr listen;     /* clients (/ws, /api, /), and ops paths */
    struct conf_addr admin;      /* if set: /metrics only here, plus /healthz, /readyz */
    struct conf_addr api;        /* if set: the server API (roles/api.h), gateways only */
    int gateway_id;
    char kafka[512];             /* "embedded" or "host:port,..." */
    char kafka_bootstrap_file[256];
    const char *kafka_opts[CONF_MAX_KAFKA_OPTS];
    size_t n_kafka_opts;
    char redis[256];
    char redis_sentinels[1024];  /* "" = --redis names the server; else HOST:PORT,... of Sentinels */
    char redis_master[128];      /* the master name the Sentinels monitor */
    char pg[512];
    int dev_tokens;
    int fault_injection;         /* broker: /faults/ HTTP API (tests only) */
    char jwt_secret[256];        /* from CHATD_JWT_SECRET only */
    char jwt_secret_previous[256]; /* CHATD_JWT_SECRET_PREVIOUS: still accepted during a rotation */
    char api_key[256];           /* CHATD_API_KEY only: the server API's bearer key */
    char api_key_previous[256];  /* CHATD_API_KEY_PREVIOUS: still accepted during a rotation */
    char jwks_file[256];         /* identity provider's public keys (RS256, ES256, EdDSA) */
    char jwt_algs_list[128];     /* --jwt-algs as given ("" = the default) */
    unsigned jwt_algs;           /* JWKS_ALG_* mask: the only algorithms tokens may use */
    char jwt_issuer[256];        /* "" = iss not checked */
    char jwt_audience[256];      /* "" = aud not checked */
    char topic_send[128];
    char topic_receive[128];
    int send_partitions;
    int receive_partitions;
    int kafka_create_topics;     /* real Kafka: create/grow topics at start */
    int replication_factor;      /* of created topics; -1 = broker default */
    int embedded_brokers;
    char group_id[128];
    char ownership[16];          /* "group", "lease" or "" (lease iff the embedded broker) */
    size_t max_frame;            /* largest client frame (close 1009 above) */
    size_t max_text;             /* largest message text (too_large above) */
    size_t send_queue;           /* per-connection output bound, bytes */
    double rate;                 /* client requests per second, sustained */
    double rate_burst;
    int heartbeat_s;             /* ping idle clients after this */
    int pong_timeout_s;
    int classifier_batch;
    int backend_timeout_ms;      /* Redis/PostgreSQL call deadline */
    int pg_conns;                /* a gateway's PostgreSQL connections */
    int gateway_ttl_s;           /* liveness key TTL of a gateway */
    int drain_s;                 /* SIGTERM grace for draining */
    int history_max;             /* sync/REST limit cap (1000) */
    int history_concurrency;     /* history reads in flight per gateway */
    int handshake_concurrency;   /* upgrades waiting for their rooms per gateway */
    int max_conns;               /* WebSockets + upgrades in flight per gateway (503 above) */
    int max_conns_per_user;      /* per user per gateway (429 above) */
    int max_inflight_per_user;   /* backend requests of one user in flight (rate_limited above) */
    int max_rooms_per_user;      /* memberships of one user (join: forbidden above) */
    char origins[1024];          /* browser Origins allowed to upgrade: "" same-origin, "*" any */
    size_t max_header;           /* HTTP request line + headers, bytes (431 above) */
    size_t max_url;              /* HTTP request target, bytes (414 above) */
    int request_timeout_ms;      /* a complete HTTP request within this, or 408 / close */
    int max_http_conns;          /* sockets in the HTTP phase (503 + close above) */
    int migrate_wait_s;
    char retention[32];          /* --retention as given */
    long long retention_s;       /* messages kept at least this long; 0 = for ever */
    char resend_window[32];      /* --resend-window as given */
    long long resend_window_s;   /* a cid's original looked for this far back; 0 = for ever */
    char compact_after[32];      /* --compact-after as given */
    long long compact_after_s;   /* a month is put in room order this long after it ended; 0 = never */
    enum log_level log_level;
};

/* Parses argv + environ into *c. Returns 0; 1 when --help/--version printed
 * (exit 0); -1 on an invalid configuration (message already printed on
 * stderr; exit 2). Strings in kafka_opts point into argv/environ. */
int conf_load(struct conf *c, int argc, char **argv);
const char *conf_role_name(enum conf_role r);
void conf_usage(FILE *out);

#endif
