/* Unit tests of the pure parts: conf, proto, jbuf, record, auth. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "kafka/record.h"
#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/loopstat.h"
#include "lib/metrics.h"
#include "lib/slab.h"
#include "net/auth.h"
#include "net/http.h"
#include "net/proto.h"

/* ---- conf ---- */

static int conf_try(struct conf *c, int argc, char **argv)
{
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    int rc = conf_load(c, argc, argv);
    fclose(stderr);
    stderr = saved;
    return rc;
}

static void test_conf_defaults(void **state)
{
    (void)state;
    struct conf c;
    char *argv[] = { "chatd", "--role=classifier", "--kafka=127.0.0.1:9092" };
    assert_int_equal(conf_try(&c, 3, argv), 0);
    assert_int_equal(c.role, ROLE_CLASSIFIER);
    assert_string_equal(c.listen.host, "0.0.0.0");
    assert_int_equal(c.listen.port, 8080);
    assert_int_equal(c.admin.set, 0);
    assert_string_equal(c.topic_send, "chat-send");
    assert_int_equal(c.max_frame, 65536);
    assert_int_equal(c.history_max, 1000);
    assert_int_equal(c.max_conns, 10000);
    assert_int_equal(c.max_conns_per_user, 32);
    assert_int_equal(c.max_rooms_per_user, 1000);
    assert_int_equal(c.max_inflight_per_user, 16);
    assert_string_equal(c.origins, "");
    assert_int_equal(c.max_header, 16384);
    assert_int_equal(c.max_url, 8192);
    assert_int_equal(c.request_timeout_ms, 10000);
    assert_int_equal(c.max_http_conns, 4096);
    assert_string_equal(c.jwt_secret_previous, "");
}

static void test_conf_security_flags(void **state)
{
    (void)state;
    struct conf c;
    setenv("CHATD_JWT_SECRET", "new", 1);
    setenv("CHATD_JWT_SECRET_PREVIOUS", "old", 1);
    setenv("CHATD_MAX_CONNS_PER_USER", "3", 1);
    char *argv[] = { "chatd", "--role=gateway", "--kafka=h:1", "--origins=https://a.example,https://b.example",
                     "--max-header-bytes=4096", "--max-url-bytes=2048", "--request-timeout-ms=500",
                     "--max-conns=7", "--max-http-conns=9" };
    assert_int_equal(conf_try(&c, 9, argv), 0);
    assert_string_equal(c.jwt_secret, "new");
    assert_string_equal(c.jwt_secret_previous, "old");
    assert_int_equal(c.max_conns_per_user, 3);
    assert_string_equal(c.origins, "https://a.example,https://b.example");
    assert_int_equal(c.max_header, 4096);
    assert_int_equal(c.max_url, 2048);
    assert_int_equal(c.request_timeout_ms, 500);
    assert_int_equal(c.max_conns, 7);
    assert_int_equal(c.max_http_conns, 9);
    /* a URL limit above the header limit cannot hold */
    char *bad[] = { "chatd", "--role=gateway", "--kafka=h:1", "--max-header-bytes=2048", "--max-url-bytes=4096" };
    assert_int_equal(conf_try(&c, 5, bad), -1);
    /* A header limit whose request buffer would not fit the request slab
     * (lib/slab.h) is refused at start; the largest that fits is taken. */
    char big[64], most[64];
    snprintf(big, sizeof big, "--max-header-bytes=%d", 256 * 1024);
    char *over[] = { "chatd", "--role=gateway", "--kafka=h:1", big };
    assert_int_equal(conf_try(&c, 4, over), -1);
    snprintf(big, sizeof big, "--max-header-bytes=%zu", http_max_header_limit() + 1);
    assert_int_equal(conf_try(&c, 4, over), -1);
    snprintf(most, sizeof most, "--max-header-bytes=%zu", http_max_header_limit());
    char *fits[] = { "chatd", "--role=gateway", "--kafka=h:1", most };
    assert_int_equal(conf_try(&c, 4, fits), 0);
    /* A reply page (half of --send-queue) must hold one --max-text message,
     * every byte escaped. */
    char *tight[] = { "chatd", "--role=gateway", "--kafka=h:1", "--send-queue=16384" };
    assert_int_equal(conf_try(&c, 4, tight), -1);
    char *small_text[] = { "chatd", "--role=gateway", "--kafka=h:1", "--send-queue=16384", "--max-text=512",
                           "--max-rooms-per-user=10" };
    assert_int_equal(conf_try(&c, 6, small_text), 0);
    /* ... and the rooms reply of --max-rooms-per-user rooms (200 B each). */
    char *many_rooms[] = { "chatd", "--role=gateway", "--kafka=h:1", "--send-queue=65536" };
    assert_int_equal(conf_try(&c, 4, many_rooms), -1);
    char *few_rooms[] = { "chatd", "--role=gateway", "--kafka=h:1", "--send-queue=65536", "--max-rooms-per-user=100" };
    assert_int_equal(conf_try(&c, 5, few_rooms), 0);
    assert_int_equal(c.max_rooms_per_user, 100);
    
    unsetenv("CHATD_JWT_SECRET");
    unsetenv("CHATD_JWT_SECRET_PREVIOUS");
    unsetenv("CHATD_MAX_CONNS_PER_USER");
}

