/* test_bench: the load generator's pure parts: bench/wsframe (client-side
 * WebSocket frames), bench/delivery (the msg scanner), bench/sched (the send
 * schedule and intended times), bench/ledger (the per-message record shared
 * by the worker processes) and the held judgement (bench/stats).
 *
 * chatbench is not linked into the server, so its .c files are compiled
 * into this test directly: the Makefile's unit-test rule links the server's
 * objects only.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/conf.h"
#include "bench/delivery.c"
#include "bench/hist.c"
#include "bench/ledger.c"
#include "bench/sched.c"
#include "bench/stats.c"
#include "bench/wsframe.c"

/* ---- wsframe ---- */

/* What the reader handed out, as "op:len:payload|" records. */
struct tw_log {
    char *s;
    size_t len, cap;
    int stop_after;                     /* callback returns nonzero on this call (1-based), 0: never */
    int calls;
};

static void tw_put(struct tw_log *l, int op, const uint8_t *p, size_t n)
{
    char head[40];
    int h = snprintf(head, sizeof head, "%d:%zu:", op, n);
    if (l->len + (size_t)h + n + 1 > l->cap) {
        l->cap = (l->len + (size_t)h + n + 1) * 2;
        l->s = realloc(l->s, l->cap);
        assert_non_null(l->s);
    }
    memcpy(l->s + l->len, head, (size_t)h);
    memcpy(l->s + l->len + h, p, n);
    l->len += (size_t)h + n;
    l->s[l->len++] = '|';
}

static int tw_cb(void *user, int op, const uint8_t *p, size_t n)
{
    struct tw_log *l = user;
    assert_non_null(p);
    tw_put(l, op, p, n);
    return ++l->calls == l->stop_after;
}

/* An unmasked server frame. */
static size_t tw_frame(uint8_t *o, int fin, int op, const uint8_t *p, size_t n)
{
    size_t h = 0;
    o[h++] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (n < 126) {
        o[h++] = (uint8_t)n;
    } else if (n <= 0xffff) {
        o[h++] = 126;
        o[h++] = (uint8_t)(n >> 8);
        o[h++] = (uint8_t)n;
    } else {
        o[h++] = 127;
        for (int i = 7; i >= 0; i--)
            o[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    memcpy(o + h, p, n);
    return h + n;
}

/* Feeds s[0..n) in pieces of `step` bytes (0: random pieces); returns the last result. */
static int tw_feed(struct wsframe_reader *r, const uint8_t *s, size_t n, size_t step, struct tw_log *l)
{
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0;) {
        size_t k = step ? step : (size_t)(rand() % 3000) + 1;
        if (k > n - off)
            k = n - off;
        uint8_t *copy = malloc(k);      /* the reader must not keep the caller's bytes */
        assert_non_null(copy);
        memcpy(copy, s + off, k);
        rc = wsframe_reader_feed(r, copy, k, tw_cb, l);
        memset(copy, 0xee, k);
        free(copy);
        off += k;
    }
    return rc;
}

static void test_wsframe_splits(void **state)
{
    (void)state;
    static uint8_t pay[70000], s[300000];
    size_t n = 0;
    for (size_t i = 0; i < sizeof pay; i++)
        pay[i] = (uint8_t)('a' + i % 26);
    struct tw_log want = { 0 };
    size_t lens[] = { 0, 1, 125, 126, 300, 65535, 65536, 69000 };
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        n += tw_frame(s + n, 1, WSFRAME_TEXT, pay, lens[i]);
        tw_put(&want, WSFRAME_TEXT, pay, lens[i]);
    }
    /* A fragmented message with a ping between its fragments. */
    n += tw_frame(s + n, 0, WSFRAME_TEXT, pay, 100);
    n += tw_frame(s + n, 1, WSFRAME_PING, pay, 5);
    n += tw_frame(s + n, 0, WSFRAME_CONT, pay + 100, 0);
    n += tw_frame(s + n, 1, WSFRAME_CONT, pay + 100, 200);
    tw_put(&want, WSFRAME_PING, pay, 5);
    tw_put(&want, WSFRAME_TEXT, pay, 300);
    n += tw_frame(s + n, 1, WSFRAME_BINARY, pay, 3);
    tw_put(&want, WSFRAME_BINARY, pay, 3);
    n += tw_frame(s + n, 1, WSFRAME_CLOSE, (const uint8_t *)"\x03\xf4", 2);
    tw_put(&want, WSFRAME_CLOSE, (const uint8_t *)"\x03\xf4", 2);
    assert_true(n + 100 <= sizeof s);
    size_t before_junk = n;
    n += tw_frame(s + n, 1, WSFRAME_TEXT, pay, 10); /* after close: never read */

    size_t steps[] = { 1, 2, 3, 7, 13, 125, 126, 127, 4096, 65536, sizeof s, 0, 0, 0 };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        struct wsframe_reader r;
        struct tw_log got = { 0 };
        wsframe_reader_init(&r, 100000);
        int rc = tw_feed(&r, s, n, steps[i], &got);
        assert_int_equal(rc, 1);
        assert_int_equal(got.len, want.len);
        assert_memory_equal(got.s, want.s, want.len);
        assert_int_equal(wsframe_reader_feed(&r, s, before_junk, tw_cb, &got), 1);
        assert_int_equal(got.len, want.len);
        wsframe_reader_free(&r);
        free(got.s);
    }
    free(want.s);
}

