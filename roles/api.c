/* The server API (roles/api.h): routing, checks, and one async step or
 * two per request, each answered exactly once. */
#include "roles/api.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kafka/record.h"
#include "lib/err.h"
#include "lib/log.h"
#include "net/apireq.h"
#include "roles/gateway_internal.h"
#include "store/db.h"

/* Requests waiting for PostgreSQL or Kafka, per process: past it 503. */
#define API_MAX_INFLIGHT 256
#define API_NAME_MAX 200          /* a room's display name, bytes */
#define API_MEMBERS_MAX 1000      /* a page of a room's members */
#define API_RETENTION_MAX 3155760000.0 /* a room's retention, s: 100 years, as --retention */
#define API_SYSTEM_SENDER AUTH_SYSTEM_USER

struct api {
    uv_loop_t *loop;
    const struct conf *conf;
    gateway_t *g;
    http_server_t *http;
    int inflight;
    int closing;
    unsigned char key[SHA256_DIGEST_LENGTH], prev[SHA256_DIGEST_LENGTH];
    int has_prev;
    metric_t *m_requests, *m_refused;
};

enum api_op { API_PUBLISH, API_MSG_GET, API_HISTORY, API_ROOM_PUT, API_ROOM_GET, API_ROOM_DELETE,
              API_MEMBERS, API_MEMBER_PUT, API_MEMBER_DELETE, API_USER_ROOMS, API_DISCONNECT,
              API_MSG_EDIT, API_MSG_DELETE };

/* One request past its checks, waiting for a backend. */
struct api_req {
    api_t *a;
    http_req_t *req;
    enum api_op op;
    int has_ban;
    int limit;
    int64_t after;
    int64_t ban_until;
    char *text;                   /* publish: the message text */
    size_t text_len;
    char room[PROTO_ROOM_MAX + 1];
    char user[AUTH_USER_MAX + 1]; /* member, user path segment, or the publish's sender */
    char cid[PROTO_CID_MAX + 1];  /* publish: the idempotency key */
    char id[MSG_ID_LEN + 1];      /* the message: of a publish, or the one changed */
    char name[API_NAME_MAX + 1];
    int private_, has_name, has_owner; /* private_ -1: absent, keep the room's */
    int64_t retention_s;          /* room put: -1 keeps the room's */
    char owner[AUTH_USER_MAX + 1];
    char after_user[AUTH_USER_MAX + 1];
    int status;                   /* a member change: the answer once Kafka has its record */
    struct jbuf answer;
};

/* ---- responses ---- */

static void api_error(http_req_t *req, int status, const char *code, const char *msg)
{
    http_respond_error(req, status, code, msg);
}

/* 503 + Retry-After: PostgreSQL, Redis or Kafka is not there right now. */
static void api_unavailable(http_req_t *req, const char *msg)
{
    struct jbuf b;
    jbuf_init(&b, 128);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "error", "unavailable");
    jbuf_kv_strz(&b, "message", msg);
    jbuf_obj_close(&b);
    http_respond(req, 503, "application/json", b.p, b.len, "Retry-After: 1\r\n");
    jbuf_free(&b);
}

static void api_json(http_req_t *req, int status, struct jbuf *b)
{
    if (b->failed)
        api_unavailable(req, "out of memory, try again");
    else
        http_respond(req, status, "application/json", b->p, b->len, NULL);
    jbuf_free(b);
}

static void api_req_free(struct api_req *q)
{
    q->a->inflight--;
    free(q->text);
    jbuf_free(&q->answer);
    free(q);
}

/* A member change's joined/left record acknowledged by Kafka (gw_acks_new):
 * the answer prepared in q is sent, else 503. The change is committed either
 * way; its retry makes a quiet record that brings the gateways up to date. */
static void api_on_member_acked(int err, void *ud)
{
    struct api_req *q = ud;
    if (err) {
        log_warn("api_member_record_failed", "op=%d room=%s user=%s err=%s", q->op, q->room, q->user,
                 err_code(err));
        api_unavailable(q->req, "done, but the member's gateways were not told: send the request again");
    } else {
        api_json(q->req, q->status, &q->answer);
    }
    api_req_free(q);
}

/* Answers status + b once Kafka has the record(s) produced with the
 * returned acks (then gw_acks_arm). b is kept in q. */
static struct gw_acks *api_answer_after_acks(struct api_req *q, int status, struct jbuf *b)
{
    q->status = status;
    q->answer = *b;
    return gw_acks_new(api_on_member_acked, q);
}