static void test_conf_flags_and_env(void **state)
{
    (void)state;
    struct conf c;
    setenv("CHATD_LISTEN", "127.0.0.1:9000", 1);
    setenv("CHATD_GATEWAY_ID", "3", 1);
    setenv("CHATD_JWT_SECRET", "s3cret", 1);
    char *argv[] = { "chatd", "--role=gateway", "--listen=[::1]:7000", "--kafka", "h:1",
                     "--kafka-opt=linger.ms=5", "--kafka-opt", "acks=all", "--dev-tokens",
                     "--rate=2.5" };
    assert_int_equal(conf_try(&c, 10, argv), 0);
    assert_string_equal(c.listen.host, "::1"); /* the command line wins */
    assert_int_equal(c.listen.port, 7000);
    assert_int_equal(c.gateway_id, 3);         /* from the environment */
    assert_string_equal(c.jwt_secret, "s3cret");
    assert_int_equal(c.n_kafka_opts, 2);
    assert_string_equal(c.kafka_opts[1], "acks=all");
    assert_int_equal(c.dev_tokens, 1);
    assert_true(c.rate > 2.4 && c.rate < 2.6);
    unsetenv("CHATD_LISTEN");
    unsetenv("CHATD_GATEWAY_ID");
    unsetenv("CHATD_JWT_SECRET");
}

/* --retention: a duration with a unit, or 0 (the default: keep for ever);
 * anything else is refused at start, never read as 0. */
static void test_conf_retention(void **state)
{
    (void)state;
    struct conf c;
    char *def[] = { "chatd", "--role=classifier", "--kafka=h:1" };
    assert_int_equal(conf_try(&c, 3, def), 0);
    assert_int_equal(c.retention_s, 0);
    const struct { const char *v; long long s; } ok[] = {
        { "--retention=90d", 90LL * 86400 }, { "--retention=36h", 36LL * 3600 },
        { "--retention=15m", 900 }, { "--retention=45s", 45 }, { "--retention=0", 0 },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *argv[] = { "chatd", "--role=classifier", "--kafka=h:1", (char *)ok[i].v };
        assert_int_equal(conf_try(&c, 4, argv), 0);
        assert_int_equal(c.retention_s, ok[i].s);
    }
    const char *bad[] = { "--retention=90", "--retention=d", "--retention=-5d", "--retention=5w",
                          "--retention=5dd", "--retention=", "--retention=99999999999d",
                          "--retention=0d" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = { "chatd", "--role=classifier", "--kafka=h:1", (char *)bad[i] };
        assert_int_equal(conf_try(&c, 4, argv), -1);
    }
    /* --resend-window: the same syntax; 0 (every month) by default. */
    assert_int_equal(conf_try(&c, 3, def), 0);
    assert_int_equal(c.resend_window_s, 0);
    char *win[] = { "chatd", "--role=classifier", "--kafka=h:1", "--resend-window=31d" };
    assert_int_equal(conf_try(&c, 4, win), 0);
    assert_int_equal(c.resend_window_s, 31LL * 86400);
    char *badwin[] = { "chatd", "--role=classifier", "--kafka=h:1", "--resend-window=31" };
    assert_int_equal(conf_try(&c, 4, badwin), -1);
    /* --compact-after: the same syntax; 2 days by default, 0 turns it off. */
    assert_int_equal(conf_try(&c, 3, def), 0);
    assert_int_equal(c.compact_after_s, 2LL * 86400);
    char *off[] = { "chatd", "--role=classifier", "--kafka=h:1", "--compact-after=0" };
    assert_int_equal(conf_try(&c, 4, off), 0);
    assert_int_equal(c.compact_after_s, 0);
    char *badc[] = { "chatd", "--role=classifier", "--kafka=h:1", "--compact-after=2" };
    assert_int_equal(conf_try(&c, 4, badc), -1);
}

static void test_conf_refuses(void **state)
{
    (void)state;
    struct conf c;
    char *bad[][3] = {
        { "chatd", "--role=chef", NULL },
        { "chatd", "--no-such-flag=1", NULL },
        { "chatd", "--listen=nohostport", NULL },
        { "chatd", "--listen=1.2.3.4:99999", NULL },
        { "chatd", "--max-frame=12abc", NULL },
        { "chatd", "--rate=-1", NULL },
        { "chatd", "--kafka-opt=novalue", NULL },
        { "chatd", "positional", NULL },
        { "chatd", "--role=gateway", NULL },          /* no JWT secret */
        { "chatd", "--admin-listen=:9090", NULL },     /* no host */
        { "chatd", "--admin-listen=9090", NULL },
        { "chatd", "--admin-listen=0.0.0.0:8080", NULL }, /* the client port */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int argc = bad[i][2] ? 3 : 2;
        assert_int_equal(conf_try(&c, argc, bad[i]), -1);
    }
    setenv("CHATD_HEARTBEAT", "zero", 1);
    char *argv[] = { "chatd", "--role=broker" };
    assert_int_equal(conf_try(&c, 2, argv), -1);
    unsetenv("CHATD_HEARTBEAT");
}