static void test_wsframe_stop(void **state)
{
    (void)state;
    uint8_t s[64];
    size_t n = 0;
    for (int i = 0; i < 3; i++)
        n += tw_frame(s + n, 1, WSFRAME_TEXT, (const uint8_t *)"abc", 3);
    struct wsframe_reader r;
    struct tw_log got = { .stop_after = 2 };
    wsframe_reader_init(&r, 1000);
    assert_int_equal(wsframe_reader_feed(&r, s, n, tw_cb, &got), 1);
    assert_int_equal(got.calls, 2);
    assert_int_equal(wsframe_reader_feed(&r, s, n, tw_cb, &got), 1);
    assert_int_equal(got.calls, 2);
    wsframe_reader_free(&r);
    free(got.s);
}

static int tw_one(const uint8_t *s, size_t n, size_t max)
{
    struct wsframe_reader r;
    struct tw_log got = { 0 };
    wsframe_reader_init(&r, max);
    int rc = wsframe_reader_feed(&r, s, n, tw_cb, &got);
    wsframe_reader_free(&r);
    free(got.s);
    return rc;
}

static void test_wsframe_errors(void **state)
{
    (void)state;
    uint8_t s[300];
    const uint8_t masked[] = { 0x81, 0x81, 1, 2, 3, 4, 'x' };
    const uint8_t rsv[] = { 0xc1, 0x01, 'x' };
    const uint8_t op3[] = { 0x83, 0x00 };
    const uint8_t op11[] = { 0x8b, 0x00 };
    const uint8_t frag_ping[] = { 0x09, 0x00 };
    const uint8_t top_bit[] = { 0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 1 };
    assert_int_equal(tw_one(masked, sizeof masked, 100), WSFRAME_EPROTO);
    assert_int_equal(tw_one(rsv, sizeof rsv, 100), WSFRAME_EPROTO);
    assert_int_equal(tw_one(op3, sizeof op3, 100), WSFRAME_EPROTO);
    assert_int_equal(tw_one(op11, sizeof op11, 100), WSFRAME_EPROTO);
    assert_int_equal(tw_one(frag_ping, sizeof frag_ping, 100), WSFRAME_EPROTO);
    assert_int_equal(tw_one(top_bit, sizeof top_bit, 100), WSFRAME_EPROTO);
    memset(s, 'p', sizeof s);
    assert_int_equal(tw_one(s, tw_frame(s, 1, WSFRAME_PING, s + 150, 126), 1000), WSFRAME_EPROTO);
    assert_int_equal(tw_one(s, tw_frame(s, 1, WSFRAME_CONT, s + 150, 1), 1000), WSFRAME_EPROTO);
    size_t n = tw_frame(s, 0, WSFRAME_TEXT, s + 200, 2);
    n += tw_frame(s + n, 1, WSFRAME_TEXT, s + 200, 2);
    assert_int_equal(tw_one(s, n, 1000), WSFRAME_EPROTO);
    /* Too long: known from the header alone, before any payload came. */
    const uint8_t big[] = { 0x81, 126, 0x01, 0x00 };
    assert_int_equal(tw_one(big, sizeof big, 100), WSFRAME_ETOOBIG);
    n = tw_frame(s, 0, WSFRAME_TEXT, s + 200, 60);
    n += tw_frame(s + n, 1, WSFRAME_CONT, s + 200, 60);
    assert_int_equal(tw_one(s, n, 100), WSFRAME_ETOOBIG);
}

