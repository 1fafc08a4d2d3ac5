/* db: chatd's queries on PostgreSQL (schema in store/migrations/).
 *
 * Thin and explicit: each function is one SQL statement sent through the
 * async client (store/pg.h), with the same one-callback contract. Rows are
 * read by the caller from the PGresult with the column order documented
 * here. Strings must be NUL-terminated and already validated.
 */
#ifndef CHATD_DB_H
#define CHATD_DB_H

#include <stddef.h>
#include <stdint.h>

#include "kafka/record.h"
#include "lib/jbuf.h"
#include "store/pg.h"

/* The user's rooms: (room). (Its users row is written by store/seen.h.) */
void db_user_rooms(pg_client_t *pg, const char *user, pg_result_cb cb, void *ud);
/* Adds user to room unless the user is already in max_rooms rooms (a new
 * room is then not created either), and, when peer is not NULL (a
 * direct-message room), the peer's membership in the same statement iff the
 * user's is new and the peer is under the cap too: a committed join of a DM
 * has its peer. One row: (user's membership created 0|1, peer's created
 * 0|1, under the cap, already a member); read the user's with
 * db_join_result. */
void db_join(pg_client_t *pg, const char *room, const char *user, const char *peer, int max_rooms,
             pg_result_cb cb, void *ud);
enum {
    DB_JOIN_FULL = 0, DB_JOIN_INSERTED = 1, DB_JOIN_MEMBER = 2, /* already was */
    DB_JOIN_CLOSED = 3, /* a private or archived room, and not a member */
};
int db_join_result(const PGresult *res);
/* Deletes the membership; one row iff it existed. */
void db_leave(pg_client_t *pg, const char *room, const char *user, pg_result_cb cb, void *ud);
/* One row iff user is a member of room. */
void db_is_member(pg_client_t *pg, const char *room, const char *user, pg_result_cb cb, void *ud);
/* Messages (and edits and deletes) with seq > after, ascending, at most
 * limit rows: (seq, id, user_id, cid, body, ts, kind, target, edited,
 * deleted). */
void db_history(pg_client_t *pg, const char *room, int64_t after, int limit, pg_result_cb cb,
                void *ud);
/* The user's rooms: (room, head, read_seq), by room. */
void db_rooms(pg_client_t *pg, const char *user, pg_result_cb cb, void *ud);
/* Raises the read mark (never lowers it), capped at the room's last stored
 * seq; one row (read_seq) iff member. */
void db_read(pg_client_t *pg, const char *room, const char *user, int64_t seq, pg_result_cb cb,
             void *ud);
/* One row: the room's head (its last stored seq, rooms.head), or 0. */
void db_max_seq(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud);
/* For a classifier batch: rooms is a PostgreSQL array literal of room ids,
 * ids one of message ids, pairwise (room[i], id[i]).
 * db_rooms_max answers (room, floor): the greater of the head and max(seq);
 * db_known_ids answers (room, id, seq) for the pairs already stored, given
 * each record's ts (tss, an array of ints) and whether its id can be
 * resent (resends, booleans: it has a cid). A record's own copy is found
 * at its ts (a re-consumed record carries it); a resent cid's original in
 * every month when window_ms is 0 (the default, --resend-window), else only
 * if it was received at most window_ms before the resend, or
 * DB_RESEND_AFTER_MS after it (gateways' clocks apart): older ones are not
 * looked for (docs/ARCHITECTURE.md, "Retention", the keys). */
#define DB_RESEND_AFTER_MS 86400000 /* 1 day */
#define DB_KNOWN_IDS_WINDOW 1 /* db_known_ids takes tss, resends, window_ms (bench/storage) */
void db_rooms_max(pg_client_t *pg, const char *rooms, pg_result_cb cb, void *ud);
void db_known_ids(pg_client_t *pg, const char *rooms, const char *ids, const char *tss,
                  const char *resends, int64_t window_ms, pg_result_cb cb, void *ud);
/* Takes the next fencing epoch of each partition (an array literal of ints)
 * of topic for owner: rows (partition, epoch, next_offset), next_offset
 * the previous owners' stored-and-produced offset, empty (NULL) when never
 * written. See migrations/002 and 009. */
