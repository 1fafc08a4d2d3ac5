/* bench_storage: inserts messages into PostgreSQL with chatd's own
 * statements, the way a classifier does per batch (db_known_ids, then
 * db_store_msgs, each waited for), reads history pages (db_history) and
 * one user's rooms list (db_rooms, and the max(seq) statement it replaced)
 * and messages by id (db_msg_find, and the every-month lookup it replaced:
 * ids of the first and of the last month, and ids stored nowhere).
 *
 *   bench_storage CONNINFO [rows=200000] [batch=1000] [rooms=2000] [days=90]
 *                 [resend_window_days=0]
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

/* Pages of messages (its partitions, their indexes) read so far, hit or
 * not, as reported by the backends (pg_statio_user_tables). */
static long statio_blocks(PGconn *c)
{
    usleep(200000); /* the report of the last lookup's backend: its next idle moment */
    exec_or_die(c, "SELECT pg_stat_clear_snapshot()");
    return scalar(c, "SELECT sum(COALESCE(heap_blks_hit, 0) + COALESCE(heap_blks_read, 0) + "
                     "COALESCE(idx_blks_hit, 0) + COALESCE(idx_blks_read, 0)) FROM pg_statio_user_tables "
                     "WHERE relname = 'messages' OR relname LIKE 'messages\\_%'");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_storage CONNINFO [rows] [batch] [rooms] [days] "
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
    if (rows < 1 || batch < 1 || batch > 5000 || n_rooms < 1 || days < 0)
        return 2;
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
    /* A deployment running for `days` has those months made (partitioned
     * schema only): the rows land in their month, not the default partition. */
    if (scalar(sync, "SELECT count(*) FROM pg_proc WHERE proname = 'chatd_messages_partition'") == 1) {
        char sql[256];
        snprintf(sql, sizeof sql, "SELECT count(chatd_messages_partition(t)) FROM "
                 "generate_series(%" PRId64 "::bigint, %" PRId64 "::bigint, 86400000) t", t_start, t_end);
        exec_or_die(sync, sql);
    }
    struct db_fence f = { .topic = "bench", .parts = "{0}", .epochs = "{1}" };
    struct jbuf jr, ji, jt, jc;
    long done = 0, seg_rows = 0;
    int seg = 0;
    double t0 = now_s(), seg_t0 = t0, store_s = 0, lookup_s = 0;
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
        if (done * 5 / rows > seg || done == rows) {
            double t = now_s();
            printf("rows %9ld..%9ld: %8.0f rows/s (lookup + store)\n", done - seg_rows, done,
                   (double)seg_rows / (t - seg_t0));
            fflush(stdout);
            seg = (int)(done * 5 / rows);
            seg_rows = 0;
            seg_t0 = t;
        }
    }
    double total = now_s() - t0;
    printf("inserted %ld rows in %.1f s: %.0f rows/s; store statement %.0f rows/s, "
           "known-id lookup %.2f ms per batch of %d\n", rows, total, (double)rows / total,
           (double)rows / store_s, lookup_s * 1000 / ((double)rows / batch), batch);
    exec_or_die(sync, "CHECKPOINT");
    long bytes = scalar(sync, "SELECT COALESCE(sum(pg_total_relation_size(relid)), "
                              "pg_total_relation_size('messages')) FROM pg_partition_tree('messages')");
    printf("messages with indexes: %ld bytes, %.0f bytes per row\n", bytes, (double)bytes / (double)rows);
    /* history: the first page of 100 of 500 rooms, quiet ones included */
    int pages = n_rooms < 500 ? n_rooms : 500;
    double h0 = now_s();
    long got = 0;
    for (int i = 0; i < pages; i++) {
        struct wait w = {0};
        db_history(pg, room_names[(int)(next_rand() % (uint64_t)n_rooms)], 0, 100, on_res, &w);
        run_until(&loop, &w.done);
        got += w.rows;
    }
    printf("history: %d pages (%ld rows) in %.1f ms: %.2f ms per page (warm cache)\n", pages, got,
           (now_s() - h0) * 1000, (now_s() - h0) * 1000 / pages);
    /* rooms: one user in every room (the heavy user), its list
     * read as the gateway reads it (db_rooms: the heads from rooms.head),
     * then the same list by the statement it replaced (migration 003: a
     * max(seq) of messages per membership) for comparison */
    exec_or_die(sync, "INSERT INTO members (room, user_id) SELECT room, 'bench-reader' FROM rooms");
    long member_of = scalar(sync, "SELECT count(*) FROM members WHERE user_id = 'bench-reader'");
    static const char *const reader[] = { "bench-reader" };
    for (int k = 0; k < 2; k++) {
        double r0 = now_s();
        long rrows = 0;
        for (int i = 0; i < 20; i++) {
            struct wait w = {0};
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
            rrows += w.rows;
        }
        double ms = (now_s() - r0) * 1000 / 20;
        printf("rooms (%s): a user in %ld rooms, %.2f ms per call (warm cache, 20 calls)\n",
               k == 0 ? "db_rooms" : "max(seq) per membership, before 003", rrows / 20, ms);
    }
    /* by id: the newest month's ids, the oldest's, and ids stored
     * nowhere (random), each BYID_N times through db_msg_find (this
     * tree's), then through the statement that probed every month
     * (db_msg_find before migration 012), all warm (run once before) */
    long months = scalar(sync, "SELECT count(*) FROM pg_partition_tree('messages') WHERE isleaf");
    if (rows >= 2 * BYID_N) {
        static const char *const what[] = { "newest month", "oldest month", "stored nowhere" };
        for (int k = 0; k < 2; k++) {
            for (int side = 0; side < 3; side++) {
                double best = 1e9;
                long pages = -1;
                for (int rep = 0; rep < 2; rep++) {
                    long b0 = statio_blocks(sync);
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
                    double ms = (now_s() - t0b) * 1000 / BYID_N;
                    best = ms < best ? ms : best;
                    /* the pages read (the cache's or the disk's), as
                     * reported by the lookups' backend once flushed */
                    struct wait w = {0};
                    pg_query(pg, "SELECT pg_stat_force_next_flush()", 0, NULL, on_res, &w);
                    run_until(&loop, &w.done);
                    if (rep == 1)
                        pages = statio_blocks(sync) - b0;
                }
                printf("by id (%s), %s: %.3f ms per lookup, %.1f pages of messages per lookup "
                       "(%ld partitions, warm, best of 2 x %d)\n",
                       k == 0 ? "db_msg_find" : "every month, before 012", what[side], best,
                       pages < 0 ? -1.0 : (double)pages / BYID_N, months, BYID_N);
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
