/* migrate: ordered, idempotent SQL migrations applied at start.
 *
 * The files store/migrations/NNN_name.sql are compiled into the binary
 * (scripts/embed-migrations.sh). pg_migrate() runs before the loop starts,
 * on its own blocking connection: it takes a PostgreSQL advisory lock so
 * processes starting together apply each migration once, creates
 * schema_migrations if needed, and applies every migration whose version is
 * not recorded, each in its own transaction with its row in
 * schema_migrations. Retries the connection for up to wait_ms.
 */
#ifndef CHATD_MIGRATE_H
#define CHATD_MIGRATE_H

struct migration {
    int version;
    const char *name;
    const char *sql;
};

extern const struct migration migrations[];
extern const int migrations_count;

/* Returns 0 or ERR_UNAVAILABLE (cannot connect) / ERR_INTERNAL (a migration failed). */
int pg_migrate(const char *conninfo, int wait_ms);

#endif
