/* sentinel: asks Redis Sentinels where the master is, on the libuv loop.
 *
 * hiredis 0.14 has no Sentinel client. A query asks the Sentinels in turn
 * `SENTINEL get-master-addr-by-name NAME`, each on a short-lived TCP
 * connection with its own deadline (the Sentinel's name resolved with
 * uv_getaddrinfo, never blocking); the first that names the master answers
 * the query, and is asked first next time. A Sentinel that is down, slow,
 * or does not know the master is skipped. With a password, the query is
 * preceded by AUTH with the Redis credentials (Sentinels commonly share
 * the master's password); a Sentinel without a password refuses the AUTH
 * and answers anyway.
 *
 * The address is only what the Sentinels believe: the caller checks the
 * node with ROLE before trusting it (store/redis.c), and asks again when a
 * connection fails or a write is refused (READONLY).
 */
#ifndef CHATD_SENTINEL_H
#define CHATD_SENTINEL_H

#include <stddef.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#define SENTINEL_MAX 16
#define SENTINEL_DEFAULT_PORT 26379

struct sentinel_addr {
    char host[256];
    int port;
};

typedef struct sentinel sentinel_t;

/* err 0: host/port name the master (valid during the callback only).
 * ERR_UNAVAILABLE: no Sentinel named it. ERR_CANCELLED: sentinel_close. */
typedef void (*sentinel_cb)(int err, const char *host, int port, void *user);

/* "HOST[:PORT],..." (PORT defaults to 26379; [v6]:PORT) into out[cap].
 * 0 with *n >= 1, or ERR_BAD_REQUEST. Pure, for conf and tests. */
int sentinel_list_parse(const char *list, struct sentinel_addr *out, size_t cap, size_t *n);
/* A get-master-addr-by-name reply: 0 and host (NUL-terminated, cap bytes)
 * + port; ERR_NOT_FOUND for nil (the Sentinel does not know the name);
 * ERR_UNAVAILABLE for an error reply; ERR_BAD_REQUEST for anything else. */
int sentinel_reply_parse(const redisReply *reply, char *host, size_t cap, int *port);

/* list as sentinel_list_parse; master: the name the Sentinels monitor;
 * user, password: AUTH's ("" or NULL: none; copied). timeout_ms: per
 * Sentinel. 0, or ERR_BAD_REQUEST (logged). */
int sentinel_init(sentinel_t **out, uv_loop_t *loop, const char *list, const char *master,
                  const char *user, const char *password, unsigned timeout_ms);
/* One query at a time (asserted); cb is called exactly once, from the loop. */
void sentinel_query(sentinel_t *s, sentinel_cb cb, void *user);
int sentinel_busy(const sentinel_t *s);
/* A query in flight gets ERR_CANCELLED from inside this call; memory is
 * freed once the loop has closed the handles. */
void sentinel_close(sentinel_t *s);

#endif