static void test_conf_admin_listen(void **state)
{
    (void)state;
    struct conf c;
    char *argv[] = { "chatd", "--role=classifier", "--kafka=h:1", "--admin-listen=[::]:9090" };
    assert_int_equal(conf_try(&c, 4, argv), 0);
    assert_int_equal(c.admin.set, 1);
    assert_string_equal(c.admin.host, "::");
    assert_int_equal(c.admin.port, 9090);
    /* "" turns it off again (an overlay can unset it) */
    setenv("CHATD_ADMIN_LISTEN", "127.0.0.1:9090", 1);
    char *off[] = { "chatd", "--role=classifier", "--kafka=h:1", "--admin-listen=" };
    assert_int_equal(conf_try(&c, 4, off), 0);
    assert_int_equal(c.admin.set, 0);
    assert_int_equal(conf_try(&c, 3, off), 0); /* from the environment */
    assert_int_equal(c.admin.set, 1);
    assert_string_equal(c.admin.host, "127.0.0.1");
    unsetenv("CHATD_ADMIN_LISTEN");
}

/* ---- proto ---- */

static const struct proto_limits lim = { .max_text = 10, .history_max = 1000 };

static int parse(const char *json, struct proto_req *r)
{
    const char *why = NULL;
    int rc = proto_parse(json, strlen(json), &lim, "bob", r, &why);
    if (rc)
        assert_non_null(why);
    return rc;
}

static void test_proto_ops(void **state)
{
    (void)state;
    struct proto_req r;
    assert_int_equal(parse("{\"op\":\"join\",\"room\":\"lobby\",\"rid\":7}", &r), 0);
    assert_int_equal(r.op, OP_JOIN);
    assert_string_equal(r.room, "lobby");
    assert_string_equal(r.rid, "7");
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"hi\",\"cid\":\"c1\",\"rid\":\"x\\\"y\"}", &r), 0);
    assert_int_equal(r.op, OP_SEND);
    assert_int_equal(r.text_len, 2);
    assert_string_equal(r.cid, "c1");
    assert_string_equal(r.rid, "\"x\\\"y\"");
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"sync\",\"room\":\"a\"}", &r), 0);
    assert_int_equal(r.after, 0);
    assert_int_equal(r.limit, 100);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"sync\",\"room\":\"a\",\"after\":5,\"limit\":5000}", &r), 0);
    assert_int_equal(r.after, 5);
    assert_int_equal(r.limit, 1000); /* clamped */
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"rooms\"}", &r), 0);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"read\",\"room\":\"a\",\"seq\":3}", &r), 0);
    assert_int_equal(r.seq, 3);
    proto_req_free(&r);
    /* extension 2: the owner's add and remove */
    assert_int_equal(parse("{\"op\":\"add\",\"room\":\"team\",\"user\":\"bob\"}", &r), 0);
    assert_int_equal(r.op, OP_ADD);
    assert_string_equal(r.user, "bob");
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"remove\",\"room\":\"team\",\"user\":\"bob\"}", &r), 0);
    assert_int_equal(r.op, OP_REMOVE);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"add\",\"room\":\"team\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"add\",\"room\":\"team\",\"user\":\"a b\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"add\",\"room\":\"team\",\"user\":7}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"remove\",\"room\":\"dm:a:b\",\"user\":\"b\"}", &r), ERR_FORBIDDEN);
    proto_req_free(&r);
}

/* A NUL would cut the string cJSON hands over: refused, never truncated. */
static void test_proto_nul(void **state)
{
    (void)state;
    struct proto_req r;
    const char *why = NULL;
    static const char raw[] = "{\"op\":\"send\",\"room\":\"a\",\"text\":\"x\0y\"}";
    assert_int_equal(proto_parse(raw, sizeof raw - 1, &lim, "bob", &r, &why), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"x\\u0000y\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"join\",\"room\":\"lobby\\u0000x\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    /* an escaped backslash followed by u0000 is text, not a NUL */
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"\\\\u0000\"}", &r), 0);
    assert_int_equal(r.text_len, 6);
    assert_string_equal(r.text, "\\u0000");
    proto_req_free(&r);
    /* other escapes decode byte-exact */
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"\\u0001\\ud83d\\ude00\"}", &r), 0);
    assert_int_equal(r.text_len, 5);
    assert_memory_equal(r.text, "\x01\xf0\x9f\x98\x80", 5);
    proto_req_free(&r);
    /* malformed \u escapes, which cJSON reads as code point 0 */
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"o \\u0e7 x\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"\\u00g0\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"\\u00E9\"}", &r), 0);
    assert_string_equal(r.text, "\xc3\xa9");
    proto_req_free(&r);
    /* one object per frame: trailing data is refused, whitespace is not */
    assert_int_equal(parse("{\"op\":\"rooms\"}{\"op\":\"rooms\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse("{\"op\":\"rooms\"} x", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
    assert_int_equal(parse(" {\"op\":\"rooms\"} \r\n\t", &r), 0);
    proto_req_free(&r);
        /* lone surrogates are refused by cJSON */
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"a\",\"text\":\"\\udc00\"}", &r), ERR_BAD_REQUEST);
    proto_req_free(&r);
}

