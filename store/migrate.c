/* migrate: applies the embedded SQL migrations, blocking, before the loop
 * starts. See migrate.h. */
#include "store/migrate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "lib/err.h"
#include "lib/log.h"

/* pg_advisory_lock key: "chatdmig" as a bigint, shared by every chatd. */
#define MIGRATE_LOCK_KEY "7161966135432865127"
#define MIGRATE_RETRY_MS 250

static long long migrate_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void migrate_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static const char *migrate_msg(const char *m)
{
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    return log_q(m, n);
}

static void migrate_on_notice(void *arg, const char *msg)
{
    (void)arg;
    log_debug("pg_notice", "msg=%s", migrate_msg(msg));
}

/* connect_timeout comes first so one given in conninfo (expanded from
 * dbname) overrides it. */
static PGconn *migrate_connect(const char *conninfo)
{
    const char *kw[] = {"connect_timeout", "dbname", NULL};
    const char *val[] = {"5", conninfo, NULL};
    return PQconnectdbParams(kw, val, 1);
}

/* Runs sql (no parameters); 0 or ERR_INTERNAL, logged with context. */
static int migrate_exec(PGconn *conn, const char *what, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int rc = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? 0 : ERR_INTERNAL;
    if (rc)
        log_error("migration_sql_failed", "step=%s err=%s", what,
                  migrate_msg(res ? PQresultErrorMessage(res) : PQerrorMessage(conn)));
    PQclear(res);
    return rc;
}

/* 1 if version is recorded, 0 if not, ERR_INTERNAL on error. */
static int migrate_applied(PGconn *conn, int version)
{
    char v[16];
    snprintf(v, sizeof v, "%d", version);
    const char *params[1] = {v};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM schema_migrations WHERE version = $1", 1,
                                 NULL, params, NULL, NULL, 0);
    int rc = PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) > 0 : ERR_INTERNAL;
    if (rc < 0)
        log_error("migration_sql_failed", "step=check version=%d err=%s", version,
                  migrate_msg(PQresultErrorMessage(res)));
    PQclear(res);
    return rc;
}

static int migrate_apply(PGconn *conn, const struct migration *m)
{
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[2] = {v, m->name};
    if (migrate_exec(conn, "begin", "BEGIN") < 0)
        return ERR_INTERNAL;
    /* PQexec runs a multi-statement file in one go. */
    if (migrate_exec(conn, m->name, m->sql) < 0)
        goto rollback;
    PGresult *res = PQexecParams(conn, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                 2, NULL, params, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        log_error("migration_sql_failed", "step=record version=%d err=%s", m->version,
                  migrate_msg(PQresultErrorMessage(res)));
    PQclear(res);
    if (!ok || migrate_exec(conn, "commit", "COMMIT") < 0)
        goto rollback;
    log_info("migration_applied", "version=%d name=%s", m->version, m->name);
    return 0;
rollback:
    migrate_exec(conn, "rollback", "ROLLBACK");
    log_error("migration_failed", "version=%d name=%s", m->version, m->name);
    return ERR_INTERNAL;
}

static int migrate_run(PGconn *conn)
{
    if (migrate_exec(conn, "create_table",
                     "CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version int PRIMARY KEY,"
                     " name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())") < 0)
        return ERR_INTERNAL;
    int prev = 0;
    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations[i];
        if (m->version <= prev) {
            log_error("migration_order", "version=%d prev=%d name=%s", m->version, prev, m->name);
            return ERR_INTERNAL;
        }
        prev = m->version;
        int rc = migrate_applied(conn, m->version);
        if (rc < 0)
            return rc;
        if (rc == 0 && migrate_apply(conn, m) < 0)
            return ERR_INTERNAL;
    }
    return 0;
}

int pg_migrate(const char *conninfo, int wait_ms)
{
    long long give_up = migrate_now_ms() + (wait_ms > 0 ? wait_ms : 0);
    PGconn *conn;
    for (int attempt = 1;; attempt++) {
        conn = migrate_connect(conninfo);
        if (conn && PQstatus(conn) == CONNECTION_OK)
            break;
        const char *msg = conn ? PQerrorMessage(conn) : "out of memory";
        if (migrate_now_ms() >= give_up) {
            log_error("migrate_connect_failed", "attempts=%d err=%s", attempt, migrate_msg(msg));
            PQfinish(conn);
            return ERR_UNAVAILABLE;
        }
        if (attempt == 1)
            log_info("migrate_waiting_for_pg", "err=%s", migrate_msg(msg));
        PQfinish(conn);
        migrate_sleep_ms(MIGRATE_RETRY_MS);
    }
    PQsetNoticeProcessor(conn, migrate_on_notice, NULL);
    /* Session lock: released by the unlock below or when the session ends. */
    int rc = migrate_exec(conn, "lock", "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")");
    if (rc == 0) {
        rc = migrate_run(conn);
        migrate_exec(conn, "unlock", "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")");
    }
    PQfinish(conn);
    return rc;
}
