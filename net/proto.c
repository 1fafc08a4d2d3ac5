#include "net/proto.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lib/err.h"
#include "net/auth.h"

static const char *const proto_ops[] = {
    [OP_JOIN] = "join", [OP_LEAVE] = "leave", [OP_SEND] = "send", [OP_SYNC] = "sync",
    [OP_ROOMS] = "rooms", [OP_TYPING] = "typing", [OP_READ] = "read", [OP_PRESENCE] = "presence",
    [OP_ADD] = "add", [OP_REMOVE] = "remove", [OP_EDIT] = "edit", [OP_DELETE] = "delete",
};
#define PROTO_NOPS (sizeof proto_ops / sizeof proto_ops[0])

const char *proto_op_name(enum proto_op op) { return proto_ops[op]; }

int proto_room_valid(const char *s, size_t len)
{
    if (len < 1 || len > PROTO_ROOM_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    if (len < 3 || memcmp(s, "dm:", 3) != 0)
        return 1;
    /* dm:A:B with A < B in byte order, both valid user ids (no ':' in them). */
    const char *a = s + 3, *colon = memchr(a, ':', len - 3);
    if (!colon)
        return 0;
    size_t alen = (size_t)(colon - a), blen = len - 3 - alen - 1;
    const char *b = colon + 1;
    if (!auth_user_valid(a, alen) || !auth_user_valid(b, blen))
        return 0;
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c < 0 || (c == 0 && alen < blen);
}

int proto_room_allows(const char *room, const char *user)
{
    if (strncmp(room, "dm:", 3) != 0)
        return 1;
    const char *a = room + 3, *colon = strchr(a, ':');
    size_t ul = strlen(user);
    return ((size_t)(colon - a) == ul && !memcmp(a, user, ul)) || !strcmp(colon + 1, user);
}

/* rid: integer or string, echoed verbatim as JSON. */
static int proto_rid(const cJSON *o, struct proto_req *r, const char **why)
{
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(o, "rid");
    if (!rid)
        return 0;
    if (cJSON_IsString(rid) && strlen(rid->valuestring) <= PROTO_RID_MAX) {
        struct jbuf b;
        jbuf_init(&b, 2 * PROTO_RID_MAX);
        jbuf_strz(&b, rid->valuestring);
        if (!b.failed && b.len < sizeof r->rid) {
            memcpy(r->rid, b.p, b.len);
            r->rid[b.len] = 0;
        }
        jbuf_free(&b);
        if (r->rid[0])
            return 0;
    } else if (cJSON_IsNumber(rid) && rid->valuedouble == floor(rid->valuedouble) &&
               fabs(rid->valuedouble) < 9007199254740992.0) {
        snprintf(r->rid, sizeof r->rid, "%.0f", rid->valuedouble);
        return 0;
    }
    *why = "rid must be an integer or a string of at most 64 characters";
    return ERR_BAD_REQUEST;
}

static int proto_str(const cJSON *o, const char *key, int required, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v)
        return required ? -1 : 0;
    if (!cJSON_IsString(v))
        return -1;
    *out = v->valuestring;
    return 0;
}

