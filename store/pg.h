/* pg: an async PostgreSQL client on the libuv loop (libpq non-blocking,
 * pipeline mode, PQsocket watched by uv_poll).
 *
 * One connection per client; queries are pipelined (each followed by a sync
 * point so each is its own implicit transaction and one failure does not
 * abort its neighbours). Results come back in order. Each query has a
 * deadline (timeout_ms): past it the caller gets ERR_TIMEOUT, and the
 * server cancels the statement itself a little later (the connection's
 * statement_timeout is timeout_ms * 5/4: a statement about to commit may
 * still commit, as if its reply were lost), so the other queries in flight
 * go on. Only when even that cancel has not come back timeout_ms + 2 s
 * later is the connection reset, failing the other queries in flight with
 * ERR_UNAVAILABLE. While disconnected the client reconnects (PQconnectStart +
 * PQconnectPoll, host names resolved with uv_getaddrinfo first) with jittered
 * backoff, and queries fail fast with ERR_UNAVAILABLE.
 *
 * Every query gets exactly one callback, from the loop, never from inside
 * pg_query(). res is valid only during the callback (freed after it); res is
 * NULL when err != 0. A query that PostgreSQL rejected (syntax, constraint)
 * is err ERR_INTERNAL with res set, so the caller can read the SQLSTATE.
 */
#ifndef CHATD_PG_H
#define CHATD_PG_H

#include <libpq-fe.h>
#include <uv.h>

typedef struct pg_client pg_client_t;
typedef void (*pg_result_cb)(int err, PGresult *res, void *user);

int pg_client_init(pg_client_t **out, uv_loop_t *loop, const char *conninfo, unsigned timeout_ms);
int pg_client_ready(const pg_client_t *c);
/* params are text-format, NUL-terminated (NULL = SQL NULL). At most 65535. */
void pg_query(pg_client_t *c, const char *sql, int nparams, const char *const *params,
              pg_result_cb cb, void *user);

/* A statement PostgreSQL parses and plans once per connection instead of on
 * every call (the hot queries: a classifier batch's were half of the
 * server's CPU, mostly planning). Declare it `static struct pg_stmt s = {
 * "SQL" };`; the client names it on first use and prepares it, in the same
 * pipeline sync as the first execution, on each new connection. At most
 * PG_STMTS_MAX statements per process. */
#define PG_STMTS_MAX 64
struct pg_stmt {
    const char *sql;
    unsigned id; /* 0 until first use */
};
void pg_query_stmt(pg_client_t *c, struct pg_stmt *stmt, int nparams, const char *const *params,
                   pg_result_cb cb, void *user);
/* Queries sent but not answered. */
unsigned pg_client_inflight(const pg_client_t *c);
void pg_client_close(pg_client_t *c);

#endif