static void test_proto_errors(void **state)
{
    (void)state;
    struct proto_req r;
    static const struct {
        const char *json;
        int err;
    } cases[] = {
        { "not json", ERR_BAD_REQUEST },
        { "[1,2]", ERR_BAD_REQUEST },
        { "{}", ERR_BAD_REQUEST },
        { "{\"op\":\"fly\"}", ERR_BAD_REQUEST },
        { "{\"op\":7}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\",\"room\":\"a b\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\",\"room\":\"\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\",\"room\":\"dm:zed:amy\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\",\"room\":\"dm:amy\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"join\",\"room\":\"dm:amy:zed\"}", ERR_FORBIDDEN },
        { "{\"op\":\"send\",\"room\":\"a\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"send\",\"room\":\"a\",\"text\":\"\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"send\",\"room\":\"a\",\"text\":5}", ERR_BAD_REQUEST },
        { "{\"op\":\"send\",\"room\":\"a\",\"text\":\"01234567890\"}", ERR_TOO_LARGE },
        { "{\"op\":\"send\",\"room\":\"a\",\"text\":\"x\",\"cid\":\"\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"sync\",\"room\":\"a\",\"after\":-1}", ERR_BAD_REQUEST },
        { "{\"op\":\"sync\",\"room\":\"a\",\"limit\":0}", ERR_BAD_REQUEST },
        { "{\"op\":\"sync\",\"room\":\"a\",\"limit\":1.5}", ERR_BAD_REQUEST },
        { "{\"op\":\"read\",\"room\":\"a\"}", ERR_BAD_REQUEST },
        { "{\"op\":\"rooms\",\"rid\":[1]}", ERR_BAD_REQUEST },
        { "{\"op\":\"rooms\",\"rid\":1.5}", ERR_BAD_REQUEST },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = parse(cases[i].json, &r);
        if (rc != cases[i].err)
            fail_msg("%s: got %d want %d", cases[i].json, rc, cases[i].err);
        proto_req_free(&r);
    }
    /* the rid is echoed even when the request is refused */
    assert_int_equal(parse("{\"op\":\"fly\",\"rid\":9}", &r), ERR_BAD_REQUEST);
    assert_string_equal(r.rid, "9");
    proto_req_free(&r);
}

static void test_proto_rooms(void **state)
{
    (void)state;
    char long_room[130];
    memset(long_room, 'r', 129);
    long_room[129] = 0;
    assert_true(proto_room_valid("a-b_c.d:e", 9));
    assert_false(proto_room_valid(long_room, 129));
    assert_true(proto_room_valid(long_room, 128));
    assert_true(proto_room_valid("dm:amy:bob", 10));
    assert_false(proto_room_valid("dm:bob:amy", 10));
    assert_false(proto_room_valid("dm:amy:amy", 10));
    assert_false(proto_room_valid("dm:amy:b:c", 10));
    assert_true(proto_room_valid("dm:ab:abc", 9));  /* a prefix sorts first */
    assert_true(proto_room_allows("dm:amy:bob", "bob"));
    assert_true(proto_room_allows("dm:amy:bob", "amy"));
    assert_false(proto_room_allows("dm:amy:bob", "am"));
    assert_true(proto_room_allows("lobby", "anyone"));
}

static void test_proto_error_reply(void **state)
{
    (void)state;
    struct jbuf b;
    jbuf_init(&b, 16);
    proto_error(&b, "\"r1\"", ERR_NOT_MEMBER, NULL);
    assert_int_equal(b.failed, 0);
    char *s = jbuf_take(&b, NULL);
    assert_string_equal(s, "{\"op\":\"error\",\"rid\":\"r1\",\"code\":\"not_member\",\"message\":\"not a member of this room\"}");
    free(s);
    assert_string_equal(err_code(ERR_TIMEOUT), "unavailable");
    assert_string_equal(err_code(12345), "internal");
}

/* ---- jbuf ---- */

static void test_jbuf_escaping(void **state)
{
    (void)state;
    struct jbuf b;
    jbuf_init(&b, 1); /* forces growth */
    jbuf_obj_open(&b);
    jbuf_kv_str(&b, "t", "a\"b\\c\n\x01\xc3\xa9", 9);
    jbuf_key(&b, "arr");
    jbuf_arr_open(&b);
    for (int i = 0; i < 3; i++) {
        jbuf_comma(&b);
        jbuf_int(&b, i - 1);
    }
    jbuf_arr_close(&b);
    jbuf_key(&b, "ok");
    jbuf_bool(&b, 1);
    jbuf_obj_close(&b);
    size_t len;
    char *s = jbuf_take(&b, &len);
    assert_string_equal(s, "{\"t\":\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\",\"arr\":[-1,0,1],\"ok\":true}");
    assert_int_equal(len, strlen(s));
    free(s);
}