void db_fence_take(pg_client_t *pg, const char *topic, const char *owner, const char *parts,
                   pg_result_cb cb, void *ud);
/* --ownership=lease (migrations/010, roles/ownership.h). db_lease_beat
 * renews member's lease of topic for lease_ms of the server's clock with
 * the partitions it holds (held, an array literal of ints) and whether it
 * drains, drops rows expired a minute ago, and answers the others' live
 * rows and every partition's offset in one result: rows (member, held,
 * draining 't'|'f', NULL, NULL) then (NULL, NULL, NULL, partition,
 * next_offset or NULL). db_lease_leave deletes member's row. */
void db_lease_beat(pg_client_t *pg, const char *topic, const char *member, const char *held,
                   int draining, int lease_ms, pg_result_cb cb, void *ud);
void db_lease_leave(pg_client_t *pg, const char *topic, const char *member, pg_result_cb cb,
                    void *ud);
/* Writes next_offset of each partition of f (parts, epochs, offsets) whose
 * epoch still holds; rows (partition) written. For the offsets no store
 * carried: the last batches before traffic stops (classifier's flush). */
struct db_fence;
void db_offsets_save(pg_client_t *pg, const struct db_fence *f, pg_result_cb cb, void *ud);
/* A batch's fences: the partitions its messages come from and the epochs
 * this classifier holds for them (array literals, pairwise). offsets,
 * pairwise too: each partition's next offset done (stored and produced) by
 * earlier batches, written to partition_owners.next_offset when the fences
 * hold; an element <= 0 writes nothing. NULL: "{}". */
struct db_fence {
    const char *topic;
    const char *parts;
    const char *epochs;
    const char *offsets;
};
/* Stores sequenced messages (room NUL-terminated) in one statement, only
 * if every fence still holds (else nothing). A row whose (room, seq) holds
 * its id already is skipped (a re-consumed record); a (room, seq) held by
 * another id, or twice in the batch, stores nothing and answers taken = t
 * (a seq collision). A seq above the room's head (rooms.head, raised by a
 * trigger on every insert: migrations/007) is free without a lookup. One row: (held, inserted, partitions not held as an
 * array, taken). An edit or delete (chat_msg.kind) is stored as a row of
 * its own (kind, target; migrations/005), and applied by db_apply_changes
 * once stored. */
void db_store_msgs(pg_client_t *pg, const struct db_fence *f, const struct chat_msg *const *msgs,
                   size_t n, pg_result_cb cb, void *ud);
/* Partition upkeep of messages (migrations/006): creates the current
 * month's partition and ahead_months after it, and with retention_s > 0
 * drops every partition whose month ended more than retention_s ago. One
 * row: (partitions created, or -1 when another caller holds the advisory
 * lock; names dropped, comma-separated). */
void db_messages_maintain(pg_client_t *pg, int ahead_months, int64_t retention_s, pg_result_cb cb,
                          void *ud);

/* Applies the stored edits and deletes (room[i], id[i]; mods: a boolean
 * array, the server API's) to their targets, iff a target is a message of
 * the room, by the change's user or with mod: an edit sets its text unless
 * a later edit did (edited = its seq), a delete erases the text and that of
 * every edit of it (deleted); an edit of a deleted message keeps no text.
 * Idempotent, so run after db_store_msgs, retried with its batch. One row:
 * (changes found applicable). */
void db_apply_changes(pg_client_t *pg, const char *rooms, const char *ids, const char *mods,
                      pg_result_cb cb, void *ud);

/* ---- the server API (roles/api.h); rooms' columns: migrations/003 ---- */
/* Creates or updates a room (private, name, owner; NULL name/owner keep the
 * old ones; retention_s: -1 keeps the room's, 0 none of its own, else
 * seconds: migrations/008) and un-archives it; the owner becomes a member.
 * private_ < 0 (absent) keeps the room's (false for a new room).
 * One row: (created, room, private, name, owner, archived, owner's
 * membership new, retention_s or NULL). */
void db_room_put(pg_client_t *pg, const char *room, int private_, const char *name,
                 const char *owner, int64_t retention_s, pg_result_cb cb, void *ud);
