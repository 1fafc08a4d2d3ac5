/* readmarks: read marks batched into one statement. See readmarks.h. */
#include "store/readmarks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"
#include "store/db.h"

struct rm_item {
    struct rm_item *next;
    readmarks_cb cb;
    void *ud;
    int64_t seq;
    const char *user;             /* points into room's allocation */
    char room[];
};

struct readmarks {
    uv_loop_t *loop;
    pg_client_t *pg;
    uv_timer_t flush;             /* 0 ms: the loop's next turn */
    struct rm_item *head, *tail;  /* waiting */
    struct rm_item *sent;         /* the batch in flight, or NULL */
    int busy, closing, handle_open;
};

static void rm_on_flush(uv_timer_t *t);

static void rm_kick(readmarks_t *rm)
{
    if (!rm->busy && rm->head && !rm->closing && !uv_is_active((uv_handle_t *)&rm->flush))
        uv_timer_start(&rm->flush, rm_on_flush, 0, 0);
}

static void rm_free_if_done(readmarks_t *rm)
{
    if (rm->closing && !rm->busy && !rm->handle_open)
        free(rm);
}

/* Calls back and frees every item of list; res: the UPDATE's rows
 * (room, user_id, read_seq), one per (room, user) that is a membership. */
static void rm_answer(struct rm_item *list, int err, const PGresult *res)
{
    int rows = !err && res ? PQntuples(res) : 0;
    while (list) {
        struct rm_item *it = list;
        list = it->next;
        int member = 0;
        int64_t seq = 0;
        for (int i = 0; i < rows; i++)
            if (!strcmp(PQgetvalue(res, i, 0), it->room) && !strcmp(PQgetvalue(res, i, 1), it->user)) {
                member = 1;
                seq = strtoll(PQgetvalue(res, i, 2), NULL, 10);
                break;
            }
        it->cb(err, member, seq, it->ud);
        free(it);
    }
}

static void rm_on_done(int err, PGresult *res, void *ud)
{
    readmarks_t *rm = ud;
    struct rm_item *batch = rm->sent;
    rm->sent = NULL;
    rm->busy = 0;
    rm_kick(rm);
    rm_answer(batch, err, res);
    rm_free_if_done(rm);
}

static void rm_on_flush(uv_timer_t *t)
{
    readmarks_t *rm = t->data;
    if (rm->busy || !rm->head || rm->closing)
        return;
    struct jbuf jr, ju, js;
    jbuf_init(&jr, 1024);
    jbuf_init(&ju, 1024);
    jbuf_init(&js, 256);
    struct rm_item *last = NULL;
    size_t n = 0;
    for (struct rm_item *it = rm->head; it && n < READMARKS_BATCH_MAX; it = it->next, n++) {
        db_array_add(&jr, it->room);
        db_array_add(&ju, it->user);
        db_array_int(&js, it->seq);
        last = it;
    }
    rm->sent = rm->head;
    rm->head = last->next;
    if (!rm->head)
        rm->tail = NULL;
    last->next = NULL;
    rm->busy = 1;
    const char *p[3] = { db_array_end(&jr), db_array_end(&ju), db_array_end(&js) };
    /* Planned per call (not prepared): with the arrays known the planner
     * probes the primary key, where a generic plan made on an empty table
     * would join members by a sequential scan. Locked in (room, user_id)
     * order first; the cap as db_read's (LEAST ignores a NULL head). */
    pg_query(rm->pg,
             "WITH u AS (SELECT room, user_id, max(seq) AS seq FROM unnest($1::text[], $2::text[], "
             "$3::bigint[]) AS x(room, user_id, seq) GROUP BY room, user_id), "
             "l AS (SELECT m.room, m.user_id, u.seq FROM members m JOIN u ON m.room = u.room "
             "AND m.user_id = u.user_id ORDER BY m.room, m.user_id FOR UPDATE OF m) "
             "UPDATE members m SET read_seq = LEAST(GREATEST(m.read_seq, l.seq), "
             "(SELECT head FROM rooms r WHERE r.room = l.room)) "
             "FROM l WHERE m.room = l.room AND m.user_id = l.user_id "
             "RETURNING m.room, m.user_id, m.read_seq",
             3, p, rm_on_done, rm);
    for (int k = 0; k < 3; k++)
        free((char *)p[k]);
}

int readmarks_init(readmarks_t **out, uv_loop_t *loop, pg_client_t *pg)
{
    readmarks_t *rm = calloc(1, sizeof *rm);
    if (!rm)
        return ERR_NOMEM;
    rm->loop = loop;
    rm->pg = pg;
    uv_timer_init(loop, &rm->flush);
    rm->flush.data = rm;
    rm->handle_open = 1;
    *out = rm;
    return 0;
}

void readmarks_add(readmarks_t *rm, const char *room, const char *user, int64_t seq,
                   readmarks_cb cb, void *user_data)
{
    size_t rl = strlen(room), ul = strlen(user);
    struct rm_item *it = malloc(sizeof *it + rl + ul + 2);
    CHATD_ASSERT(it != NULL);
    memcpy(it->room, room, rl + 1);
    memcpy(it->room + rl + 1, user, ul + 1);
    it->user = it->room + rl + 1;
    it->seq = seq;
    it->cb = cb;
    it->ud = user_data;
    it->next = NULL;
    if (rm->tail)
        rm->tail->next = it;
    else
        rm->head = it;
    rm->tail = it;
    rm_kick(rm); /* while closing: answered by rm_on_closed */
}

static void rm_on_closed(uv_handle_t *h)
{
    readmarks_t *rm = h->data;
    struct rm_item *waiting = rm->head;
    rm->head = rm->tail = NULL;
    rm->handle_open = 0;
    rm_answer(waiting, ERR_CANCELLED, NULL);
    rm_free_if_done(rm);
}

void readmarks_close(readmarks_t *rm)
{
    if (!rm)
        return;
    CHATD_ASSERT(!rm->closing);
    rm->closing = 1;
    uv_close((uv_handle_t *)&rm->flush, rm_on_closed);
}