/* ---- record ---- */

static void test_record_roundtrip(void **state)
{
    (void)state;
    char id[MSG_ID_LEN + 1];
    record_msg_id(id, "lobby", 5, "amy", "c1");
    assert_int_equal(strlen(id), MSG_ID_LEN);
    char id2[MSG_ID_LEN + 1], id3[MSG_ID_LEN + 1], id4[MSG_ID_LEN + 1];
    record_msg_id(id2, "lobby", 5, "amy", "c1");
    record_msg_id(id3, "lobby", 5, "amy", "c2");
    record_msg_id(id4, "lobby", 5, "amy", NULL);
    assert_string_equal(id, id2);      /* a resent cid keeps its id */
    assert_string_not_equal(id, id3);
    assert_string_not_equal(id, id4);
    /* a change's id: its own for a cid shared with a message or another change */
    char e1[MSG_ID_LEN + 1], e2[MSG_ID_LEN + 1], e3[MSG_ID_LEN + 1], e4[MSG_ID_LEN + 1];
    record_change_id(e1, "lobby", 5, "amy", "c1", MSG_KIND_EDIT, id3);
    record_change_id(e2, "lobby", 5, "amy", "c1", MSG_KIND_EDIT, id3);
    record_change_id(e3, "lobby", 5, "amy", "c1", MSG_KIND_EDIT, id);
    record_change_id(e4, "lobby", 5, "amy", "c1", MSG_KIND_DELETE, id3);
    assert_string_equal(e1, e2);
    assert_string_not_equal(e1, id);
    assert_string_not_equal(e1, e3);
    assert_string_not_equal(e1, e4);
    struct chat_msg m = { .room = "lobby", .room_len = 5, .id = id, .from = "amy", .cid = "c1",
                          .text = "h\"i\n", .text_len = 4, .ts = 1700000000123, .gw = 2 };
    size_t len;
    char *val = record_send_encode(&m, &len);
    assert_non_null(val);
    struct chat_msg d;
    void *owner;
    assert_int_equal(record_send_decode("lobby", 5, val, len, &d, &owner), 0);
    assert_string_equal(d.id, id);
    assert_string_equal(d.from, "amy");
    assert_string_equal(d.cid, "c1");
    assert_string_equal(d.text, "h\"i\n");
    assert_int_equal(d.ts, 1700000000123);
    assert_int_equal(d.gw, 2);
    d.seq = 42;
    char *frame = record_msg_frame(&d, &len);
    char want[256];
    snprintf(want, sizeof want,
             "{\"op\":\"msg\",\"room\":\"lobby\",\"seq\":42,\"id\":\"%s\",\"from\":\"amy\",\"cid\":\"c1\",\"text\":\"h\\\"i\\n\",\"ts\":1700000000123}", id);
    assert_string_equal(frame, want);
    assert_int_equal(record_msg_frame_ts(frame, len), 1700000000123);
    /* text that looks like the ending does not fool it: the ending is fixed */
    static const char *const not_frames[] = { "", "}", "{\"ts\":}", "{\"ts\":12}", "{\"x\",\"ts\":12",
                                              "{\"a\":1,\"ts\":-5}", "{\"a\":1,\"ts\":1234567890123456}" };
    for (size_t i = 0; i < sizeof not_frames / sizeof *not_frames; i++)
        assert_int_equal(record_msg_frame_ts(not_frames[i], strlen(not_frames[i])), -1);
    assert_int_equal(record_msg_frame_ts("{\"a\":1,\"ts\":0}", 14), 0);
    free(frame);
    record_decoded_free(owner);
    free(val);
    /* a record missing fields is refused, not half-read */
    assert_int_equal(record_send_decode("r", 1, "{\"id\":\"x\"}", 10, &d, &owner), ERR_BAD_REQUEST);
    assert_null(owner);
    assert_int_equal(record_send_decode("r", 1, "nope", 4, &d, &owner), ERR_BAD_REQUEST);
    /* found by fuzz_record: a ts beyond int64 must be refused, not converted */
    static const char big_ts[] =
        "{\"id\":\"0123456789abcdef0123456789abcdef\",\"from\":\"a\",\"text\":\"t\",\"ts\":1e19}";
    assert_int_equal(record_send_decode("r", 1, big_ts, sizeof big_ts - 1, &d, &owner), ERR_BAD_REQUEST);
    assert_null(owner);
}

/* Extension 3: edit and delete parse to a target id, and their records
 * survive the chat-send round trip and become edit/delete frames. */