/* The same columns (created false, 7th: member count); no row: no room. */
void db_room_get(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud);
/* One bounded step of the rooms' own retention (migrations/008): the rooms
 * with one after `after` (NULL: from the first), at most max_rooms, at most
 * max_rows messages deleted, each room's oldest seqs first. One row:
 * (rooms visited or -1 when another upkeep runs, deleted, next_room, more:
 * call again with after = next_room). */
void db_rooms_expire(pg_client_t *pg, const char *after, int max_rooms, int max_rows, pg_result_cb cb,
                     void *ud);
/* One step of putting a month that ended more than min_age_s ago in room
 * order (migration 011, chatd_messages_compact): call again while the step
 * is "started" or "copied". The copy step runs for as long as the month
 * takes to copy: not on a connection whose other statements must not wait.
 * The swap waits at most lock_ms for its lock ("busy": again later). One
 * row: (month or NULL, step, rows). */
void db_messages_compact(pg_client_t *pg, int64_t min_age_s, int lock_ms, pg_result_cb cb, void *ud);
/* Archives the room and deletes its memberships: a row with NULL if the room
 * exists, then one per removed member (user_id). */
void db_room_archive(pg_client_t *pg, const char *room, pg_result_cb cb, void *ud);
/* Adds a member unless the room is missing or archived, or the user is at
 * max_rooms. One row: (room exists 0|1, archived, inserted 0|1, under the
 * cap, member now). */
void db_member_add(pg_client_t *pg, const char *room, const char *user, int max_rooms,
                   pg_result_cb cb, void *ud);
/* A row with NULL if the room exists, then members with user_id > after, by
 * id, at most limit. */
void db_room_members(pg_client_t *pg, const char *room, const char *after, int limit,
                     pg_result_cb cb, void *ud);
/* (user_id, kind, deleted, ts) of row id in room, if stored: the check of
 * an edit or delete before it is produced. The months are read newest
 * first, stopping at the row's (migrations/012); since_ms > 0 reads only
 * months ending after it (a target known to be recent), 0 every month. */
void db_msg_target(pg_client_t *pg, const char *room, const char *id, int64_t since_ms,
                   pg_result_cb cb, void *ud);
/* (seq, user_id, ts) of message id in room, if stored (newest month first,
 * as db_msg_target). */
void db_msg_find(pg_client_t *pg, const char *room, const char *id, pg_result_cb cb, void *ud);
/* Bans user until (unix seconds; a past time lifts the ban). One row. */
void db_ban(pg_client_t *pg, const char *user, int64_t until, pg_result_cb cb, void *ud);
/* One row (until) iff user is banned at now_s. */
void db_user_banned(pg_client_t *pg, const char *user, int64_t now_s, pg_result_cb cb, void *ud);

/* The owner's client ops add and remove (docs/PROTOCOL.md, "Private
 * rooms"): only when room's owner is owner. Add: one row (owner matches
 * 0|1, inserted 0|1, member now); remove: (owner matches 0|1, deleted 0|1). */
void db_owner_add(pg_client_t *pg, const char *room, const char *owner, const char *user,
                  int max_rooms, pg_result_cb cb, void *ud);
void db_owner_remove(pg_client_t *pg, const char *room, const char *owner, const char *user,
                     pg_result_cb cb, void *ud);

/* PostgreSQL array literals for array parameters: add elements to an empty
 * jbuf (a text element is quoted and escaped, NULL is SQL NULL), then
 * db_array_end closes it and hands over the string (free it). */
void db_array_add(struct jbuf *b, const char *s);
void db_array_int(struct jbuf *b, int64_t v);
char *db_array_end(struct jbuf *b);

/* Writes rows [0, n) of a db_history result as MSG objects, comma-separated,
 * stopping before a row that would take b past max_len bytes (0: no limit;
 * the first row is always written). Returns the rows written. */
int db_history_json(struct jbuf *b, const char *room, const PGresult *res, int n, size_t max_len);
/* Writes a db_rooms result as the "rooms" member of an open object:
 * "rooms":[{"room":..,"seq":head,"read":..},...] (the client op and the
 * server API answer the same shape). */
void db_rooms_json(struct jbuf *b, const PGresult *res);

#endif
