/* record: the formats chatd writes to Kafka (see docs/ARCHITECTURE.md).
 *
 * Every record carries headers v (format version, decimal) and t (type);
 * member events also carry u (the user who joined or left). The key is
 * always the room id, so one room's records share a chat-send partition and
 * stay in order.
 *
 *   chat-send    t=m  value {"id","from","cid"?,"text","ts","gw"}   (JSON)
 *                     an edit or delete adds "kind":"edit"|"delete", "target"
 *                     (the message's id) and "mod":true (the server API);
 *                     it is written with version 2
 *   chat-send    t=e|j|l value = the client event frame, passed through
 *   chat-receive t=m  value = the client "msg" frame, ready to send
 *   chat-receive t=e|j|l value = the client event frame
 *
 * A reader accepts any version <= RECORD_VERSION and ignores unknown JSON
 * fields, so a rolling upgrade that only adds fields needs no new version.
 * A record with a higher version is skipped and counted (a newer producer
 * must not be half-understood); bump the version only for breaking changes.
 * Edits and deletes are one: a version 1 classifier would store them as new
 * messages, so they alone carry version 2 (RECORD_VERSION_CHANGE), on
 * chat-send and chat-receive; everything else stays version 1, which readers
 * of version 1 still take (docs/DEPLOY.md: classifiers are upgraded first).
 */
#ifndef CHATD_RECORD_H
#define CHATD_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define RECORD_VERSION 1          /* what plain records are written with */
#define RECORD_VERSION_CHANGE 2   /* edits and deletes (chat_msg.kind) */
#define RECORD_VERSION_MAX 2      /* the highest a reader understands */

enum record_type {
    REC_MSG = 'm',     /* a chat message */
    REC_EVENT = 'e',   /* typing, read: to the room's online members */
    REC_JOINED = 'j',  /* joined: to the room's members and the user's sessions */
    REC_LEFT = 'l',    /* left: likewise */
};

#define MSG_ID_LEN 32   /* hex chars */

struct chat_msg {
    const char *room;
    size_t room_len;
    const char *id;       /* MSG_ID_LEN hex chars, NUL-terminated */
    const char *from;
    const char *cid;      /* NULL when the sender gave none */
    const char *text;
    size_t text_len;
    int64_t ts;           /* gateway receive time, ms since the epoch */
    int64_t seq;          /* 0 until sequenced */
    int gw;               /* producing gateway (diagnostics) */
    char kind;            /* MSG_KIND_*: a message, or an edit or delete of one */
    const char *target;   /* edit, delete: the message's id (MSG_ID_LEN hex) */
    int mod;              /* edit, delete by the server API: any sender's message */
};

/* chat_msg.kind. An edit or delete is a record of its own: it takes a seq,
 * is stored and delivered like a message, and names its target. */
#define MSG_KIND_MSG 'm'
#define MSG_KIND_EDIT 'e'
#define MSG_KIND_DELETE 'd'
/* The kind as written in records and frames ("msg", "edit", "delete"). */
const char *record_kind_name(char kind);

/* chat-send value. Returns a malloc'd buffer (caller frees) or NULL. */
char *record_send_encode(const struct chat_msg *m, size_t *len);
/* Parses a chat-send value; room comes from the record key. On success m
 * points into *owner, which the caller releases with record_decoded_free.
 * Returns 0 or ERR_BAD_REQUEST (missing field, wrong type, bad JSON). */
int record_send_decode(const char *room, size_t room_len, const char *val, size_t len,
                       struct chat_msg *m, void **owner);
void record_decoded_free(void *owner);
/* The client frame {"op":"msg",...} ({"op":"edit"|"delete",...,"target":ID,
 * ...} for a change, docs/PROTOCOL.md extension 3): malloc'd, caller frees;
 * NULL on ENOMEM. */
char *record_msg_frame(const struct chat_msg *m, size_t *len);
/* The ts of a frame made by record_msg_frame, read from its fixed ending
 * `,"ts":N}` without parsing the JSON (the gateway's fan-out path); -1 when
 * the value does not end that way. */
int64_t record_msg_frame_ts(const char *val, size_t len);

/* Message ids: with a cid the id is derived from (room, user, cid), so a
 * resend gets the same id and the classifier's dedup by id also dedups cids;
 * without one it is random. Both are 128 bits as 32 hex chars + NUL. */
void record_msg_id(char out[MSG_ID_LEN + 1], const char *room, size_t room_len, const char *user,
                   const char *cid);

/* An edit's or delete's id: from (room, user, cid, kind, target), so a
 * resent change gets its id again, and a cid the user gave a message or
 * another change never makes this one a duplicate of it (acked, dropped). */
void record_change_id(char out[MSG_ID_LEN + 1], const char *room, size_t room_len,
                      const char *user, const char *cid, char kind, const char *target);

#endif