static void test_change_ops(void **state)
{
    (void)state;
    static const char tid[] = "0123456789abcdef0123456789abcdef";
    struct proto_req r;
    char f[256];
    snprintf(f, sizeof f, "{\"op\":\"edit\",\"room\":\"a\",\"id\":\"%s\",\"text\":\"hi\",\"cid\":\"e\"}", tid);
    assert_int_equal(parse(f, &r), 0);
    assert_int_equal(r.op, OP_EDIT);
    assert_string_equal(r.target, tid);
    assert_int_equal(r.text_len, 2);
    assert_string_equal(r.cid, "e");
    proto_req_free(&r);
    snprintf(f, sizeof f, "{\"op\":\"delete\",\"room\":\"a\",\"id\":\"%s\"}", tid);
    assert_int_equal(parse(f, &r), 0);
    assert_int_equal(r.op, OP_DELETE);
    assert_string_equal(r.target, tid);
    assert_null(r.text);
    proto_req_free(&r);
    static const char *const bad[] = {
        "{\"op\":\"delete\",\"room\":\"a\"}",
        "{\"op\":\"delete\",\"room\":\"a\",\"id\":7}",
        "{\"op\":\"delete\",\"room\":\"a\",\"id\":\"0123456789ABCDEF0123456789abcdef\"}",
        "{\"op\":\"delete\",\"room\":\"a\",\"id\":\"0123456789abcdef0123456789abcdef0\"}",
        "{\"op\":\"delete\",\"room\":\"a\",\"id\":\"0123456789abcdef0123456789abcde\"}",
        "{\"op\":\"edit\",\"room\":\"a\",\"id\":\"0123456789abcdef0123456789abcdef\"}",
        "{\"op\":\"edit\",\"room\":\"a\",\"id\":\"0123456789abcdef0123456789abcdef\",\"text\":\"\"}",
        "{\"op\":\"delete\",\"room\":\"a\",\"id\":\"0123456789abcdef0123456789abcdef\",\"cid\":\"\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(parse(bad[i], &r), ERR_BAD_REQUEST);
        proto_req_free(&r);
    }
    snprintf(f, sizeof f, "{\"op\":\"edit\",\"room\":\"a\",\"id\":\"%s\",\"text\":\"01234567890\"}", tid);
    assert_int_equal(parse(f, &r), ERR_TOO_LARGE);
    proto_req_free(&r);

    char id[MSG_ID_LEN + 1];
    record_msg_id(id, "lobby", 5, "amy", "d1");
    struct chat_msg m = { .room = "lobby", .room_len = 5, .id = id, .from = "amy", .cid = "d1",
                          .text = "", .ts = 5, .kind = MSG_KIND_DELETE, .target = tid, .mod = 1 };
    size_t len;
    char *val = record_send_encode(&m, &len);
    struct chat_msg d;
    void *owner;
    assert_int_equal(record_send_decode("lobby", 5, val, len, &d, &owner), 0);
    assert_int_equal(d.kind, MSG_KIND_DELETE);
    assert_string_equal(d.target, tid);
    assert_int_equal(d.mod, 1);
    d.seq = 9;
    char *frame = record_msg_frame(&d, &len);
    char want[256];
    snprintf(want, sizeof want, "{\"op\":\"delete\",\"room\":\"lobby\",\"seq\":9,\"id\":\"%s\",\"from\":\"amy\",\"cid\":\"d1\",\"target\":\"%s\",\"ts\":5}", id, tid);
    assert_string_equal(frame, want);
    assert_int_equal(record_msg_frame_ts(frame, len), 5);
    free(frame);
    free(val);
    record_decoded_free(owner);
    /* a kind without a valid target, or an edit without text, is refused */
    static const char *const bad_rec[] = {
        "{\"id\":\"0123456789abcdef0123456789abcdef\",\"from\":\"a\",\"text\":\"t\",\"ts\":1,\"kind\":\"edit\"}",
        "{\"id\":\"0123456789abcdef0123456789abcdef\",\"from\":\"a\",\"text\":\"t\",\"ts\":1,\"kind\":\"zap\",\"target\":\"0123456789abcdef0123456789abcdef\"}",
        "{\"id\":\"0123456789abcdef0123456789abcdef\",\"from\":\"a\",\"text\":\"\",\"ts\":1,\"kind\":\"edit\",\"target\":\"0123456789abcdef0123456789abcdef\"}",
    };
    for (size_t i = 0; i < sizeof bad_rec / sizeof *bad_rec; i++) {
        assert_int_equal(record_send_decode("r", 1, bad_rec[i], strlen(bad_rec[i]), &d, &owner), ERR_BAD_REQUEST);
        assert_null(owner);
    }
}

/* ---- auth ---- */