static void test_wsframe_encode(void **state)
{
    (void)state;
    static uint8_t in[70000], out[70000 + WSFRAME_MAX_HEADER];
    size_t lens[] = { 0, 5, 125, 126, 65535, 65536, 70000 };
    size_t hdr[] = { 6, 6, 6, 8, 8, 14, 14 };
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 31);
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        size_t n = wsframe_encode(out, WSFRAME_TEXT, in, lens[i], 0xa1b2c3d4u);
        assert_int_equal(n, hdr[i] + lens[i]);
        assert_int_equal(out[0], 0x81);
        assert_int_equal(out[1] & 0x80, 0x80);
        const uint8_t *key = out + hdr[i] - 4;
        for (size_t k = 0; k < lens[i]; k++)
            assert_int_equal(out[hdr[i] + k] ^ key[k & 3], in[k]);
    }
}

/* ---- delivery ---- */

static void td_same_as_cjson(const char *frame)
{
    struct delivery a, b;
    assert_int_equal(delivery_scan_chatd(frame, strlen(frame), &a), 1);
    cJSON *j = cJSON_Parse(frame);
    assert_non_null(j);
    delivery_from_json(j, &b);
    assert_int_equal(a.seq, b.seq);
    struct delivery_str *fa[] = { &a.room, &a.from, &a.cid, &a.text };
    struct delivery_str *fb[] = { &b.room, &b.from, &b.cid, &b.text };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(fa[i]->p == NULL, fb[i]->p == NULL);
        assert_int_equal(fa[i]->n, fb[i]->n);
        if (fa[i]->p)
            assert_memory_equal(fa[i]->p, fb[i]->p, fa[i]->n);
    }
    cJSON_Delete(j);
}

static void test_delivery_scan(void **state)
{
    (void)state;
    td_same_as_cjson("{\"op\":\"msg\",\"room\":\"bench-ab12-7\",\"seq\":123456,\"id\":\"01HZX\","
                     "\"from\":\"bab12-70\",\"cid\":\"s1.42\",\"text\":\"t=987654321 xxxx\",\"ts\":1700000000123}");
    td_same_as_cjson(" { \"ts\" : -1.5e3 , \"op\" : \"msg\" , \"seq\" : 1 , \"room\":\"r\" } ");
    td_same_as_cjson("{\"op\":\"msg\",\"seq\":2,\"id\":\"a\\\"b\\u00e9\",\"ok\":true,\"no\":false,\"n\":null}");
    /* Left to cJSON: the caller then sees exactly what it saw before. */
    const char *refused[] = {
        "{\"op\":\"ack\",\"seq\":1}", "{\"op\":\"msg\",\"seq\":3,\"room\":7}", "{\"seq\":1}", "{\"op\":\"msg\",\"seq\":1,\"text\":\"a\\nb\"}",
        "{\"op\":\"msg\",\"seq\":1,\"meta\":{\"a\":1}}", "{\"op\":\"msg\",\"seq\":1,\"seq\":2}",
        "{\"op\":\"msg\",\"seq\":-1}", "{\"op\":\"msg\",\"seq\":1.0}", "{\"op\":\"msg\",\"seq\":1e3}",
        "{\"op\":\"msg\",\"seq\":\"1\"}", "{\"op\":\"msg\",\"seq\":1234567890123456}",
        "{\"op\":\"msg\",\"seq\":01}", "{\"op\":\"msg\",\"seq\":1}x", "{\"op\":\"msg\",\"seq\":1",
        "{\"op\":\"msg\",\"seq\":1,}", "{\"op\":\"msg\",\"room\":\"a\x01\"}", "{\"op\":\"m\\u0073g\"}",
        "{\"o\\p\":\"msg\"}", "{\"op\":\"msg\",\"seq\":tru}", "[1]", "", "{\"op\":\"msg\",\"seq\":1,\"text\":\"\\",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        struct delivery d;
        if (delivery_scan_chatd(refused[i], strlen(refused[i]), &d) != 0)
            fail_msg("scanner took %s", refused[i]);
    }
    /* Every prefix of a good frame is refused, never read past its end. */
    const char *good = "{\"op\":\"msg\",\"room\":\"r\",\"seq\":9,\"text\":\"t=1\"}";
    for (size_t n = 0; n < strlen(good); n++) {
        char *cut = malloc(n + 1);
        assert_non_null(cut);
        memcpy(cut, good, n);
        struct delivery d;
        assert_int_equal(delivery_scan_chatd(cut, n, &d), 0);
        free(cut);
    }
}