/* A backend answered err: the request is answered 503 and freed. */
static int api_backend_failed(struct api_req *q, int err)
{
    if (!err)
        return 0;
    if (err != ERR_CANCELLED)
        log_warn("api_backend_failed", "op=%d room=%s user=%s err=%s", q->op, q->room, q->user,
                 err_code(err));
    api_unavailable(q->req, "a backend is unavailable, try again");
    api_req_free(q);
    return 1;
}

static void api_kv_opt(struct jbuf *b, const char *key, const PGresult *res, int row, int col)
{
    jbuf_key(b, key);
    if (PQgetisnull(res, row, col)) {
        jbuf_rawz(b, "null");
        b->need_comma = 1; /* a value, as jbuf_strz's would be */
    } else
        jbuf_strz(b, PQgetvalue(res, row, col));
}

/* ---- publish ---- */

static void api_on_publish_dr(int err, void *opaque)
{
    struct api_req *q = opaque;
    if (err) {
        struct jbuf b;
        jbuf_init(&b, 200);
        jbuf_obj_open(&b);
        jbuf_kv_strz(&b, "error", "unavailable");
        jbuf_kv_strz(&b, "message", err == ERR_IN_DOUBT ? "the message may have been stored: send it "
                                                          "again with the same idempotency_key"
                                                        : "the message was not stored, send it again");
        jbuf_kv_strz(&b, "stored", err == ERR_IN_DOUBT ? "maybe" : "no");
        jbuf_obj_close(&b);
        http_respond(q->req, 503, "application/json", b.p, b.len, "Retry-After: 1\r\n");
        jbuf_free(&b);
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 200);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_kv_strz(&b, "id", q->id);
    jbuf_kv_strz(&b, "from", q->user);
    if (q->cid[0])
        jbuf_kv_strz(&b, "idempotency_key", q->cid);
    jbuf_obj_close(&b);
    api_json(q->req, 201, &b);
    api_req_free(q);
}

static void api_on_publish_room(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    if (PQntuples(res) == 0 || PQgetvalue(res, 0, 5)[0] == 't') {
        int archived = PQntuples(res) > 0;
        api_error(q->req, archived ? 409 : 404, archived ? "archived" : "room_not_found",
                  archived ? "the room is archived" : "no such room (create it, or a client joins it)");
        api_req_free(q);
        return;
    }
    int rc = gw_produce_msg(q->a->g, q->room, q->user, q->cid[0] ? q->cid : NULL, q->text,
                            q->text_len, q->id, api_on_publish_dr, q);
    if (rc) {
        if (rc == ERR_TOO_LARGE)
            api_error(q->req, 413, "too_large", "the message is too large for Kafka");
        else
            api_unavailable(q->req, "the message was not stored, send it again");
        api_req_free(q);
    }
}

/* ---- a stored message's seq ---- */