static void test_auth(void **state)
{
    (void)state;
    struct auth_identity id;
    const char *why;
    time_t now = time(NULL);
    char *t = auth_issue("k", "amy", now, 60);
    assert_non_null(t);
    assert_int_equal(auth_verify("k", t, now, &id, &why), 0);
    assert_string_equal(id.user, "amy");
    assert_int_equal(auth_verify("other", t, now, &id, &why), ERR_UNAUTHORIZED);
    assert_int_equal(auth_verify("k", t, now + 61, &id, &why), ERR_UNAUTHORIZED);
    assert_string_equal(why, "expired");
    free(t);
    assert_int_equal(auth_verify("k", "", now, &id, &why), ERR_UNAUTHORIZED);
    assert_int_equal(auth_verify("k", "a.b.c", now, &id, &why), ERR_UNAUTHORIZED);
    assert_int_equal(auth_verify("k", NULL, now, &id, &why), ERR_UNAUTHORIZED);
    /* alg none must never pass */
    assert_int_equal(auth_verify("k", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbXkiLCJleHAiOjk5OTk5OTk5OTl9.", now, &id, &why),
                     ERR_UNAUTHORIZED);
    t = auth_issue("k", "bad user", now, 60);
    if (t) {
        assert_int_equal(auth_verify("k", t, now, &id, &why), ERR_UNAUTHORIZED);
        free(t);
    }
    /* the server API's sender is reserved: a well-signed token naming it is refused */
    t = auth_issue("k", "system", now, 60);
    assert_non_null(t);
    assert_int_equal(auth_verify("k", t, now, &id, &why), ERR_UNAUTHORIZED);
    assert_string_equal(why, "sub is reserved (the server API's system sender)");
    free(t);
    /* rotation: the previous secret is tried only after the current one */
    t = auth_issue("old", "amy", now, 60);
    assert_non_null(t);
    assert_int_equal(auth_verify_rotating("new", "old", t, now, &id, &why), 0);
    assert_string_equal(id.user, "amy");
    assert_int_equal(auth_verify_rotating("new", "", t, now, &id, &why), ERR_UNAUTHORIZED);
    assert_int_equal(auth_verify_rotating("new", NULL, t, now, &id, &why), ERR_UNAUTHORIZED);
    assert_int_equal(auth_verify_rotating("new", "old", t, now + 61, &id, &why), ERR_UNAUTHORIZED);
    assert_string_equal(why, "expired");
    free(t);
    t = auth_issue("new", "amy", now, 60);
    assert_int_equal(auth_verify_rotating("new", "old", t, now, &id, &why), 0);
    assert_int_equal(auth_verify_rotating("other", "third", t, now, &id, &why), ERR_UNAUTHORIZED);
    free(t);
    assert_true(auth_user_valid("a.b-c_D9", 8));
    assert_false(auth_user_valid("a:b", 3));
    assert_false(auth_user_valid("", 0));
}

/* ---- slab ---- */

static int ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(char *const *)a, y = (uintptr_t)*(char *const *)b;
    return x < y ? -1 : x > y;
}

static void slab_check_zero(const char *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        assert_int_equal(p[k], 0);
}

struct slab_wide { long double x; char c; };

static void test_slab(void **state)
{
    (void)state;
    enum { N = 10000, SZ = 40 }; /* several 128 KiB blocks */
    static struct slab s = SLAB_INIT_SIZE("test", SZ);
    char **p = calloc(N, sizeof *p);
    assert_non_null(p);
    for (int i = 0; i < N; i++) {
        p[i] = slab_alloc(&s);
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % _Alignof(void *), 0);
        slab_check_zero(p[i], SZ);
        memset(p[i], 0xab, SZ);
    }
    assert_int_equal(s.objects, N);
    qsort(p, N, sizeof *p, ptr_cmp); /* no two objects overlap */
    for (int i = 1; i < N; i++)
        assert_true((uintptr_t)p[i] - (uintptr_t)p[i - 1] >= SZ);
    for (int i = 0; i < N; i += 2)
        slab_free(&s, p[i]);
    assert_int_equal(s.objects, N / 2);
    for (int i = 0; i < N; i += 2) { /* freed slots come back zeroed */
        p[i] = slab_alloc(&s);
        assert_non_null(p[i]);
        slab_check_zero(p[i], SZ);
        memset(p[i], 0xcd, SZ);
    }
    for (int i = 1; i < N; i += 2) /* the others kept their bytes */
        assert_int_equal((unsigned char)p[i][SZ - 1], 0xab);
    for (int i = 0; i < N; i++)
        slab_free(&s, p[i]);
    assert_int_equal(s.objects, 0);
    slab_trim(); /* emptied blocks wait for it, then are unmapped */
#ifndef SLAB_USES_MALLOC
    assert_int_equal(s.blocks, 0);
#endif
    slab_free(&s, NULL);
    free(p);

    static struct slab w = SLAB_INIT("wide", struct slab_wide);
    struct slab_wide *a[3];
    for (int i = 0; i < 3; i++) {
        a[i] = slab_alloc(&w);
        assert_non_null(a[i]);
        assert_int_equal((uintptr_t)a[i] % _Alignof(struct slab_wide), 0);
    }
    for (int i = 0; i < 3; i++)
        slab_free(&w, a[i]);
}

/* An object larger than a block is refused (NULL), in both builds: slots
 * past a block's end were handed out before (issue 16). The largest object
 * that fits is served, in blocks of one. */