/* An integral number in [lo, hi]; absent -> def. */
static int proto_int(const cJSON *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                     int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) {
        *out = def;
        return def < lo ? -1 : 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int proto_room(const cJSON *o, struct proto_req *r, const char **why)
{
    const char *room;
    if (proto_str(o, "room", 1, &room) < 0) {
        *why = "room must be a string";
        return ERR_BAD_REQUEST;
    }
    size_t n = strlen(room);
    if (!proto_room_valid(room, n)) {
        *why = "room must be 1..128 of A-Za-z0-9_.:- (dm rooms: dm:A:B with A<B)";
        return ERR_BAD_REQUEST;
    }
    memcpy(r->room, room, n + 1);
    return 0;
}

static int proto_send_fields(const cJSON *o, const struct proto_limits *lim, struct proto_req *r,
                             const char **why)
{
    const char *text, *cid;
    if (proto_str(o, "text", 1, &text) < 0 || !text[0]) {
        *why = "text must be a non-empty string";
        return ERR_BAD_REQUEST;
    }
    r->text = text;
    r->text_len = strlen(text);
    if (r->text_len > lim->max_text) {
        *why = "text is longer than the server's limit";
        return ERR_TOO_LARGE;
    }
    if (proto_str(o, "cid", 0, &cid) < 0 || (cid && (!cid[0] || strlen(cid) > PROTO_CID_MAX))) {
        *why = "cid must be a string of 1..64 characters";
        return ERR_BAD_REQUEST;
    }
    if (cid)
        strcpy(r->cid, cid);
    return 0;
}

/* edit, delete: the target "id" (a message id as ack.id has it), an edit's
 * text as a send's, and an optional cid. */
static int proto_change_fields(const cJSON *o, const struct proto_limits *lim, struct proto_req *r,
                               const char **why)
{
    const char *id, *cid;
    size_t n = 0;
    if (proto_str(o, "id", 1, &id) == 0)
        while (n <= PROTO_ID_LEN && ((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'f')))
            n++;
    if (!id || n != PROTO_ID_LEN || id[n]) {
        *why = "id must be a message id: 32 lower-case hex characters";
        return ERR_BAD_REQUEST;
    }
    memcpy(r->target, id, PROTO_ID_LEN + 1);
    if (r->op == OP_EDIT)
        return proto_send_fields(o, lim, r, why);
    if (proto_str(o, "cid", 0, &cid) < 0 || (cid && (!cid[0] || strlen(cid) > PROTO_CID_MAX))) {
        *why = "cid must be a string of 1..64 characters";
        return ERR_BAD_REQUEST;
    }
    if (cid)
        strcpy(r->cid, cid);
    return 0;
}

static int proto_fields(const cJSON *o, const struct proto_limits *lim, const char *user,
                        struct proto_req *r, const char **why)
{
    int rc = r->op == OP_ROOMS ? 0 : proto_room(o, r, why);
    if (rc)
        return rc;
    int64_t v;
    switch (r->op) {
    case OP_JOIN:
        if (!proto_room_allows(r->room, user)) {
            *why = "a dm room can be joined only by its two users";
            return ERR_FORBIDDEN;
        }
        return 0;
    case OP_SEND:
        return proto_send_fields(o, lim, r, why);
    case OP_EDIT:
    case OP_DELETE:
        return proto_change_fields(o, lim, r, why);
    case OP_SYNC:
        if (proto_int(o, "after", 0, 0, INT64_MAX / 2, &r->after) < 0) {
            *why = "after must be a non-negative integer";
            return ERR_BAD_REQUEST;
        }
        if (proto_int(o, "limit", 100, 1, INT64_MAX / 2, &v) < 0) {
            *why = "limit must be a positive integer";
            return ERR_BAD_REQUEST;
        }
        r->limit = v > lim->history_max ? lim->history_max : (int)v;
        return 0;
    case OP_ADD:
    case OP_REMOVE: {
        const char *u;
        if (proto_str(o, "user", 1, &u) < 0 || !auth_user_valid(u, strlen(u))) {
            *why = "user must be a user id: 1..64 of A-Za-z0-9_.-";
            return ERR_BAD_REQUEST;
        }
        if (!strncmp(r->room, "dm:", 3)) {
            *why = "a dm room's members are its two users";
            return ERR_FORBIDDEN;
        }
        strcpy(r->user, u);
        return 0;
    }
    case OP_READ:
        if (!cJSON_GetObjectItemCaseSensitive(o, "seq") ||
            proto_int(o, "seq", 0, 0, INT64_MAX / 2, &r->seq) < 0) {
            *why = "seq must be a non-negative integer";
            return ERR_BAD_REQUEST;
        }
        return 0;
    default:
        return 0;
    }
}

static int proto_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* 1 if the frame holds something that cJSON would turn into a NUL, which
 * ends its C strings: "a\u0000b" would silently become "a" (a room, cid or
 * text other than the one sent), and PostgreSQL text cannot hold NUL anyway.
 * That is a raw 0 byte, \u0000, and also a malformed \u escape: cJSON reads
 * "\u0e7 " or "\u00g0" as code point 0 (found by fuzzing). So escapes are
 * checked strictly here. data is exactly one JSON value, so tracking quotes
 * and backslashes is exact. */
int proto_json_has_nul(const char *data, size_t len)
{
    if (memchr(data, 0, len))
        return 1;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        if (!in_str) {
            in_str = data[i] == '"';
        } else if (data[i] == '"') {
            in_str = 0;
        } else if (data[i] == '\\') {
            if (i + 1 >= len)
                return 1;
            char e = data[++i];
            if (e != 'u')
                continue; /* cJSON refuses unknown escapes itself */
            if (len - i < 5 || !proto_hex(data[i + 1]) || !proto_hex(data[i + 2]) ||
                !proto_hex(data[i + 3]) || !proto_hex(data[i + 4]) || !memcmp(data + i + 1, "0000", 4))
                return 1;
            i += 4;
        }
    }
    return 0;
}

int proto_parse(const char *data, size_t len, const struct proto_limits *lim, const char *user,
                struct proto_req *r, const char **why)
{
    memset(r, 0, sizeof *r);
    const char *end = data;
    cJSON *o = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    r->owner = o;
    /* cJSON stops after the first value: "{...}{...}" must not pass as its
     * first half (found by fuzzing). Whitespace may follow. */
    while (o && end < data + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (!cJSON_IsObject(o) || end != data + len) {
        *why = "a frame must be one JSON object";
        return ERR_BAD_REQUEST;
    }
    int rc = proto_rid(o, r, why);
    if (rc)
        return rc;
    if (proto_json_has_nul(data, len)) {
        *why = "strings must not contain U+0000";
        return ERR_BAD_REQUEST;
    }
    const char *op;
    if (proto_str(o, "op", 1, &op) < 0) {
        *why = "op must be a string";
        return ERR_BAD_REQUEST;
    }
    size_t i = 0;
    while (i < PROTO_NOPS && strcmp(op, proto_ops[i]) != 0)
        i++;
    if (i == PROTO_NOPS) {
        *why = "unknown op";
        return ERR_BAD_REQUEST;
    }
    r->op = (enum proto_op)i;
    return proto_fields(o, lim, user, r, why);
}

void proto_req_free(struct proto_req *r)
{
    cJSON_Delete(r->owner);
    r->owner = NULL;
}

void proto_reply_open(struct jbuf *b, const char *op, const char *rid)
{
    jbuf_obj_open(b);
    jbuf_kv_strz(b, "op", op);
    if (rid && rid[0]) {
        jbuf_key(b, "rid");
        jbuf_rawz(b, rid);
        b->need_comma = 1;
    }
}

void proto_error(struct jbuf *b, const char *rid, int err, const char *message)
{
    proto_reply_open(b, "error", rid);
    jbuf_kv_strz(b, "code", err_code(err));
    jbuf_kv_strz(b, "message", message ? message : err_str(err));
    jbuf_obj_close(b);
}
