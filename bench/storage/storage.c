/* bench_storage: inserts messages into PostgreSQL with chatd's own
 * statements, the way a classifier does per batch (db_known_ids, then
 * db_store_msgs, each waited for), reads history pages (db_history) and
 * one user's rooms list (db_rooms, and the max(seq) statement it replaced)
 * and messages by id (db_msg_find, and the every-month lookup it replaced:
 * ids of the first and of the last month, and ids stored nowhere).
 *
 *   bench_storage [--load-sql N | --from N] CONNINFO [rows=200000] [batch=1000]
 *                 [rooms=2000] [days=90] [resend_window_days=0]
 *
 * With --load-sql N, the first N rows of the run are written by SQL
 * (INSERT ... SELECT over generate_series, in time order, rows shaped as
 * below, rooms.head kept right) and the program stops: a history of tens of
 * millions of rows in minutes, where chatd's statements take half an hour
 * per 10 million. --from N then inserts rows N.. with chatd's statements
 * and reads, on a database --load-sql made (run.sh: STORAGE_PRELOAD, with
 * PostgreSQL restarted between the two under a memory cap:
 * STORAGE_CACHE_DIV).
 * The reads then report a first read and a second one (cold and warm when
 * the cache is capped), blocks read from outside shared buffers and the
 * bytes the inserting backend read from disk (/proc/PID/io).
 *
 * The database is migrated first (pg_migrate: this tree's schema). Rooms
 * are drawn with a skew (a few busy, many quiet), ids are random 32-hex
 * (a gateway's derived ids look the same), ts rises from `days` ago to now
 * across the run (so a partitioned
 * messages fills several months in order). Prints rows/s per fifth of the
 * run, the table's size with its indexes, and the history page times.
 * Compiled against a tree's own store/ objects, so the same source measures
 * the schema and statements before and after a change
 * (bench/storage/run.sh). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <uv.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/log.h"
#include "store/db.h"
#include "store/migrate.h"
#include "store/pg.h"

struct wait {
    int done, err;
    long rows;
};

static void on_res(int err, PGresult *res, void *ud)
{
    struct wait *w = ud;
    w->err = err;
    w->rows = res ? PQntuples(res) : 0;
    if (err && res)
        fprintf(stderr, "bench_storage: %s", PQresultErrorMessage(res));
    w->done = 1;
}

static void run_until(uv_loop_t *loop, const int *flag)
{
    while (!*flag)
        uv_run(loop, UV_RUN_ONCE);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void exec_or_die(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "bench_storage: %s: %s", sql, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
}

static long scalar(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? atol(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

/* Pages of messages (its partitions, their indexes) read so far, as
 * reported by the backends (pg_statio_user_tables): hit in shared buffers,
 * and read (from the OS cache or the disk). */
struct statio {
    long hit, read;
};

