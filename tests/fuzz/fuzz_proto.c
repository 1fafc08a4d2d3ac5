/* fuzz_proto: proto_parse (net/proto.h), the client command decoder.
 *
 * Input: one client frame. Limits are the server defaults (conf/conf.c:
 * max-text 4096, history-max 1000). Besides "no crash, no leak", every
 * accepted request must satisfy what the gateway relies on without
 * re-checking, and every error must render as a valid JSON reply.
 */
#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/jbuf.h"
#include "net/auth.h"
#include "net/proto.h"

#define FUZZ_USER "alice"

/* Aborts with a message libFuzzer shows next to the stack. */
#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_proto: invariant failed at line %d: %s\n", line, what);
    abort();
}

/* s is a complete JSON value (the rid is echoed verbatim into replies). */
static int json_value_valid(const char *s)
{
    cJSON *v = cJSON_Parse(s);
    cJSON_Delete(v);
    return v != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct proto_limits lim = { 4096, 1000 };
    struct proto_req r;
    const char *why = NULL;
    int rc = proto_parse((const char *)data, size, &lim, FUZZ_USER, &r, &why);

    CHECK(rc == 0 || rc == ERR_BAD_REQUEST || rc == ERR_TOO_LARGE || rc == ERR_FORBIDDEN);
    CHECK(strlen(r.rid) < sizeof r.rid);
    CHECK(!r.rid[0] || json_value_valid(r.rid));
    CHECK(strlen(r.room) <= PROTO_ROOM_MAX && strlen(r.cid) <= PROTO_CID_MAX);
    if (rc == 0) {
        /* A NUL would have cut a string short (net/proto.c): never accepted. */
        CHECK(memchr(data, 0, size) == NULL);
        CHECK(!memmem(data, size, "\\u0000", 6) || memmem(data, size, "\\\\u0000", 7));
        CHECK((unsigned)r.op <= OP_DELETE);
        CHECK(proto_op_name(r.op) != NULL);
        if (r.op != OP_ROOMS) {
            CHECK(proto_room_valid(r.room, strlen(r.room)));
            CHECK(r.op != OP_JOIN || proto_room_allows(r.room, FUZZ_USER));
        }
        if (r.op == OP_SEND || r.op == OP_EDIT) {
            CHECK(r.text != NULL && r.text_len >= 1 && r.text_len <= lim.max_text);
            CHECK(strlen(r.text) == r.text_len);
        } else {
            CHECK(r.text == NULL && (r.op == OP_DELETE || r.cid[0] == 0));
        }
        /* edit, delete: the target is a message id, as the store compares it. */
        if (r.op == OP_EDIT || r.op == OP_DELETE) {
            CHECK(strlen(r.target) == PROTO_ID_LEN);
            CHECK(strspn(r.target, "0123456789abcdef") == PROTO_ID_LEN);
        } else {
            CHECK(r.target[0] == 0);
        }
        if (r.op == OP_SYNC)
            CHECK(r.after >= 0 && r.limit >= 1 && r.limit <= lim.history_max);
        if (r.op == OP_READ)
            CHECK(r.seq >= 0);
    } else {
        CHECK(why != NULL && why[0]);
        /* The reply the gateway sends back must be one JSON object. */
        struct jbuf b;
        jbuf_init(&b, 256);
        proto_error(&b, r.rid, rc, why);
        CHECK(!b.failed);
        size_t n;
        char *s = jbuf_take(&b, &n);
        CHECK(s != NULL);
        cJSON *o = cJSON_ParseWithLength(s, n);
        CHECK(cJSON_IsObject(o));
        cJSON_Delete(o);
        free(s);
    }
    proto_req_free(&r);
    CHECK(r.owner == NULL);
    return 0;
}