static void test_delivery_sio(void **state)
{
    (void)state;
    struct delivery d;
    const char *f = "42[\"msg\",{\"room\":\"bench-x-1\",\"from\":\"bx-3\",\"cid\":\"s.5\",\"text\":\"t=77 x\",\"ts\":1}]";
    assert_int_equal(delivery_scan_sio(f, strlen(f), &d), 1);
    assert_true(delivery_str_eq(d.room, "bench-x-1", 9));
    assert_true(delivery_str_eq(d.cid, "s.5", 3));
    assert_true(delivery_str_eq(d.text, "t=77 x", 6));
    const char *refused[] = { "42[\"msg\",{\"room\":\"r\"}", "42[\"msg\",{\"room\":\"r\"}]]",
                              "4212[\"msg\",{}]", "42[\"joined\",{}]", "43[\"msg\",{}]" };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        if (delivery_scan_sio(refused[i], strlen(refused[i]), &d) != 0)
            fail_msg("scanner took %s", refused[i]);
}

static void test_delivery_u64(void **state)
{
    (void)state;
    assert_int_equal(delivery_u64("1700000000123456789 x", 21), 1700000000123456789ull);
    assert_int_equal(delivery_u64("12", 1), 1);
    assert_int_equal(delivery_u64("x1", 2), 0);
    assert_true(delivery_u64("99999999999999999999999", 23) == UINT64_MAX);
}

/* ---- sched: intended send times ---- */

/* Message k is due exactly at its intended time: not counted a nanosecond
 * before it, counted at it. */
static void test_sched_intended(void **state)
{
    (void)state;
    const double rates[] = { 1, 3, 7.5, 100, 1000, 2000, 33333, 250000 };
    const uint64_t t0 = 123456789012345ull;
    for (size_t r = 0; r < sizeof rates / sizeof rates[0]; r++)
        for (uint64_t k = 1; k < 20000; k += 1 + k / 7) {
            uint64_t t = sched_intended(t0, rates[r], k);
            assert_true(sched_due(t0, rates[r], t) >= k);
            assert_true(sched_due(t0, rates[r], t - 1) < k);
        }
    /* 1000 msgs/s: one a millisecond, the first 1 ms after the start. */
    assert_int_equal(sched_intended(t0, 1000, 1), t0 + 1000000);
    assert_int_equal(sched_intended(t0, 1000, 250), t0 + 250000000);
    assert_int_equal(sched_due(t0, 1000, t0 - 5), 0);
}

/* The coordinated-omission case: ticks every millisecond at 2000 msgs/s,
 * then the loop stalls 40 ms (a fan-out burst). The late tick sends the 80
 * messages it owes at once; each keeps the time it was due, and their send
 * lag (actual - intended) spreads from 40 ms down to 0.5 ms. With a server
 * that delivers 1 ms after the actual send, the latency from the intended
 * time shows the stall; from the actual send time it would not. */
