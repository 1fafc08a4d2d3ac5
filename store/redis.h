/* redis: an async Redis client on the libuv loop (hiredis 0.14 + adapters/libuv.h).
 *
 * hiredis 0.14 has no timeouts under libuv, so every command gets its own
 * deadline from one uv timer wheel here: past it, the caller's callback gets
 * ERR_TIMEOUT and the connection is dropped and re-established (a late reply
 * on a connection we no longer trust is worse than a reconnect). The host
 * name is resolved with uv_getaddrinfo, never by a blocking call. While
 * disconnected the client reconnects with jittered exponential backoff
 * (100 ms .. 5 s) and commands fail fast with ERR_UNAVAILABLE.
 *
 * Every command gets exactly one callback, always from the loop, never from
 * inside the call that issued it. The reply is owned by hiredis and valid
 * only during the callback. Commands issued in one loop turn are pipelined
 * by hiredis into one write.
 */
#ifndef CHATD_REDIS_H
#define CHATD_REDIS_H

#include <stddef.h>
#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct redis_client redis_client_t;

/* err: 0, ERR_UNAVAILABLE (not connected / connection lost), ERR_TIMEOUT.
 * A Redis error reply (REDIS_REPLY_ERROR) is err 0 with that reply: the caller
 * decides. reply is NULL whenever err != 0. */
typedef void (*redis_reply_cb)(int err, redisReply *reply, void *user);
/* Called on every (re)connection, e.g. to re-register state after a restart. */
typedef void (*redis_connect_cb)(redis_client_t *r, void *user);

/* A parsed redis:// URL. */
struct redis_url {
    char host[256];
    int port;                     /* 6379 when absent */
    int db;                       /* 0 when absent */
    char user[128];               /* Redis 6 ACL user; "" = AUTH with the password only */
    char password[256];           /* "" = no AUTH */
};

/* url: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]. On every connection the
 * client sends AUTH (when there is a password), then SELECT (db != 0), and
 * only then counts as connected; a refused AUTH is logged and retried with
 * the reconnect backoff. The password is never logged. Connecting starts at
 * once; returns 0 or ERR_BAD_REQUEST for a bad URL. */
int redis_client_init(redis_client_t **out, uv_loop_t *loop, const char *url,
                      unsigned timeout_ms, redis_connect_cb on_connect, void *user);
/* The same, with the master found through Redis Sentinel: sentinels is
 * "HOST[:PORT],..." (store/sentinel.h), master the name they monitor; the
 * URL then gives only the credentials and the db (its host and port are
 * ignored). Every (re)connection asks the Sentinels, then checks the node
 * with ROLE before it counts as connected; a node that is not the master,
 * an error reply saying so to any command (READONLY, MASTERDOWN,
 * NOREPLICAS: the caller still gets that reply), and the Sentinels naming
 * another master (asked every 5 s while connected) drop the connection and
 * start over, so a failover is followed without a restart; the reconnect
 * backoff is then capped at 1 s. 0 or ERR_BAD_REQUEST. */
int redis_client_init_sentinel(redis_client_t **out, uv_loop_t *loop, const char *url,
                               const char *sentinels, const char *master, unsigned timeout_ms,
                               redis_connect_cb on_connect, void *user);
/* Parses a URL as above (pure; for tests). USER and PASSWORD are
 * percent-decoded (%40 for '@', %3A for ':', %2F for '/').
 * 0 or ERR_BAD_REQUEST. */
int redis_url_parse(const char *url, struct redis_url *out);

int redis_client_ready(const redis_client_t *r);
void redis_command_argv(redis_client_t *r, redis_reply_cb cb, void *user, int argc,
                        const char **argv, const size_t *argvlen);
void redis_command(redis_client_t *r, redis_reply_cb cb, void *user, const char *fmt, ...);

/* A Lua script run with EVALSHA, falling back to EVAL on NOSCRIPT (e.g. after
 * a Redis restart). The sha is computed once at redis_script_init, which also
 * registers the script for SCRIPT LOAD on every new connection: src must be
 * static (a string literal); the struct itself is copied. */
struct redis_script {
    const char *src;
    char sha[41];
};
void redis_script_init(struct redis_script *s, const char *src);
/* argv holds the keys first (nkeys of them), then the args. */
void redis_script_run(redis_client_t *r, const struct redis_script *s, redis_reply_cb cb,
                      void *user, int nkeys, int argc, const char **argv, const size_t *argvlen);

/* Fails pending commands with ERR_CANCELLED, disconnects, frees when closed. */
void redis_client_close(redis_client_t *r);

#endif
