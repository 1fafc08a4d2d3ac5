#include "store/seen.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"
#include "store/db.h"

struct seen_user {
    char *name;                   /* NULL: keep the stored one */
    UT_hash_handle hh;
    char id[];
};

struct seen {
    pg_client_t *pg;
    struct seen_user *users;
    size_t n;
};

seen_t *seen_new(pg_client_t *pg)
{
    seen_t *s = calloc(1, sizeof *s);
    if (s)
        s->pg = pg;
    return s;
}

static void seen_user_free(struct seen_user *u)
{
    free(u->name);
    free(u);
}

void seen_note(seen_t *s, const char *user, const char *name)
{
    struct seen_user *u;
    HASH_FIND_STR(s->users, user, u);
    if (!u) {
        size_t len = strlen(user);
        u = calloc(1, sizeof *u + len + 1);
        if (!u)
            return; /* informational: a user not noted is not an error worth failing a handshake */
        memcpy(u->id, user, len + 1);
        HASH_ADD_STR(s->users, id, u);
        s->n++;
    }
    if (name && *name) {
        char *copy = strdup(name);
        if (copy) {
            free(u->name);
            u->name = copy;
        }
    }
    if (s->n >= SEEN_MAX)
        seen_flush(s);
}

static void seen_on_written(int err, PGresult *res, void *ud)
{
    size_t n = (size_t)(uintptr_t)ud;
    if (err)
        log_warn("users_seen_write_failed", "users=%zu err=%s sqlstate=%s", n, err_code(err),
                 res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "-");
}

static int seen_by_id(const struct seen_user *a, const struct seen_user *b)
{
    return strcmp(a->id, b->id);
}

void seen_flush(seen_t *s)
{
    if (!s->n)
        return;
    /* In id order: two gateways' batches lock shared rows in the same order,
     * so they cannot deadlock. */
    HASH_SORT(s->users, seen_by_id);
    struct jbuf ids, names;
    jbuf_init(&ids, 64 * s->n);
    jbuf_init(&names, 16 * s->n);
    struct seen_user *u, *tmp;
    HASH_ITER(hh, s->users, u, tmp) {
        db_array_add(&ids, u->id);
        db_array_add(&names, u->name);
        HASH_DEL(s->users, u);
        seen_user_free(u);
    }
    size_t n = s->n;
    s->n = 0;
    char *is = db_array_end(&ids), *ns = db_array_end(&names);
    const char *p[] = { is, ns };
    static struct pg_stmt st = {
        "INSERT INTO users (user_id, name) SELECT u, n FROM unnest($1::text[], $2::text[]) AS t(u, n) "
        "ON CONFLICT (user_id) DO UPDATE SET last_seen = now(), name = COALESCE(EXCLUDED.name, users.name)",
    };
    pg_query_stmt(s->pg, &st, 2, p, seen_on_written, (void *)(uintptr_t)n);
    free(is);
    free(ns);
}

size_t seen_pending(const seen_t *s) { return s->n; }

void seen_free(seen_t *s)
{
    if (!s)
        return;
    struct seen_user *u, *tmp;
    HASH_ITER(hh, s->users, u, tmp) {
        HASH_DEL(s->users, u);
        seen_user_free(u);
    }
    free(s);
}
