/* readmarks: the `read` op's marks, batched into one statement (issue 24).
 *
 * A mark was one UPDATE each (one transaction and 3.6 KB of WAL per mark at
 * 4,000/s). Marks given while a batch is in flight wait for it and then go
 * together, at most READMARKS_BATCH_MAX in one UPDATE of members joined to
 * the arrays of marks; a mark given with nothing in flight goes on the
 * loop's next turn, so a quiet gateway answers as fast as before and a busy
 * one sends one statement per round trip. Rows are locked in (room, user)
 * order, so two gateways' batches cannot deadlock. Each mark is what
 * db_read did: raised, never lowered, capped at the room's head; several
 * marks of one (room, user) in a batch count as their highest.
 *
 * Every mark gets exactly one callback, from the loop, never from inside
 * readmarks_add: err (ERR_UNAVAILABLE, ERR_TIMEOUT, ERR_CANCELLED at close,
 * as from store/pg.h), or member 0 (not a member: nothing written), or the
 * mark now stored.
 */
#ifndef CHATD_READMARKS_H
#define CHATD_READMARKS_H

#include <stdint.h>
#include <uv.h>

#include "store/pg.h"

#define READMARKS_BATCH_MAX 500

typedef struct readmarks readmarks_t;
typedef void (*readmarks_cb)(int err, int member, int64_t read_seq, void *user);

/* pg stays owned by the caller and must outlive readmarks_close. */
int readmarks_init(readmarks_t **out, uv_loop_t *loop, pg_client_t *pg);
/* room and user are copied. */
void readmarks_add(readmarks_t *rm, const char *room, const char *user, int64_t seq,
                   readmarks_cb cb, void *user_data);
/* Marks not sent yet are answered ERR_CANCELLED; the batch in flight is
 * answered with what pg answers (ERR_CANCELLED once pg is closed). rm frees
 * itself once both are done: call before pg_client_close, and add nothing
 * after it. */
void readmarks_close(readmarks_t *rm);

#endif
