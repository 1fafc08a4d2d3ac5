/* fuzz_record: record_send_decode (kafka/record.h), the chat-send decoder
 * every classifier runs on what the gateways produced.
 *
 * Input: one chat-send value; the key (room) is fixed. On success the
 * message is re-encoded both ways the pipeline does it: record_send_encode
 * (a resend, decoded again here) and record_msg_frame (the client frame,
 * parsed with cJSON). Every field must survive the round trip.
 */
#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka/record.h"
#include "lib/err.h"

#define FUZZ_ROOM "general"

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_record: invariant failed at line %d: %s\n", line, what);
    abort();
}

static int str_eq(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static const char *obj_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The client frame carries every field of m. */
static void check_frame(const struct chat_msg *m)
{
    size_t n;
    char *f = record_msg_frame(m, &n);
    CHECK(f != NULL && strlen(f) == n);
    cJSON *o = cJSON_ParseWithLength(f, n);
    CHECK(cJSON_IsObject(o));
    CHECK(str_eq(obj_str(o, "op"), record_kind_name(m->kind)));
    CHECK(m->kind == MSG_KIND_MSG ? obj_str(o, "target") == NULL : str_eq(obj_str(o, "target"), m->target));
    CHECK(str_eq(obj_str(o, "room"), FUZZ_ROOM));
    CHECK(str_eq(obj_str(o, "id"), m->id));
    CHECK(str_eq(obj_str(o, "from"), m->from));
    CHECK(str_eq(obj_str(o, "cid"), m->cid));
    const char *text = obj_str(o, "text");
    if (m->kind == MSG_KIND_DELETE)
        CHECK(text == NULL); /* a delete carries no text */
    else
        CHECK(text && strlen(text) == m->text_len && memcmp(text, m->text, m->text_len) == 0);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "ts");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(o, "seq");
    CHECK(cJSON_IsNumber(ts) && (int64_t)ts->valuedouble == m->ts);
    CHECK(cJSON_IsNumber(seq) && seq->valuedouble == 0);
    cJSON_Delete(o);
    free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct chat_msg m, m2;
    void *owner = (void *)1, *owner2 = NULL;
    int rc = record_send_decode(FUZZ_ROOM, strlen(FUZZ_ROOM), (const char *)data, size, &m, &owner);
    CHECK(rc == 0 || rc == ERR_BAD_REQUEST);
    if (rc != 0) {
        CHECK(owner == NULL);
        return 0;
    }
    CHECK(owner != NULL);
    CHECK(m.room_len == strlen(FUZZ_ROOM) && memcmp(m.room, FUZZ_ROOM, m.room_len) == 0);
    CHECK(m.id && strlen(m.id) == MSG_ID_LEN && m.from && m.text);
    CHECK(strlen(m.text) == m.text_len && m.seq == 0);
    /* An edit or delete has a well-formed target; an edit a text. */
    CHECK(m.kind == MSG_KIND_MSG || m.kind == MSG_KIND_EDIT || m.kind == MSG_KIND_DELETE);
    CHECK(m.kind == MSG_KIND_MSG ? m.target == NULL && !m.mod : m.target && strlen(m.target) == MSG_ID_LEN);
    CHECK(m.kind != MSG_KIND_EDIT || m.text_len > 0);

    size_t n;
    char *val = record_send_encode(&m, &n);
    CHECK(val != NULL && strlen(val) == n);
    rc = record_send_decode(FUZZ_ROOM, strlen(FUZZ_ROOM), val, n, &m2, &owner2);
    CHECK(rc == 0);
    CHECK(str_eq(m2.id, m.id) && str_eq(m2.from, m.from) && str_eq(m2.cid, m.cid));
    CHECK(m2.text_len == m.text_len && memcmp(m2.text, m.text, m.text_len) == 0);
    CHECK(m2.ts == m.ts && m2.gw == m.gw);
    CHECK(m2.kind == m.kind && str_eq(m2.target, m.target) && m2.mod == m.mod);
    check_frame(&m);

    record_decoded_free(owner2);
    free(val);
    record_decoded_free(owner);
    return 0;
}