static void api_on_msg(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    if (PQntuples(res) == 0) {
        api_error(q->req, 404, "not_found", "no such message in this room (or not stored yet: ask again)");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 200);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_kv_strz(&b, "id", q->id);
    jbuf_kv_int(&b, "seq", strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    jbuf_kv_strz(&b, "from", PQgetvalue(res, 0, 1));
    jbuf_kv_int(&b, "ts", strtoll(PQgetvalue(res, 0, 2), NULL, 10));
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

/* ---- edit, delete (moderation): any sender's message ---- */

static cJSON *api_body(http_req_t *req, int optional);
static struct api_req *api_req_new(api_t *a, http_req_t *req, enum api_op op, const char *room);

static void api_on_change(int err, const char *why, const char *id, void *ud)
{
    struct api_req *q = ud;
    if (err == ERR_NOT_FOUND || err == ERR_TOO_LARGE) {
        api_error(q->req, err == ERR_NOT_FOUND ? 404 : 413, err_code(err), why ? why : err_str(err));
        api_req_free(q);
        return;
    }
    if (err) {
        struct jbuf b;
        jbuf_init(&b, 200);
        jbuf_obj_open(&b);
        jbuf_kv_strz(&b, "error", "unavailable");
        jbuf_kv_strz(&b, "message", err == ERR_IN_DOUBT ? "the change may have been stored: send it "
                                                          "again with the same idempotency_key"
                                                        : "the change was not stored, send it again");
        jbuf_kv_strz(&b, "stored", err == ERR_IN_DOUBT ? "maybe" : "no");
        jbuf_obj_close(&b);
        http_respond(q->req, 503, "application/json", b.p, b.len, "Retry-After: 1\r\n");
        jbuf_free(&b);
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 256);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_kv_strz(&b, "id", id);
    jbuf_kv_strz(&b, "target", q->id);
    jbuf_kv_strz(&b, "kind", q->op == API_MSG_EDIT ? "edit" : "delete");
    if (q->cid[0])
        jbuf_kv_strz(&b, "idempotency_key", q->cid);
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

/* PATCH {"text","idempotency_key"?} or DELETE {"idempotency_key"?}: the
 * change is sent by the system sender, as a moderator (record "mod"). */
static void api_change(api_t *a, http_req_t *req, enum api_op op, const char *room, const char *id)
{
    cJSON *o = api_body(req, op == API_MSG_DELETE);
    if (!o)
        return;
    const char *text = NULL, *key, *why = NULL;
    int rt = op == API_MSG_EDIT ? apireq_str(o, "text", a->conf->max_text, &text) : 0;
    int rk = apireq_str(o, "idempotency_key", PROTO_CID_MAX, &key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (op == API_MSG_EDIT && rt <= 0 && cJSON_IsString(t) && strlen(t->valuestring) > a->conf->max_text) {
        cJSON_Delete(o);
        api_error(req, 413, "too_large", "text is longer than --max-text");
        return;
    }
    if (op == API_MSG_EDIT && rt <= 0)
        why = "text must be a non-empty UTF-8 string";
    else if (rk < 0)
        why = "idempotency_key must be a string of 1..64 bytes";
    if (why) {
        cJSON_Delete(o);
        api_error(req, 400, "bad_request", why);
        return;
    }
    struct api_req *q = api_req_new(a, req, op, room);
    strcpy(q->user, API_SYSTEM_SENDER);
    strcpy(q->id, id);
    if (key)
        strcpy(q->cid, key);
    if (text) {
        q->text_len = strlen(text);
        q->text = strdup(text);
        CHATD_ASSERT(q->text != NULL);
    }
    cJSON_Delete(o);
    gw_change_submit(a->g, q->room, q->user, 1, op == API_MSG_EDIT ? MSG_KIND_EDIT : MSG_KIND_DELETE,
                     q->id, q->cid[0] ? q->cid : NULL, q->text, q->text_len, 0, api_on_change, NULL, q);
}

/* ---- history ---- */

static void api_on_history(int err, const struct gw_page *page, void *ud)
{
    struct api_req *q = ud;
    q->a->g->hist_inflight--;
    if (err) {
        api_unavailable(q->req, "history is unavailable, try again");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    gw_history_page_json(&b, q->room, page);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

/* ---- rooms ---- */

static void api_room_json(struct jbuf *b, const PGresult *res)
{
    jbuf_obj_open(b);
    jbuf_kv_strz(b, "room", PQgetvalue(res, 0, 1));
    jbuf_key(b, "private");
    jbuf_bool(b, PQgetvalue(res, 0, 2)[0] == 't');
    api_kv_opt(b, "name", res, 0, 3);
    api_kv_opt(b, "owner", res, 0, 4);
    jbuf_key(b, "archived");
    jbuf_bool(b, PQgetvalue(res, 0, 5)[0] == 't');
    jbuf_key(b, "retention_seconds");
    if (PQgetisnull(res, 0, 7)) {
        jbuf_rawz(b, "null");
        b->need_comma = 1;
    } else
        jbuf_int(b, strtoll(PQgetvalue(res, 0, 7), NULL, 10));
}

static void api_on_room_put(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    if (PQntuples(res) != 1) {
        api_unavailable(q->req, "the room was not written, try again");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 256);
    api_room_json(&b, res);
    jbuf_obj_close(&b);
    int status = PQgetvalue(res, 0, 0)[0] == 't' ? 201 : 200;
    if (q->has_owner) { /* loud when the owner's membership is new */
        struct gw_acks *k = api_answer_after_acks(q, status, &b);
        gw_member_changed(q->a->g, "joined", q->room, q->owner, strcmp(PQgetvalue(res, 0, 6), "0") == 0, k);
        gw_acks_arm(k);
        return;
    }
    api_json(q->req, status, &b);
    api_req_free(q);
}

static void api_on_room_get(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    if (PQntuples(res) != 1) {
        api_error(q->req, 404, "room_not_found", "no such room");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 256);
    api_room_json(&b, res);
    jbuf_kv_int(&b, "members", strtoll(PQgetvalue(res, 0, 6), NULL, 10));
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

static void api_on_room_archive(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    int removed = 0, found = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        if (PQgetisnull(res, i, 0)) {
            found = 1;
            continue;
        }
        /* Each removed member's gateways drop the room (and its sessions
         * see `left`), as for a leave. Not waited for: an archived room
         * takes no message any more, so a lost `left` leaks nothing, and
         * the retry of an archive finds no member to announce. */
        gw_member_changed(q->a->g, "left", q->room, PQgetvalue(res, i, 0), 0, NULL);
        removed++;
    }
    if (!found) {
        api_error(q->req, 404, "room_not_found", "no such room");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 160);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_key(&b, "archived");
    jbuf_bool(&b, 1);
    jbuf_kv_int(&b, "removed", removed);
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

/* ---- members ---- */

/* The member's record (op "joined" or "left"), then the 200 {room, user,
 * key: changed} once Kafka has it. */
static void api_member_reply(struct api_req *q, const char *op, const char *key, int changed)
{
    struct jbuf b;
    jbuf_init(&b, 200);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_kv_strz(&b, "user", q->user);
    jbuf_key(&b, key);
    jbuf_bool(&b, changed);
    jbuf_obj_close(&b);
    struct gw_acks *k = api_answer_after_acks(q, 200, &b);
    gw_member_changed(q->a->g, op, q->room, q->user, !changed, k);
    gw_acks_arm(k);
}

static void api_on_member_add(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
        api_error(q->req, 404, "room_not_found", "no such room");
        api_req_free(q);
        return;
    }
    if (PQgetvalue(res, 0, 1)[0] == 't') {
        api_error(q->req, 409, "archived", "the room is archived");
        api_req_free(q);
        return;
    }
    int inserted = strcmp(PQgetvalue(res, 0, 2), "0") != 0;
    if (!inserted && PQgetvalue(res, 0, 4)[0] != 't') {
        api_error(q->req, 409, "too_many_rooms", "the user is in --max-rooms-per-user rooms already");
        api_req_free(q);
        return;
    }
    /* Quiet when nothing changed: the user's gateways still check (the
     * retry of an add whose answer was lost brings them up to date). */
    api_member_reply(q, "joined", "added", inserted);
}

static void api_on_member_remove(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    api_member_reply(q, "left", "removed", PQntuples(res) > 0);
}

static void api_on_members(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    int n = PQntuples(res);
    if (n == 0 || !PQgetisnull(res, 0, 0)) {
        api_error(q->req, 404, "room_not_found", "no such room");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 128 + (size_t)n * 24);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "room", q->room);
    jbuf_key(&b, "members");
    jbuf_arr_open(&b);
    int shown = n - 1 > q->limit ? q->limit : n - 1;
    for (int i = 1; i <= shown; i++) {
        jbuf_comma(&b);
        jbuf_strz(&b, PQgetvalue(res, i, 0));
    }
    jbuf_arr_close(&b);
    jbuf_key(&b, "more");
    jbuf_bool(&b, n - 1 > q->limit);
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

static void api_on_user_rooms(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    if (api_backend_failed(q, err))
        return;
    struct jbuf b;
    jbuf_init(&b, 128 + (size_t)PQntuples(res) * 64);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "user", q->user);
    db_rooms_json(&b, res);
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

/* ---- disconnect (and ban) ---- */

static void api_on_disconnect_dr(int err, void *opaque)
{
    struct api_req *q = opaque;
    if (err) {
        api_unavailable(q->req, "the disconnect was not sent, try again");
        api_req_free(q);
        return;
    }
    struct jbuf b;
    jbuf_init(&b, 160);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "user", q->user);
    jbuf_key(&b, "disconnected");
    jbuf_bool(&b, 1);
    if (q->has_ban)
        jbuf_kv_int(&b, "banned_until", q->ban_until);
    jbuf_obj_close(&b);
    api_json(q->req, 200, &b);
    api_req_free(q);
}

static void api_disconnect_send(struct api_req *q)
{
    gateway_t *g = q->a->g;
    struct jbuf b;
    jbuf_init(&b, 160);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "op", "left");
    jbuf_kv_strz(&b, "room", GW_DISCONNECT_ROOM);
    jbuf_kv_strz(&b, "user", q->user);
    jbuf_key(&b, "disconnect");
    jbuf_bool(&b, 1);
    jbuf_key(&b, "quiet");
    jbuf_bool(&b, 1);
    jbuf_obj_close(&b);
    struct kafka_hdrs h = { .version = RECORD_VERSION, .type = REC_LEFT, .user = q->user,
                            .user_len = strlen(q->user) };
    int rc = b.failed ? ERR_NOMEM
                      : kafka_produce(g->producer, g->conf->topic_send, -1, GW_DISCONNECT_ROOM,
                                      sizeof GW_DISCONNECT_ROOM - 1, b.p, b.len, &h,
                                      api_on_disconnect_dr, q);
    jbuf_free(&b);
    if (rc) {
        api_unavailable(q->req, "the disconnect was not sent, try again");
        api_req_free(q);
    }
}

static void api_on_ban(int err, PGresult *res, void *ud)
{
    struct api_req *q = ud;
    (void)res;
    if (api_backend_failed(q, err))
        return;
    api_disconnect_send(q);
}

/* ---- parsing ---- */

static int api_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    if (!s || !*s || (*s != '-' && (*s < '0' || *s > '9')))
        return -1;
    long long v = strtoll(s, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Query parameter name into out: 1, 0 when absent, -1 when longer than
 * outlen - 1 (a value cut to fit, or dropped, would be another request). */
static int api_query(http_req_t *req, const char *name, char *out, size_t outlen)
{
    if (http_req_query(req, name, out, outlen))
        return 1;
    return http_req_query_has(req, name) ? -1 : 0;
}

static int api_user_ok(const char *s) { return auth_user_valid(s, strlen(s)); }

/* The body (net/apireq.h), or NULL after answering 400. */
static cJSON *api_body(http_req_t *req, int optional)
{
    size_t len;
    const char *body = http_req_body(req, &len), *why = NULL;
    cJSON *o = apireq_body(body, len, optional, &why);
    if (!o)
        api_error(req, 400, "bad_request", why);
    return o;
}

static struct api_req *api_req_new(api_t *a, http_req_t *req, enum api_op op, const char *room)
{
    struct api_req *q = calloc(1, sizeof *q);
    CHATD_ASSERT(q != NULL);
    q->a = a;
    q->req = req;
    q->op = op;
    if (room)
        strcpy(q->room, room);
    a->inflight++;
    return q;
}

static void api_publish(api_t *a, http_req_t *req, const char *room)
{
    cJSON *o = api_body(req, 0);
    if (!o)
        return;
    const char *text, *from, *key;
    int rt = apireq_str(o, "text", a->conf->max_text, &text);
    int rf = apireq_str(o, "from", AUTH_USER_MAX, &from);
    int rk = apireq_str(o, "idempotency_key", PROTO_CID_MAX, &key);
    const char *why = NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (rt <= 0 && cJSON_IsString(t) && strlen(t->valuestring) > a->conf->max_text) {
        cJSON_Delete(o);
        api_error(req, 413, "too_large", "text is longer than --max-text");
        return;
    }
    if (rt <= 0)
        why = "text must be a non-empty UTF-8 string";
    else if (rf < 0 || (from && !api_user_ok(from)))
        why = "from must be a user id: 1..64 of A-Za-z0-9_.-";
    else if (rk < 0)
        why = "idempotency_key must be a string of 1..64 bytes";
    if (why) {
        cJSON_Delete(o);
        api_error(req, 400, "bad_request", why);
        return;
    }
    struct api_req *q = api_req_new(a, req, API_PUBLISH, room);
    strcpy(q->user, from ? from : API_SYSTEM_SENDER);
    if (key)
        strcpy(q->cid, key);
    q->text_len = strlen(text);
    q->text = strdup(text);
    CHATD_ASSERT(q->text != NULL);
    cJSON_Delete(o);
    db_room_get(gw_pg(a->g, q->room), q->room, api_on_publish_room, q);
}

static void api_room_put(api_t *a, http_req_t *req, const char *room)
{
    cJSON *o = api_body(req, 1);
    if (!o)
        return;
    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(o, "private");
    const char *name, *owner, *why = NULL;
    int rn = apireq_str(o, "name", API_NAME_MAX, &name);
    int ro = apireq_str(o, "owner", AUTH_USER_MAX, &owner);
    /* A room's own retention (migrations/008): seconds, 0 = none of its
     * own; absent or null keeps the room's. It can only shorten the
     * deployment's: a gateway given --retention refuses a longer one (the
     * classifiers drop whole months for every room whatever a room says). */
    const cJSON *rv = cJSON_GetObjectItemCaseSensitive(o, "retention_seconds");
    int64_t retention = -1;
    if (rv && !cJSON_IsNull(rv)) {
        /* The range first: a cast of a double past int64_t is undefined. */
        if (!cJSON_IsNumber(rv) || !(rv->valuedouble >= 0 && rv->valuedouble <= API_RETENTION_MAX) ||
            rv->valuedouble != (double)(int64_t)rv->valuedouble)
            retention = -2;
        else
            retention = (int64_t)rv->valuedouble;
    }
    if (pv && !cJSON_IsBool(pv))
        why = "private must be true or false";
    else if (retention == -2)
        why = "retention_seconds must be an integer 0..3155760000 (0: none of the room's own)";
    else if (retention > 0 && a->conf->retention_s > 0 && retention > a->conf->retention_s)
        why = "retention_seconds is longer than the deployment's --retention, which drops every room's "
              "messages";
    else if (rn < 0)
        why = "name must be a UTF-8 string of 1..200 bytes";
    else if (ro < 0 || (owner && !api_user_ok(owner)))
        why = "owner must be a user id: 1..64 of A-Za-z0-9_.-";
    else if (!strncmp(room, "dm:", 3))
        why = "dm rooms are made by their users' join, not by the API";
    if (why) {
        cJSON_Delete(o);
        api_error(req, 400, "bad_request", why);
        return;
    }
    struct api_req *q = api_req_new(a, req, API_ROOM_PUT, room);
    q->private_ = pv ? cJSON_IsTrue(pv) : -1;
    q->retention_s = retention;
    if (name) {
        q->has_name = 1;
        strcpy(q->name, name);
    }
    if (owner) {
        q->has_owner = 1;
        strcpy(q->owner, owner);
    }
    cJSON_Delete(o);
    db_room_put(gw_pg(a->g, q->room), q->room, q->private_, q->has_name ? q->name : NULL,
                q->has_owner ? q->owner : NULL, q->retention_s, api_on_room_put, q);
}

static void api_disconnect(api_t *a, http_req_t *req, const char *user)
{
    cJSON *o = api_body(req, 1);
    if (!o)
        return;
    const cJSON *bu = cJSON_GetObjectItemCaseSensitive(o, "ban_until");
    int64_t until = 0;
    /* The range first: a cast of a double past int64_t is undefined. */
    if (bu && !cJSON_IsNull(bu) &&
        (!cJSON_IsNumber(bu) || !(bu->valuedouble >= 0 && bu->valuedouble <= 253402300799.0) ||
         bu->valuedouble != (double)(int64_t)bu->valuedouble)) {
        cJSON_Delete(o);
        api_error(req, 400, "bad_request", "ban_until must be unix seconds (an integer, 0..253402300799)");
        return;
    }
    if (bu && cJSON_IsNumber(bu))
        until = (int64_t)bu->valuedouble;
    int has_ban = bu && cJSON_IsNumber(bu);
    cJSON_Delete(o);
    struct api_req *q = api_req_new(a, req, API_DISCONNECT, NULL);
    strcpy(q->user, user);
    q->has_ban = has_ban;
    q->ban_until = until;
    log_info("api_disconnect", "user=%s ban_until=%" PRId64, user, has_ban ? until : -1);
    if (has_ban)
        db_ban(gw_pg(a->g, user), user, until, api_on_ban, q);
    else
        api_disconnect_send(q);
}

/* ---- dispatch ---- */

static int api_authorized(api_t *a, http_req_t *req)
{
    const char *h = http_req_header(req, "authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)h + 7, strlen(h + 7), d);
    /* Both compared, always: the time says nothing about which matched. */
    int ok = CRYPTO_memcmp(d, a->key, sizeof d) == 0;
    int ok_prev = a->has_prev && CRYPTO_memcmp(d, a->prev, sizeof d) == 0;
    return ok | ok_prev;
}

static int api_method(http_req_t *req, const char *allowed)
{
    const char *m = http_req_method(req);
    for (const char *p = allowed; *p;) {
        size_t n = strcspn(p, ",");
        if (strlen(m) == n && !strncmp(m, p, n))
            return 1;
        p += n + (p[n] == ',');
    }
    char hdr[96];
    snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allowed);
    static const char body[] = "{\"error\":\"method_not_allowed\",\"message\":\"see docs/api.yaml\"}";
    http_respond(req, 405, "application/json", body, sizeof body - 1, hdr);
    return 0;
}

static void api_on_http(http_req_t *req, void *user)
{
    api_t *a = user;
    metric_inc(a->m_requests);
    if (!api_authorized(a, req)) {
        metric_inc(a->m_refused);
        log_info("api_unauthorized", "peer=%s path=%s", http_req_peer(req), http_req_path(req));
        static const char body[] = "{\"error\":\"unauthorized\",\"message\":\"missing or invalid API key\"}";
        http_respond(req, 401, "application/json", body, sizeof body - 1, "WWW-Authenticate: Bearer\r\n");
        return;
    }
    char seg[APIREQ_SEGS][APIREQ_SEG_MAX + 1];
    int n;
    if (apireq_split(http_req_path(req), seg, &n) < 0 || n < 3 || strcmp(seg[0], "v1") != 0) {
        api_error(req, 404, "not_found", "no such path (see docs/api.yaml)");
        return;
    }
    enum api_op op;
    const char *allowed;
    int rooms = !strcmp(seg[1], "rooms"), users = !strcmp(seg[1], "users");
    if (rooms && n == 3) {
        allowed = "GET,PUT,DELETE";
        op = API_ROOM_GET;
    } else if (rooms && n == 4 && !strcmp(seg[3], "messages")) {
        allowed = "GET,POST";
        op = API_HISTORY;
    } else if (rooms && n == 5 && !strcmp(seg[3], "messages")) {
        allowed = "GET,PATCH,DELETE";
        op = API_MSG_GET;
    } else if (rooms && n == 4 && !strcmp(seg[3], "members")) {
        allowed = "GET";
        op = API_MEMBERS;
    } else if (rooms && n == 5 && !strcmp(seg[3], "members")) {
        allowed = "PUT,DELETE";
        op = API_MEMBER_PUT;
    } else if (users && n == 4 && !strcmp(seg[3], "rooms")) {
        allowed = "GET";
        op = API_USER_ROOMS;
    } else if (users && n == 4 && !strcmp(seg[3], "disconnect")) {
        allowed = "POST";
        op = API_DISCONNECT;
    } else {
        api_error(req, 404, "not_found", "no such path (see docs/api.yaml)");
        return;
    }
    if (!api_method(req, allowed))
        return;
    const char *m = http_req_method(req);
    if (op == API_ROOM_GET && !strcmp(m, "PUT"))
        op = API_ROOM_PUT;
    else if (op == API_ROOM_GET && !strcmp(m, "DELETE"))
        op = API_ROOM_DELETE;
    else if (op == API_HISTORY && !strcmp(m, "POST"))
        op = API_PUBLISH;
    else if (op == API_MEMBER_PUT && !strcmp(m, "DELETE"))
        op = API_MEMBER_DELETE;
    else if (op == API_MSG_GET && !strcmp(m, "PATCH"))
        op = API_MSG_EDIT;
    else if (op == API_MSG_GET && !strcmp(m, "DELETE"))
        op = API_MSG_DELETE;
    /* Path parameters. */
    const char *room = rooms ? seg[2] : NULL, *uid = users ? seg[2] : NULL;
    if (room && !proto_room_valid(room, strlen(room))) {
        api_error(req, 400, "bad_request", "room must be 1..128 of A-Za-z0-9_.:- (dm rooms: dm:A:B with A<B)");
        return;
    }
    if (op == API_MEMBER_PUT || op == API_MEMBER_DELETE)
        uid = seg[4];
    if (uid && !api_user_ok(uid)) {
        api_error(req, 400, "bad_request", "user must be 1..64 of A-Za-z0-9_.-");
        return;
    }
    if (op == API_MSG_GET || op == API_MSG_EDIT || op == API_MSG_DELETE) {
        size_t idl = strlen(seg[4]);
        int hex = idl == MSG_ID_LEN;
        for (size_t i = 0; hex && i < idl; i++)
            hex = (seg[4][i] >= '0' && seg[4][i] <= '9') || (seg[4][i] >= 'a' && seg[4][i] <= 'f');
        if (!hex) {
            api_error(req, 400, "bad_request", "a message id is 32 lower-case hex characters");
            return;
        }
    }
    if (a->closing || a->inflight >= API_MAX_INFLIGHT) {
        api_unavailable(req, "too many requests in flight, retry");
        return;
    }
    gateway_t *g = a->g;
    struct api_req *q;
    switch (op) {
    case API_PUBLISH:
        api_publish(a, req, room);
        break;
    case API_MSG_GET:
        q = api_req_new(a, req, op, room);
        strcpy(q->id, seg[4]);
        db_msg_find(gw_pg(g, q->room), q->room, q->id, api_on_msg, q);
        break;
    case API_MSG_EDIT:
    case API_MSG_DELETE:
        api_change(a, req, op, room, seg[4]);
        break;
    case API_HISTORY: {
        char as[32], ls[32];
        int ar = api_query(req, "after", as, sizeof as), lr = api_query(req, "limit", ls, sizeof ls);
        int64_t after = 0, limit = 100;
        if (ar < 0 || lr < 0 || (ar && api_parse_int(as, 0, INT64_MAX / 2, &after)) ||
            (lr && api_parse_int(ls, 1, INT32_MAX, &limit))) {
            api_error(req, 400, "bad_request", "after >= 0, limit >= 1 (integers)");
            break;
        }
        if (g->hist_inflight >= g->conf->history_concurrency) {
            api_unavailable(req, "too many history reads, retry");
            break;
        }
        g->hist_inflight++;
        q = api_req_new(a, req, op, room);
        gw_history_read(g, q->room, "", after, limit > g->conf->history_max ? g->conf->history_max : (int)limit,
                        api_on_history, q);
        break;
    }
    case API_ROOM_PUT:
        api_room_put(a, req, room);
        break;
    case API_ROOM_GET:
        q = api_req_new(a, req, op, room);
        db_room_get(gw_pg(g, q->room), q->room, api_on_room_get, q);
        break;
    case API_ROOM_DELETE:
        q = api_req_new(a, req, op, room);
        db_room_archive(gw_pg(g, q->room), q->room, api_on_room_archive, q);
        break;
    case API_MEMBERS: {
        char as[AUTH_USER_MAX + 1], ls[32];
        int ar = api_query(req, "after", as, sizeof as), lr = api_query(req, "limit", ls, sizeof ls);
        int64_t limit = 100;
        if (ar < 0 || lr < 0 || (ar && !api_user_ok(as)) ||
            (lr && api_parse_int(ls, 1, API_MEMBERS_MAX, &limit))) {
            api_error(req, 400, "bad_request", "after: a user id; limit: 1..1000");
            break;
        }
        q = api_req_new(a, req, op, room);
        q->limit = (int)limit;
        if (ar)
            strcpy(q->after_user, as);
        db_room_members(gw_pg(g, q->room), q->room, q->after_user, q->limit + 1, api_on_members, q);
        break;
    }
    case API_MEMBER_PUT:
    case API_MEMBER_DELETE:
        q = api_req_new(a, req, op, room);
        strcpy(q->user, uid);
        if (op == API_MEMBER_PUT)
            db_member_add(gw_pg(g, q->user), q->room, q->user, g->conf->max_rooms_per_user, api_on_member_add, q);
        else
            db_leave(gw_pg(g, q->user), q->room, q->user, api_on_member_remove, q);
        break;
    case API_USER_ROOMS:
        q = api_req_new(a, req, op, NULL);
        strcpy(q->user, uid);
        db_rooms(gw_pg(g, q->user), q->user, api_on_user_rooms, q);
        break;
    case API_DISCONNECT:
        api_disconnect(a, req, uid);
        break;
    }
}

/* ---- lifecycle ---- */

int api_init(api_t **out, uv_loop_t *loop, const struct conf *c, gateway_t *g)
{
    api_t *a = calloc(1, sizeof *a);
    CHATD_ASSERT(a != NULL);
    a->loop = loop;
    a->conf = c;
    a->g = g;
    SHA256((const unsigned char *)c->api_key, strlen(c->api_key), a->key);
    if (c->api_key_previous[0]) {
        SHA256((const unsigned char *)c->api_key_previous, strlen(c->api_key_previous), a->prev);
        a->has_prev = 1;
    }
    a->m_requests = metrics_counter("chatd_api_requests_total", "server API requests received", NULL);
    a->m_refused = metrics_counter("chatd_api_unauthorized_total",
                                   "server API requests refused for a missing or wrong key", NULL);
    int rc = http_server_init(&a->http, loop, c->api.host, c->api.port, api_on_http, a);
    if (rc) {
        log_error("api_listen_failed", "addr=%s:%d err=%d", c->api.host, c->api.port, rc);
        free(a);
        return rc;
    }
    struct http_limits hl = {
        .max_header = c->max_header,
        .max_url = c->max_url,
        .request_timeout_ms = (unsigned)c->request_timeout_ms,
        .max_conns = (unsigned)c->max_http_conns,
        .rate = c->rate,
        .rate_burst = c->rate_burst,
    };
    http_server_set_limits(a->http, &hl);
    log_info("api_listening", "addr=%s:%d rotation=%d", c->api.host, http_server_port(a->http), a->has_prev);
    *out = a;
    return 0;
}

int api_port(const api_t *a) { return http_server_port(a->http); }

void api_close(api_t *a)
{
    a->closing = 1;
    http_server_close(a->http);
}

void api_free(api_t *a) { free(a); }
