/* proto: the client protocol's requests and replies (docs/PROTOCOL.md),
 * as pure functions: JSON text in, a validated request struct out; a jbuf
 * in, reply frames out. No I/O, so every rule is unit-tested here.
 */
#ifndef CHATD_PROTO_H
#define CHATD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "lib/jbuf.h"

#define PROTO_ROOM_MAX 128
#define PROTO_CID_MAX 64
#define PROTO_RID_MAX 64

/* The most bytes one stored message takes in a reply or a fan-out frame: its
 * text escaped (\u00XX: six bytes for one), the cid escaped, the room, ids,
 * seq, ts and keys. Replies are paged within a byte budget that must hold at
 * least one such message (conf refuses a --send-queue that cannot). */
#define PROTO_MSG_OVERHEAD 1024
/* One {"room":R,"seq":S,"read":S} of a rooms reply, comma included. */
#define PROTO_ROOMS_ENTRY_MAX (PROTO_ROOM_MAX + 72)
static inline size_t proto_msg_bound(size_t max_text) { return 6 * max_text + 6 * PROTO_CID_MAX + PROTO_MSG_OVERHEAD; }

/* OP_ADD, OP_REMOVE: protocol extension 2 (docs/PROTOCOL.md, "Private rooms");
 * OP_EDIT, OP_DELETE: extension 3 ("Edits and deletes"). */
enum proto_op { OP_JOIN, OP_LEAVE, OP_SEND, OP_SYNC, OP_ROOMS, OP_TYPING, OP_READ, OP_PRESENCE,
                OP_ADD, OP_REMOVE, OP_EDIT, OP_DELETE };
#define PROTO_ID_LEN 32   /* a message id: lower-case hex (MSG_ID_LEN) */
#define PROTO_USER_MAX 64

struct proto_limits {
    size_t max_text;   /* bytes */
    int history_max;   /* sync limit cap */
};

struct proto_req {
    enum proto_op op;
    char rid[PROTO_RID_MAX + 3];   /* the rid as JSON (42 or "abc"); "" when absent */
    char room[PROTO_ROOM_MAX + 1];
    char cid[PROTO_CID_MAX + 1];   /* "" when absent */
    const char *text;              /* send, edit: points into owner */
    size_t text_len;
    int64_t after;                 /* sync */
    int limit;                     /* sync, clamped to history_max */
    int64_t seq;                   /* read */
    char user[PROTO_USER_MAX + 1]; /* add, remove: the member */
    char target[PROTO_ID_LEN + 1]; /* edit, delete: the message's id */
    void *owner;                   /* parse tree; proto_req_free releases it */
};

/* Parses one client frame. Returns 0, or ERR_BAD_REQUEST / ERR_TOO_LARGE /
 * ERR_FORBIDDEN with *why set to a static message. r->rid is filled as soon
 * as it is known, so error replies echo it. Always call proto_req_free. */
int proto_parse(const char *data, size_t len, const struct proto_limits *lim, const char *user,
                struct proto_req *r, const char **why);
void proto_req_free(struct proto_req *r);

/* 1 if s is a room id: 1..128 of A-Za-z0-9_.:- and, for "dm:", the form dm:A:B, A<B. */
int proto_room_valid(const char *s, size_t len);
/* For a valid dm room: 1 if user is one of its two users; 1 for other rooms. */
int proto_room_allows(const char *room, const char *user);
const char *proto_op_name(enum proto_op op);
/* 1 if the JSON text data holds a string cJSON would cut at a NUL (a raw 0,
 * \u0000, or a malformed \u escape); the server API checks its bodies too. */
int proto_json_has_nul(const char *data, size_t len);

/* Writes {"op":OP[,"rid":RID] and leaves the object open for more fields. */
void proto_reply_open(struct jbuf *b, const char *op, const char *rid);
/* A whole error reply: {"op":"error","rid":..,"code":..,"message":..}. */
void proto_error(struct jbuf *b, const char *rid, int err, const char *message);

#endif