static void test_slab_refuses_oversized(void **state)
{
    (void)state;
    static struct slab big = SLAB_INIT_SIZE("too_big", SLAB_BLOCK);
    assert_false(slab_fits(SLAB_BLOCK));
    assert_null(slab_alloc(&big));
    assert_null(slab_alloc_raw(&big));
    assert_int_equal(big.objects, 0);
    static struct slab over = SLAB_INIT_SIZE("just_over", SLAB_MAX_OBJECT + 1);
    assert_null(slab_alloc(&over));
    static struct slab most = SLAB_INIT_SIZE("largest", SLAB_MAX_OBJECT);
    assert_true(slab_fits(SLAB_MAX_OBJECT));
    char *a = slab_alloc(&most), *b = slab_alloc(&most);
    assert_non_null(a);
    assert_non_null(b);
    memset(a, 1, SLAB_MAX_OBJECT);
    memset(b, 2, SLAB_MAX_OBJECT);
    assert_int_equal(a[SLAB_MAX_OBJECT - 1], 1); /* no overlap */
#ifndef SLAB_USES_MALLOC
    assert_int_equal(most.blocks, 2);
#endif
    slab_free(&most, a);
    slab_free(&most, b);
    slab_trim();
}

/* /metrics shows each slab's objects and mapped bytes, one family each. */
static void test_slab_metrics(void **state)
{
    (void)state;
    static struct slab m = SLAB_INIT_SIZE("metrics_test", 100);
    void *p[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(p[i] = slab_alloc(&m));
    metrics_set_collector(slab_collect);
    size_t len;
    char *text = metrics_render(&len);
    assert_non_null(text);
    assert_non_null(strstr(text, "# TYPE chatd_slab_objects gauge\n"));
    assert_non_null(strstr(text, "\nchatd_slab_objects{slab=\"metrics_test\"} 3\n"));
#ifdef SLAB_USES_MALLOC
    assert_non_null(strstr(text, "\nchatd_slab_mapped_bytes{slab=\"metrics_test\"} 0\n"));
#else
    assert_non_null(strstr(text, "\nchatd_slab_mapped_bytes{slab=\"metrics_test\"} 131072\n"));
#endif
    /* families are not interleaved: every objects line before the bytes family */
    assert_true(strstr(text, "chatd_slab_mapped_bytes") > strstr(text, "chatd_slab_objects{slab=\"metrics_test\"}"));
    free(text);
    for (int i = 0; i < 3; i++)
        slab_free(&m, p[i]);
    metrics_free();
    text = metrics_render(&len); /* metrics_free drops the collector */
    assert_non_null(text);
    assert_null(strstr(text, "chatd_slab"));
    free(text);
}

static void loopstat_busy_cb(uv_timer_t *t)
{
    (void)t;
    usleep(30 * 1000); /* a callback that runs 30 ms */
}

static double metric_in(const char *text, const char *series)
{
    const char *p = strstr(text, series);
    assert_non_null(p);
    return strtod(p + strlen(series), NULL);
}

/* A callback's run time shows in the loop's busy counter and histogram;
 * time blocked waiting does not (a 500 ms idle wait comes first). */
static void test_loopstat(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_timer_t busy;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(loopstat_start(&loop), 0);
    uv_timer_init(&loop, &busy);
    uv_timer_start(&busy, loopstat_busy_cb, 500, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_run(&loop, UV_RUN_NOWAIT); /* one more iteration: its prepare observes the 30 ms */
    size_t len;
    char *text = metrics_render(&len);
    assert_non_null(text);
    double busy_s = metric_in(text, "\nchatd_loop_busy_seconds_total ");
    assert_true(busy_s >= 0.030);
    assert_true(busy_s < 0.400); /* the 500 ms in epoll_wait is not busy */
    assert_true(metric_in(text, "\nchatd_loop_iteration_seconds_count ") >= 1);
    assert_true(metric_in(text, "\nchatd_loop_iteration_seconds_bucket{le=\"+Inf\"} ") >= 1);
    free(text);
    loopstat_stop();
    uv_close((uv_handle_t *)&busy, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    metrics_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_defaults),   cmocka_unit_test(test_conf_flags_and_env),
        cmocka_unit_test(test_conf_security_flags), cmocka_unit_test(test_proto_nul),
        cmocka_unit_test(test_conf_retention),
        cmocka_unit_test(test_conf_refuses),    cmocka_unit_test(test_conf_admin_listen),
        cmocka_unit_test(test_proto_ops),
        cmocka_unit_test(test_proto_errors),    cmocka_unit_test(test_proto_rooms),
        cmocka_unit_test(test_proto_error_reply), cmocka_unit_test(test_jbuf_escaping),
        cmocka_unit_test(test_record_roundtrip), cmocka_unit_test(test_auth),
        cmocka_unit_test(test_change_ops),
        cmocka_unit_test(test_slab),           cmocka_unit_test(test_slab_metrics),
        cmocka_unit_test(test_slab_refuses_oversized),
        cmocka_unit_test(test_loopstat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