static void test_sched_late_tick(void **state)
{
    (void)state;
    const uint64_t ms = 1000000, t0 = 1000 * ms;
    struct sched s = { .t_start = t0, .rate = 2000 };
    struct hist lag, lat, lat_sent;
    hist_reset(&lag);
    hist_reset(&lat);
    hist_reset(&lat_sent);
    uint64_t intended, last = 0, n = 0;
    for (uint64_t now = t0; now <= t0 + 100 * ms; now += now == t0 + 50 * ms ? 40 * ms : ms) {
        int burst = 0;
        while (sched_next(&s, now, &intended)) {
            assert_true(intended > last);           /* strictly increasing */
            assert_true(intended <= now);           /* never stamped in the future */
            last = intended;
            hist_add(&lag, sched_lag_us(intended, now));
            hist_add(&lat, sched_lag_us(intended, now + ms));
            hist_add(&lat_sent, sched_lag_us(now, now + ms));
            burst++;
            n++;
        }
        if (now == t0 + 90 * ms)
            assert_int_equal(burst, 80);             /* the late tick */
        else
            assert_true(burst == 0 || burst == 2);
    }
    assert_int_equal(n, 200);                        /* the rate is kept: 100 ms x 2000/s */
    assert_int_equal(lag.max, 39500);                /* the first message owed waited 39.5 ms */
    assert_int_equal(lat.max, 40500);
    assert_int_equal(lat_sent.max, 1000);            /* what the actual-time stamp reported */
    assert_true(hist_quantile(&lat, 0.99) > 30000);
    assert_int_equal(hist_quantile(&lat_sent, 0.99), 1000);
    /* Nothing owed before the start; nothing late when on time. */
    struct sched z = { .t_start = t0, .rate = 2000 };
    assert_false(sched_next(&z, t0 - ms, &intended));
    assert_int_equal(sched_lag_us(t0 + 5000, t0), 0);
}

/* ---- ledger: every message acked and delivered once ---- */

static void test_ledger_judge(void **state)
{
    (void)state;
    struct stats st = { 0 };
    const uint32_t w = LEDGER_INWIN | LEDGER_ACKED;
    ledger_judge(w | 10, 10, &st);
    assert_int_equal(st.missing, 0);
    assert_int_equal(st.extra, 0);
    ledger_judge(w | 7, 10, &st);                    /* 3 members never got it */
    assert_int_equal(st.missing, 3);
    ledger_judge(w | 11, 10, &st);                   /* one member got it twice (two seqs) */
    assert_int_equal(st.extra, 1);
    ledger_judge(LEDGER_INWIN | 3, 10, &st);         /* not acked: the unacked count says so */
    ledger_judge(LEDGER_ACKED | 12, 10, &st);        /* warmup message: not judged */
    assert_int_equal(st.missing, 3);
    assert_int_equal(st.extra, 1);
}

/* Counts made in another process (a worker holding half of a room) are seen
 * by the parent that judges the run. */
static void test_ledger_shared(void **state)
{
    (void)state;
    struct conf c = { .clients = 25, .room_size = 10, .senders_per_room = 2, .procs = 2 };
    c.nrooms = 3;
    c.nsenders = 2 + 2 + 2;
    struct ledger *l = ledger_create(c.nsenders, 60, 1);  /* 10 a sender, plus slack */
    assert_non_null(l);
    assert_null(ledger_word(l, 0, 0));               /* cids start at 1 */
    assert_null(ledger_word(l, 0, l->per_sender));
    assert_null(ledger_word(l, 6, 1));
    assert_non_null(ledger_word(l, 5, l->per_sender - 1));
    *ledger_word(l, 0, 1) = LEDGER_INWIN;            /* room 0: delivered to all 10 */
    *ledger_word(l, 3, 2) = LEDGER_INWIN;            /* room 1: 9 of 10, then 2 more */
    *ledger_word(l, 5, 1) = LEDGER_INWIN;            /* room 2 (5 members): 5 */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 5; i++)
            ledger_count(l, 0, 1);
        for (int i = 0; i < 4; i++)
            ledger_count(l, 3, 2);
        for (int i = 0; i < 5; i++)
            ledger_count(l, 5, 1);
        ledger_flag(l, 0, 1, LEDGER_ACKED);
        _exit(0);
    }
    for (int i = 0; i < 5; i++)
        ledger_count(l, 0, 1);
    for (int i = 0; i < 5; i++)
        ledger_count(l, 3, 2);
    ledger_flag(l, 3, 2, LEDGER_ACKED);
    ledger_flag(l, 5, 1, LEDGER_ACKED);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(*ledger_word(l, 0, 1) & LEDGER_COUNT, 10);
    struct stats st = { 0 };
    ledger_account(l, &c, &st);
    assert_int_equal(st.missing, 1);
    assert_int_equal(st.extra, 0);
    ledger_count(l, 3, 2);                           /* the tenth member */
    ledger_count(l, 3, 2);                           /* and one twice */
    ledger_count(l, 3, 2);
    memset(&st, 0, sizeof st);
    ledger_account(l, &c, &st);
    assert_int_equal(st.missing, 0);
    assert_int_equal(st.extra, 2);
    ledger_destroy(l);
}

