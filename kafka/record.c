#include "kafka/record.h"

#include <cJSON.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"

const char *record_kind_name(char kind)
{
    return kind == MSG_KIND_EDIT ? "edit" : kind == MSG_KIND_DELETE ? "delete" : "msg";
}

static int record_is_change(const struct chat_msg *m)
{
    return m->kind == MSG_KIND_EDIT || m->kind == MSG_KIND_DELETE;
}

char *record_send_encode(const struct chat_msg *m, size_t *len)
{
    struct jbuf b;
    jbuf_init(&b, 128 + m->text_len);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "id", m->id);
    jbuf_kv_strz(&b, "from", m->from);
    if (m->cid)
        jbuf_kv_strz(&b, "cid", m->cid);
    jbuf_kv_str(&b, "text", m->text, m->text_len);
    jbuf_kv_int(&b, "ts", m->ts);
    jbuf_kv_int(&b, "gw", m->gw);
    if (record_is_change(m)) {
        jbuf_kv_strz(&b, "kind", record_kind_name(m->kind));
        jbuf_kv_strz(&b, "target", m->target);
        if (m->mod) {
            jbuf_key(&b, "mod");
            jbuf_bool(&b, 1);
        }
    }
    jbuf_obj_close(&b);
    return jbuf_take(&b, len);
}

static const char *record_get_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int record_send_decode(const char *room, size_t room_len, const char *val, size_t len,
                       struct chat_msg *m, void **owner)
{
    cJSON *o = cJSON_ParseWithLength(val, len);
    *owner = NULL;
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return ERR_BAD_REQUEST;
    }
    memset(m, 0, sizeof *m);
    m->room = room;
    m->room_len = room_len;
    m->id = record_get_str(o, "id");
    m->from = record_get_str(o, "from");
    m->cid = record_get_str(o, "cid");
    m->text = record_get_str(o, "text");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "ts");
    const cJSON *gw = cJSON_GetObjectItemCaseSensitive(o, "gw");
    /* ts is converted to an integer: bound it first (milliseconds up to the
     * year ~33658), a double beyond int64 would be undefined behaviour. */
    if (!m->id || strlen(m->id) != MSG_ID_LEN || !m->from || !m->text || !cJSON_IsNumber(ts) ||
        !(ts->valuedouble >= 0 && ts->valuedouble < 1e15)) {
        cJSON_Delete(o);
        return ERR_BAD_REQUEST;
    }
    /* An edit or delete: its kind and a target id, else it is not one. */
    const char *kind = record_get_str(o, "kind");
    m->kind = MSG_KIND_MSG;
    if (kind) {
        m->kind = !strcmp(kind, "edit") ? MSG_KIND_EDIT : !strcmp(kind, "delete") ? MSG_KIND_DELETE : 0;
        m->target = record_get_str(o, "target");
        m->mod = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "mod"));
        if (!m->kind || !m->target || strlen(m->target) != MSG_ID_LEN ||
            (m->kind == MSG_KIND_EDIT && !m->text[0])) {
            cJSON_Delete(o);
            return ERR_BAD_REQUEST;
        }
    }
    m->text_len = strlen(m->text);
    m->ts = (int64_t)ts->valuedouble;
    m->gw = cJSON_IsNumber(gw) && gw->valuedouble >= 0 && gw->valuedouble < 65536 ? gw->valueint : -1;
    *owner = o;
    return 0;
}

void record_decoded_free(void *owner) { cJSON_Delete(owner); }

char *record_msg_frame(const struct chat_msg *m, size_t *len)
{
    struct jbuf b;
    jbuf_init(&b, 160 + m->text_len + m->room_len);
    jbuf_obj_open(&b);
    jbuf_kv_strz(&b, "op", record_kind_name(m->kind));
    jbuf_kv_str(&b, "room", m->room, m->room_len);
    jbuf_kv_int(&b, "seq", m->seq);
    jbuf_kv_strz(&b, "id", m->id);
    jbuf_kv_strz(&b, "from", m->from);
    if (m->cid)
        jbuf_kv_strz(&b, "cid", m->cid);
    if (record_is_change(m))
        jbuf_kv_strz(&b, "target", m->target);
    if (m->kind != MSG_KIND_DELETE)
        jbuf_kv_str(&b, "text", m->text, m->text_len);
    jbuf_kv_int(&b, "ts", m->ts); /* last: record_msg_frame_ts reads it there */
    jbuf_obj_close(&b);
    return jbuf_take(&b, len);
}

int64_t record_msg_frame_ts(const char *val, size_t len)
{
    static const char key[] = ",\"ts\":";
    size_t end = len, digits = 0;
    int64_t ts = 0, mul = 1;
    if (end == 0 || val[end - 1] != '}')
        return -1;
    end--;
    /* 15 digits: the bound record_send_decode puts on ts (< 1e15). */
    while (end > 0 && val[end - 1] >= '0' && val[end - 1] <= '9' && digits < 15) {
        ts += (val[end - 1] - '0') * mul;
        mul *= 10;
        end--;
        digits++;
    }
    if (digits == 0 || end < sizeof key - 1 || memcmp(val + end - (sizeof key - 1), key, sizeof key - 1))
        return -1;
    return ts;
}

static void record_hex(char *out, const unsigned char *in, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = 0;
}

/* NUL separators: neither room, user, cid nor target can contain a NUL. A
 * change's input has one field more (kind and target, after a third NUL),
 * so it never equals a message's. */
static void record_derive_id(char out[MSG_ID_LEN + 1], const char *room, size_t room_len,
                             const char *user, const char *cid, char kind, const char *target)
{
    unsigned char d[32];
    if (!cid) {
        /* RAND_bytes fails only without an entropy source: nothing sane to do. */
        CHATD_ASSERT(RAND_bytes(d, MSG_ID_LEN / 2) == 1);
        record_hex(out, d, MSG_ID_LEN / 2);
        return;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int dl = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, room, room_len) && EVP_DigestUpdate(ctx, "", 1) &&
             EVP_DigestUpdate(ctx, user, strlen(user) + 1) &&
             EVP_DigestUpdate(ctx, cid, strlen(cid));
    if (ok && target)
        ok = EVP_DigestUpdate(ctx, "", 1) && EVP_DigestUpdate(ctx, &kind, 1) &&
             EVP_DigestUpdate(ctx, target, strlen(target));
    ok = ok && EVP_DigestFinal_ex(ctx, d, &dl);
    EVP_MD_CTX_free(ctx);
    CHATD_ASSERT(ok);
    record_hex(out, d, MSG_ID_LEN / 2);
}

void record_msg_id(char out[MSG_ID_LEN + 1], const char *room, size_t room_len, const char *user,
                   const char *cid)
{
    record_derive_id(out, room, room_len, user, cid, 0, NULL);
}

void record_change_id(char out[MSG_ID_LEN + 1], const char *room, size_t room_len,
                      const char *user, const char *cid, char kind, const char *target)
{
    record_derive_id(out, room, room_len, user, cid, kind, target);
}
