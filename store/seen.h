/* seen: the users table's name and last_seen, written in batches.
 *
 * A gateway used to upsert each connecting user in a statement of its own,
 * ahead of the user's rooms on its one PostgreSQL connection. With fsync on,
 * each upsert is a commit that flushes the WAL, so handshakes waited in line
 * for flushes: 1,557 handshakes/s and 4,000 joins in 3 to 5 s in the full
 * `make bench` of 57c4904 (docs/PERFORMANCE.md), worse on network storage.
 * Nothing in chatd reads the row back, so the write is deferred: the users
 * noted since the last flush go out as one statement (one commit). A batch
 * that fails is logged and dropped: only the informational last_seen and
 * name are lost, never a membership or a message.
 *
 * Memory is bounded: at SEEN_MAX pending users a note flushes at once.
 */
#ifndef CHATD_SEEN_H
#define CHATD_SEEN_H

#include <stddef.h>

#include "store/pg.h"

#define SEEN_MAX 4096

typedef struct seen seen_t;

/* NULL when out of memory. pg must outlive the seen_t. */
seen_t *seen_new(pg_client_t *pg);
/* Records that user connected now, with its display name (NULL or "": keep
 * the stored one). A user noted twice before a flush is written once, with
 * the last non-empty name. */
void seen_note(seen_t *s, const char *user, const char *name);
/* Sends what is pending as one upsert; nothing when nothing is. */
void seen_flush(seen_t *s);
size_t seen_pending(const seen_t *s);
/* Drops what is pending (flush first to keep it). */
void seen_free(seen_t *s);

#endif