static void test_stats_held(void **state)
{
    (void)state;
    char why[160];
    struct stats st = { .sent_win = 1000, .acked_win = 1000 };
    assert_true(stats_held(&st, why, sizeof why));
    assert_string_equal(why, "");
    st.acked_win = 999;                              /* 0.1 % unacked no longer passes */
    st.extra = 2;
    assert_false(stats_held(&st, why, sizeof why));
    assert_string_equal(why, "unacked 1, extra 2");
    st.acked_win = 1000;
    st.extra = 0;
    st.errs[SE_BACKLOG] = 4;
    assert_false(stats_held(&st, why, sizeof why));
    assert_string_equal(why, "sender_backlog 4");
    assert_false(stats_held(&st, NULL, 0));
    assert_false(stats_held(&st, why, 5));           /* truncated, still terminated */
    assert_true(strlen(why) < 5);
}

/* Which process holds which client; sender numbers. */
static void test_conf_split(void **state)
{
    (void)state;
    /* One room of 1000 over two processes: half each, interleaved. */
    struct conf one = { .clients = 1000, .room_size = 1000, .senders_per_room = 1, .procs = 2, .nrooms = 1 };
    int n[2] = { 0, 0 };
    for (int g = 0; g < one.clients; g++)
        n[conf_client_proc(&one, g)]++;
    assert_int_equal(n[0], 500);
    assert_int_equal(n[1], 500);
    assert_int_equal(conf_sender_index(&one, 0), 0);
    assert_int_equal(conf_sender_index(&one, 1), -1);
    /* Enough rooms: whole rooms per process, as before. */
    struct conf ten = { .clients = 95, .room_size = 10, .senders_per_room = 3, .procs = 2, .nrooms = 10 };
    for (int g = 0; g < ten.clients; g++)
        assert_int_equal(conf_client_proc(&ten, g), (g / 10) % 2);
    assert_int_equal(conf_sender_index(&ten, 12), 5);
    assert_int_equal(conf_sender_room(&ten, 5), 1);
    assert_int_equal(conf_sender_index(&ten, 13), -1);
    assert_int_equal(conf_sender_index(&ten, 92), 29);   /* last room, 5 members */
    /* More senders asked than members: every member sends, numbers dense. */
    struct conf all = { .clients = 12, .room_size = 4, .senders_per_room = 10, .procs = 1, .nrooms = 3 };
    for (int g = 0; g < all.clients; g++) {
        assert_int_equal(conf_sender_index(&all, g), g);
        assert_int_equal(conf_sender_room(&all, g), g / 4);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wsframe_splits),
        cmocka_unit_test(test_wsframe_stop),
        cmocka_unit_test(test_wsframe_errors),
        cmocka_unit_test(test_wsframe_encode),
        cmocka_unit_test(test_delivery_scan),
        cmocka_unit_test(test_delivery_sio),
        cmocka_unit_test(test_delivery_u64),
        cmocka_unit_test(test_sched_intended),
        cmocka_unit_test(test_sched_late_tick),
        cmocka_unit_test(test_ledger_judge),
        cmocka_unit_test(test_ledger_shared),
        cmocka_unit_test(test_stats_held),
        cmocka_unit_test(test_conf_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