static struct statio statio_get(PGconn *c, int all_tables)
{
    usleep(200000); /* the report of the last lookup's backend: its next idle moment */
    exec_or_die(c, "SELECT pg_stat_clear_snapshot()");
    struct statio s = { -1, -1 };
    PGresult *r = PQexec(c, all_tables ? "SELECT sum(COALESCE(heap_blks_hit, 0) + COALESCE(idx_blks_hit, 0)), "
                                         "sum(COALESCE(heap_blks_read, 0) + COALESCE(idx_blks_read, 0)) "
                                         "FROM pg_statio_user_tables"
                                       : "SELECT sum(COALESCE(heap_blks_hit, 0) + COALESCE(idx_blks_hit, 0)), "
                                         "sum(COALESCE(heap_blks_read, 0) + COALESCE(idx_blks_read, 0)) "
                                         "FROM pg_statio_user_tables "
                                         "WHERE relname = 'messages' OR relname LIKE 'messages\\_%'");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        s.hit = atol(PQgetvalue(r, 0, 0));
        s.read = atol(PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    return s;
}

/* Bytes a process has read from the disk (not the page cache), or -1
 * (not root, not Linux). */
static long proc_read_bytes(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/io", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[128];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "read_bytes: %ld", &v) == 1)
            break;
    fclose(f);
    return v;
}

struct one {
    int done, err;
    long v;
};

static void on_one(int err, PGresult *res, void *ud)
{
    struct one *o = ud;
    o->err = err;
    o->v = res && PQntuples(res) == 1 ? atol(PQgetvalue(res, 0, 0)) : -1;
    o->done = 1;
}

/* Asks the async client's backend to report its statistics when it next
 * goes idle (statio_get waits for that). */
static void stats_flush(uv_loop_t *loop, pg_client_t *pg)
{
    struct wait w = {0};
    pg_query(pg, "SELECT pg_stat_force_next_flush()", 0, NULL, on_res, &w);
    run_until(loop, &w.done);
}

/* messages' size: with its indexes, and of the indexes alone. */
static void print_size(PGconn *c, long rows)
{
    long bytes = scalar(c, "SELECT COALESCE(sum(pg_total_relation_size(relid)), "
                           "pg_total_relation_size('messages')) FROM pg_partition_tree('messages')");
    long index_bytes = scalar(c, "SELECT COALESCE(sum(pg_indexes_size(relid)), "
                                 "pg_indexes_size('messages')) FROM pg_partition_tree('messages')");
    printf("messages with indexes: %ld bytes, %.0f bytes per row\n", bytes, (double)bytes / (double)rows);
    printf("index_bytes=%ld (%.0f per row)\n", index_bytes, (double)index_bytes / (double)rows);
}

enum { LOAD_CHUNK = 1000000 };

/* Rows [0, n) of a run of `rows` by SQL: the same rooms' skew, 32-hex
 * random ids (md5 of a random number), cids and ts as the insert loop
 * makes them, in time order, a statement per LOAD_CHUNK rows; each room's
 * seqs follow its head, and the head is raised in the same statement (the
 * trigger of 007 raises it again, to the same value). The first 200 rows'
 * (room, id) are kept in bench_oldest for the lookups by id. */
static void load_sql(PGconn *c, long n, long rows, int n_rooms, int64_t t_start, int64_t t_end,
                     const char *text)
{
    exec_or_die(c, "SET work_mem = '256MB'");
    exec_or_die(c, "SELECT setseed(0.24)");
    double t0 = now_s();
    for (long lo = 0; lo < n; lo += LOAD_CHUNK) {
        long hi = lo + LOAD_CHUNK < n ? lo + LOAD_CHUNK : n;
        char sql[2048];
        snprintf(sql, sizeof sql,
                 "WITH g AS (SELECT i, floor(u * u * %d)::int AS r FROM "
                 "(SELECT i, random() AS u FROM generate_series(%ld::bigint, %ld::bigint) i) x), "
                 "n AS (SELECT i, 'bench-room-' || r AS room, row_number() OVER (PARTITION BY r ORDER BY i) AS k FROM g), "
                 "ins AS (INSERT INTO messages (room, seq, id, user_id, cid, body, ts) "
                 "SELECT n.room, COALESCE(h.head, 0) + n.k, md5(random()::text || n.i::text), 'bench-user', "
                 "'c' || n.i, '%s', %" PRId64 " + (%" PRId64 " - %" PRId64 ") * n.i / %ld "
                 "FROM n LEFT JOIN rooms h ON h.room = n.room ORDER BY n.i RETURNING room, seq) "
                 "INSERT INTO rooms (room, head) SELECT room, max(seq) FROM ins GROUP BY room ORDER BY room "
                 "ON CONFLICT (room) DO UPDATE SET head = GREATEST(rooms.head, EXCLUDED.head)",
                 n_rooms, lo, hi - 1, text, t_start, t_end, t_start, rows);
        exec_or_die(c, sql);
        if (lo == 0)
            exec_or_die(c, "CREATE TABLE bench_oldest AS SELECT room, id FROM messages "
                           "WHERE cid = ANY (ARRAY(SELECT 'c' || g FROM generate_series(0, 199) g))");
        printf("load: %9ld rows in %.0f s (%.0f rows/s)\n", hi, now_s() - t0, (double)hi / (now_s() - t0));
        fflush(stdout);
    }
    double v0 = now_s();
    exec_or_die(c, "VACUUM (ANALYZE)");
    exec_or_die(c, "CHECKPOINT");
    printf("load: vacuum, analyze and checkpoint %.0f s\n", now_s() - v0);
    print_size(c, n);
}

int main(int argc, char **argv)
{
    long load_rows = 0, from = 0;
    while (argc > 2 && (strcmp(argv[1], "--load-sql") == 0 || strcmp(argv[1], "--from") == 0)) {
        *(argv[1][2] == 'l' ? &load_rows : &from) = atol(argv[2]);
        argc -= 2;
        argv += 2;
    }
    if (argc < 2) {
        fprintf(stderr, "usage: bench_storage [--load-sql N | --from N] CONNINFO [rows] [batch] [rooms] [days] "
                        "[resend_window_days: 0 = every month, chatd's default]\n");
        return 2;
    }
    const char *conninfo = argv[1];
    long rows = argc > 2 ? atol(argv[2]) : 200000;
    int batch = argc > 3 ? atoi(argv[3]) : 1000;
    int n_rooms = argc > 4 ? atoi(argv[4]) : 2000;
    int days = argc > 5 ? atoi(argv[5]) : 90;
    int64_t resend_window_ms = (argc > 6 ? atoll(argv[6]) : 0) * 86400000LL;
    (void)resend_window_ms; /* trees before --resend-window have no such argument */
    if (rows < 1 || batch < 1 || batch > 5000 || n_rooms < 1 || days < 0 || load_rows < 0 || from < 0 ||
        load_rows >= rows || from >= rows || (load_rows && from)) {
        fprintf(stderr, "bench_storage: bad arguments (--load-sql and --from: below rows, not both)\n");
        return 2;
    }
    log_init(LOG_LVL_WARN, "bench", 0);
    if (pg_migrate(conninfo, 10000) != 0)
        return 1;
    PGconn *sync = PQconnectdb(conninfo);
    if (PQstatus(sync) != CONNECTION_OK) {
        fprintf(stderr, "bench_storage: %s", PQerrorMessage(sync));
        return 1;
    }
    exec_or_die(sync, "INSERT INTO partition_owners (topic, partition, epoch, owner) "
                      "VALUES ('bench', 0, 1, 'bench') ON CONFLICT (topic, partition) DO UPDATE SET epoch = 1");
    printf("schema: migrations=%d messages_partitioned=%ld fsync=%s synchronous_commit=%s\n",
           migrations_count,
           scalar(sync, "SELECT count(*) FROM pg_class WHERE relname = 'messages' AND relkind = 'p'"),
           scalar(sync, "SELECT (current_setting('fsync') = 'on')::int") == 1 ? "on" : "off",
           scalar(sync, "SELECT (current_setting('synchronous_commit') = 'on')::int") == 1 ? "on" : "other");

    uv_loop_t loop;
    uv_loop_init(&loop);
    pg_client_t *pg = NULL;
    if (pg_client_init(&pg, &loop, conninfo, 60000) != 0)
        return 1;
    while (!pg_client_ready(pg))
        uv_run(&loop, UV_RUN_ONCE);

    char (*room_names)[24] = calloc((size_t)n_rooms, sizeof *room_names);
    int64_t *seqs = calloc((size_t)n_rooms, sizeof *seqs);
    struct chat_msg *m = calloc((size_t)batch, sizeof *m);
    const struct chat_msg **mp = calloc((size_t)batch, sizeof *mp);
    char (*ids)[MSG_ID_LEN + 1] = calloc((size_t)batch, sizeof *ids);
    char (*cids)[16] = calloc((size_t)batch, sizeof *cids);
    /* by id: the first and the last BYID_N rows (the oldest month, the
     * newest), as (room, id) */
    enum { BYID_N = 200 };
    int byid_room[2][BYID_N];
    char byid_id[2][BYID_N][MSG_ID_LEN + 1];
    if (!room_names || !seqs || !m || !mp || !ids || !cids)
        return 1;
    for (int r = 0; r < n_rooms; r++)
        snprintf(room_names[r], sizeof room_names[r], "bench-room-%d", r);
    static const char text[] = "a message of about sixty bytes, as chat messages often are..";
    int64_t t_end = (int64_t)time(NULL) * 1000, t_start = t_end - (int64_t)days * 86400 * 1000;
    if (from > 0) { /* the run --load-sql began: the same clock */
        t_end = scalar(sync, "SELECT t_end FROM bench_run");
        if (t_end < 0) {
            fprintf(stderr, "bench_storage: --from: no bench_run table (made by --load-sql)\n");
            return 1;
        }
        t_start = t_end - (int64_t)days * 86400 * 1000;
    }
    /* A deployment running for `days` has those months made (partitioned
     * schema only): the rows land in their month, not the default partition. */
    if (scalar(sync, "SELECT count(*) FROM pg_proc WHERE proname = 'chatd_messages_partition'") == 1) {
        char sql[256];
        snprintf(sql, sizeof sql, "SELECT count(chatd_messages_partition(t)) FROM "
                 "generate_series(%" PRId64 "::bigint, %" PRId64 "::bigint, 86400000) t", t_start, t_end);
        exec_or_die(sync, sql);
    }
    if (load_rows > 0) {
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE TABLE bench_run AS SELECT %" PRId64 "::bigint AS t_end", t_end);
        exec_or_die(sync, sql);
        load_sql(sync, load_rows, rows, n_rooms, t_start, t_end, text);
        PQfinish(sync);
        return 0;
    }
    if (from > 0) { /* the heads the load left, and its first rows for the lookups by id */
        PGresult *r = PQexec(sync, "SELECT substr(room, 12)::int, head FROM rooms WHERE room LIKE 'bench-room-%'");
        for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++) {
            int k = atoi(PQgetvalue(r, i, 0));
            if (k >= 0 && k < n_rooms)
                seqs[k] = atoll(PQgetvalue(r, i, 1));
        }
        PQclear(r);
        r = PQexec(sync, "SELECT substr(room, 12)::int, id FROM bench_oldest LIMIT 200");
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != BYID_N) {
            fprintf(stderr, "bench_storage: --from: bench_oldest missing or short\n");
            return 1;
        }
        for (int i = 0; i < BYID_N; i++) {
            byid_room[0][i] = atoi(PQgetvalue(r, i, 0));
            snprintf(byid_id[0][i], sizeof byid_id[0][i], "%s", PQgetvalue(r, i, 1));
        }
        PQclear(r);
    }
    /* the inserting backend's disk reads (run.sh runs as root) */
    struct one bp = {0};
    pg_query(pg, "SELECT pg_backend_pid()", 0, NULL, on_one, &bp);
    run_until(&loop, &bp.done);
    long rb0 = proc_read_bytes(bp.v), seg_rb = rb0;
    stats_flush(&loop, pg);
    struct statio io0 = statio_get(sync, 0), seg_io = io0;
    struct db_fence f = { .topic = "bench", .parts = "{0}", .epochs = "{1}" };
    struct jbuf jr, ji, jt, jc;
    long done = from, seg_rows = 0, todo = rows - from;
    int seg = 0;
    double t0 = now_s(), seg_t0 = t0, store_s = 0, lookup_s = 0, pause_s = 0;
    while (done < rows) {
        int n = (int)(rows - done < batch ? rows - done : batch);
        jbuf_init(&jr, 32 * (size_t)n);
        jbuf_init(&ji, 40 * (size_t)n);
        jbuf_init(&jt, 16 * (size_t)n);
        jbuf_init(&jc, 4 * (size_t)n);
        for (int i = 0; i < n; i++) {
            /* skew: the square of a uniform draw puts most messages in the
             * first rooms, and leaves the last ones quiet */
            double u = (double)(next_rand() % 1000000) / 1e6;
            int r = (int)(u * u * n_rooms);
            for (int k = 0; k < MSG_ID_LEN; k++)
                ids[i][k] = "0123456789abcdef"[next_rand() & 15];
            ids[i][MSG_ID_LEN] = 0;
            snprintf(cids[i], sizeof cids[i], "c%ld", done + i);
            m[i] = (struct chat_msg){ .room = room_names[r], .id = ids[i], .from = "bench-user",
                                      .cid = cids[i], .text = text, .text_len = sizeof text - 1,
                                      .ts = t_start + (t_end - t_start) * (done + i) / rows,
                                      .seq = ++seqs[r] };
            mp[i] = &m[i];
            long at = done + i;
            int side = at < BYID_N ? 0 : at >= rows - BYID_N ? 1 : -1;
            if (side >= 0) {
                int k = side == 0 ? (int)at : (int)(at - (rows - BYID_N));
                byid_room[side][k] = r;
                memcpy(byid_id[side][k], ids[i], MSG_ID_LEN + 1);
            }
            db_array_add(&jr, m[i].room);
            db_array_add(&ji, m[i].id);
            db_array_int(&jt, m[i].ts);
            db_array_add(&jc, "t");
        }
        char *ra = db_array_end(&jr), *ia = db_array_end(&ji);
        struct wait w = {0};
        double a = now_s();
        char *ta = db_array_end(&jt), *ca = db_array_end(&jc);
#if defined(DB_KNOWN_IDS_WINDOW)
        db_known_ids(pg, ra, ia, ta, ca, resend_window_ms, on_res, &w);
#elif defined(DB_KNOWN_IDS_TS)
        db_known_ids(pg, ra, ia, ta, ca, on_res, &w);
#else /* a tree before the ts went with it */
        db_known_ids(pg, ra, ia, on_res, &w);
#endif
        run_until(&loop, &w.done);
        free(ra);
        free(ia);
        free(ta);
        free(ca);
        double b = now_s();
        if (w.err || w.rows != 0) {
            fprintf(stderr, "bench_storage: known ids: err=%d rows=%ld\n", w.err, w.rows);
            return 1;
        }
        memset(&w, 0, sizeof w);
        db_store_msgs(pg, &f, mp, (size_t)n, on_res, &w);
        run_until(&loop, &w.done);
        double c = now_s();
        if (w.err) {
            fprintf(stderr, "bench_storage: store failed: %d\n", w.err);
            return 1;
        }
        lookup_s += b - a;
        store_s += c - b;
        done += n;
        seg_rows += n;
        if ((done - from) * 5 / todo > seg || done == rows) {
            double t = now_s();
            printf("rows %9ld..%9ld: %8.0f rows/s (lookup + store)", done - seg_rows, done,
                   (double)seg_rows / (t - seg_t0));
            if (from > 0) { /* outside the clock: statio_get waits 200 ms */
                long rb = proc_read_bytes(bp.v);
                stats_flush(&loop, pg);
                struct statio io = statio_get(sync, 0);
                printf(", per row: %.2f blocks read (%.2f hit), %.2f blocks from disk",
                       (double)(io.read - seg_io.read) / (double)seg_rows,
                       (double)(io.hit - seg_io.hit) / (double)seg_rows,
                       rb < 0 ? -1.0 : (double)(rb - seg_rb) / 8192 / (double)seg_rows);
                seg_rb = rb;
                seg_io = io;
            }
            printf("\n");
            fflush(stdout);
            seg = (int)((done - from) * 5 / todo);
            seg_rows = 0;
            pause_s += now_s() - t;
            seg_t0 = now_s();
        }
    }
    double total = now_s() - t0 - pause_s;
    printf("inserted %ld rows in %.1f s: %.0f rows/s; store statement %.0f rows/s, "
           "known-id lookup %.2f ms per batch of %d\n", todo, total, (double)todo / total,
           (double)todo / store_s, lookup_s * 1000 / ((double)todo / batch), batch);
    if (from > 0) {
        long rb = proc_read_bytes(bp.v);
        stats_flush(&loop, pg);
        struct statio io = statio_get(sync, 0);
        printf("inserts, per row: %.2f blocks of messages read from outside shared buffers, %.2f hit; "
               "%.2f blocks read from disk by the backend\n",
               (double)(io.read - io0.read) / (double)todo, (double)(io.hit - io0.hit) / (double)todo,
               rb < 0 ? -1.0 : (double)(rb - rb0) / 8192 / (double)todo);
    }
    exec_or_die(sync, "CHECKPOINT");
    print_size(sync, rows);
    /* history: the first page of 100 of 500 rooms, quiet ones included,
     * each read twice in a row (the first read is cold when the cache is
     * capped, the second warm) */
    int pages = n_rooms < 500 ? n_rooms : 500;
    double first_s = 0, again_s = 0;
    long got = 0;
    stats_flush(&loop, pg);
    struct statio h0 = statio_get(sync, 0);
    for (int i = 0; i < pages; i++) {
        const char *room = room_names[(int)(next_rand() % (uint64_t)n_rooms)];
        for (int k = 0; k < 2; k++) {
            struct wait w = {0};
            double a = now_s();
            db_history(pg, room, 0, 100, on_res, &w);
            run_until(&loop, &w.done);
            *(k == 0 ? &first_s : &again_s) += now_s() - a;
            got += k == 0 ? w.rows : 0;
        }
    }
    stats_flush(&loop, pg);
    struct statio h1 = statio_get(sync, 0);
    if (from == 0) /* the line bench/run.py reads (make bench) */
        printf("history: %d pages (%ld rows) in %.1f ms: %.2f ms per page (warm cache)\n", pages, got,
               first_s * 1000, first_s * 1000 / pages);
    printf("history: %d pages (%ld rows): %.2f ms per page first read, %.2f ms read again; "
           "%.1f blocks of messages per page, %.1f per first read from outside shared buffers\n",
           pages, got, first_s * 1000 / pages, again_s * 1000 / pages,
           (double)(h1.hit + h1.read - h0.hit - h0.read) / (2.0 * pages), (double)(h1.read - h0.read) / pages);
    /* rooms: one user in every room (the heavy user), its list
     * read as the gateway reads it (db_rooms: the heads from rooms.head),
     * then the same list by the statement it replaced (migration 003: a
     * max(seq) of messages per membership) for comparison; the first call
     * apart (cold when the cache is capped), fewer calls then (each
     * max(seq) call reads every room's end of messages' primary key) */
    exec_or_die(sync, "INSERT INTO members (room, user_id) SELECT room, 'bench-reader' FROM rooms");
    long member_of = scalar(sync, "SELECT count(*) FROM members WHERE user_id = 'bench-reader'");
    static const char *const reader[] = { "bench-reader" };
    for (int k = 0; k < 2; k++) {
        int calls = from == 0 ? 20 : k == 0 ? 5 : 2;
        double first_ms = 0, r0 = 0;
        struct statio s0 = {0}, s1 = {0};
        stats_flush(&loop, pg);
        s0 = statio_get(sync, 1);
        for (int i = 0; i < calls; i++) {
            struct wait w = {0};
            if (i == 1) {
                stats_flush(&loop, pg);
                s1 = statio_get(sync, 1);
            }
            if (i <= 1)
                r0 = now_s();
            if (k == 0)
                db_rooms(pg, "bench-reader", on_res, &w);
            else
                pg_query(pg,
                         "SELECT m.room, COALESCE((SELECT max(seq) FROM messages s "
                         "WHERE s.room = m.room), 0), m.read_seq FROM members m "
                         "WHERE m.user_id = $1 ORDER BY m.room",
                         1, reader, on_res, &w);
            run_until(&loop, &w.done);
            if (w.err || w.rows != member_of) {
                fprintf(stderr, "bench_storage: rooms: err=%d rows=%ld\n", w.err, w.rows);
                return 1;
            }
            if (i == 0)
                first_ms = (now_s() - r0) * 1000;
        }
        double ms = (now_s() - r0) * 1000 / (calls - 1);
        if (from == 0) /* the line bench/run.py reads */
            printf("rooms (%s): a user in %ld rooms, %.2f ms per call (warm cache, %d calls)\n",
                   k == 0 ? "db_rooms" : "max(seq) per membership, before 003", member_of,
                   (first_ms + ms * (calls - 1)) / calls, calls);
        printf("rooms (%s): a user in %ld rooms, first call %.2f ms (%ld blocks, %ld read from outside "
               "shared buffers), then %.2f ms per call (%d calls)\n",
               k == 0 ? "db_rooms" : "max(seq) per membership, before 003", member_of, first_ms,
               s1.hit + s1.read - s0.hit - s0.read, s1.read - s0.read, ms, calls - 1);
    }
    /* by id: the newest month's ids, the oldest's, and ids stored
     * nowhere (random), each BYID_N times through db_msg_find (this
     * tree's), then through the statement that probed every month
     * (db_msg_find before migration 012), twice (the second warm) */
    long months = scalar(sync, "SELECT count(*) FROM pg_partition_tree('messages') WHERE isleaf");
    if (rows - from >= BYID_N && (from > 0 || rows >= 2 * BYID_N)) {
        static const char *const what[] = { "newest month", "oldest month", "stored nowhere" };
        for (int k = 0; k < 2; k++) {
            for (int side = 0; side < 3; side++) {
                double ms[2];
                struct statio io[2];
                for (int rep = 0; rep < 2; rep++) {
                    stats_flush(&loop, pg);
                    struct statio b0 = statio_get(sync, 0);
                    double t0b = now_s();
                    for (int i = 0; i < BYID_N; i++) {
                        char miss[MSG_ID_LEN + 1];
                        const char *id = side < 2 ? byid_id[1 - side][i] : miss;
                        const char *room = room_names[side < 2 ? byid_room[1 - side][i] : i % n_rooms];
                        if (side == 2) {
                            for (int j = 0; j < MSG_ID_LEN; j++)
                                miss[j] = "0123456789abcdef"[next_rand() & 15];
                            miss[MSG_ID_LEN] = 0;
                        }
                        struct wait w = {0};
                        const char *p[] = { room, id };
                        if (k == 0)
                            db_msg_find(pg, room, id, on_res, &w);
                        else
                            pg_query(pg, "SELECT seq, user_id, ts FROM messages WHERE room = $1 AND id = $2",
                                     2, p, on_res, &w);
                        run_until(&loop, &w.done);
                        if (w.err || w.rows != (side < 2)) {
                            fprintf(stderr, "bench_storage: by id: err=%d rows=%ld\n", w.err, w.rows);
                            return 1;
                        }
                    }
                    ms[rep] = (now_s() - t0b) * 1000 / BYID_N;
                    /* the pages read (the cache's or the disk's), as
                     * reported by the lookups' backend once flushed */
                    stats_flush(&loop, pg);
                    struct statio b1 = statio_get(sync, 0);
                    io[rep] = (struct statio){ b1.hit - b0.hit, b1.read - b0.read };
                }
                if (from == 0) /* the line bench/run.py reads */
                    printf("by id (%s), %s: %.3f ms per lookup, %.1f pages of messages per lookup "
                           "(%ld partitions, warm, best of 2 x %d)\n",
                           k == 0 ? "db_msg_find" : "every month, before 012", what[side],
                           ms[0] < ms[1] ? ms[0] : ms[1], (double)(io[1].hit + io[1].read) / BYID_N, months, BYID_N);
                printf("by id (%s), %s: %.3f ms per lookup, %.1f pages of messages (%.1f read from outside "
                       "shared buffers); again %.3f ms, %.1f pages (%.1f read) (%ld partitions, %d lookups)\n",
                       k == 0 ? "db_msg_find" : "every month, before 012", what[side], ms[0],
                       (double)(io[0].hit + io[0].read) / BYID_N, (double)io[0].read / BYID_N, ms[1],
                       (double)(io[1].hit + io[1].read) / BYID_N, (double)io[1].read / BYID_N, months, BYID_N);
            }
        }
    }
    pg_client_close(pg);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    PQfinish(sync);
    free(room_names);
    free(seqs);
    free(m);
    free(mp);
    free(ids);
    free(cids);
    return 0;
}
