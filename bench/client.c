#include "bench/client.h"

#include <assert.h>
#include <cJSON.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/delivery.h"
#include "bench/ledger.h"
#include "bench/sched.h"
#include "bench/stats.h"
#include "bench/worker.h"
#include "bench/wsframe.h"

#define CLIENT_MAGIC 0x43424e43u
#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

#define CLIENT_CONNECT_TIMEOUT_MS 15000
#define CLIENT_HS_MAX 8192
#define CLIENT_MAX_FRAME (64u << 20)  /* a history page of 1000 large messages */
#define SENDER_RING 256               /* unacked messages per sender */

/* rid: sends use 2*cid (even), the other requests odd constants. */
#define RID_JOIN 1
#define RID_SYNC 3

enum { CS_IDLE, CS_CONNECTING, CS_UPGRADING, CS_HELLO, CS_READY, CS_CLOSING, CS_DONE };
enum { SLOT_FREE, SLOT_QUEUED, SLOT_INFLIGHT, SLOT_RETRY };

struct sender_slot {
    uint64_t n;
    uint64_t t;                       /* intended send time (sched.h): the stamp */
    uint64_t t_sent;                  /* when it was made and first handed to the socket */
    int state, tries;
};

/* Per message, the shared ledger's word (cid n of sender sidx) says whether
 * it was made in the window, acked, and how often delivered. */
struct sender {
    int sidx;                         /* conf_sender_index */
    uint64_t next, base;              /* cids base..next-1 may be unacked */
    struct sender_slot ring[SENDER_RING];
};

static void client_fail(struct client *c, int err);
static void client_on_timer(uv_timer_t *t);

static struct client *client_from(void *p)
{
    struct client *c = p;
    assert(c->magic == CLIENT_MAGIC);
    return c;
}

int client_init(struct client *c, struct worker *w, int gidx, char *token, int sender)
{
    const struct conf *cf = w->conf;
    memset(c, 0, sizeof *c);
    c->magic = CLIENT_MAGIC;
    c->w = w;
    c->gidx = gidx;
    c->room = gidx / cf->room_size;
    c->members = conf_room_members(cf, c->room);
    c->token = token;
    c->gw = gidx % cf->ngw;
    snprintf(c->user, sizeof c->user, "b%s-%d", cf->run, gidx);
    snprintf(c->room_id, sizeof c->room_id, "bench-%s-%d", cf->run, c->room);
    c->room_len = strlen(c->room_id);
    wsframe_reader_init(&c->rd, CLIENT_MAX_FRAME);
    if (sender) {
        c->snd = calloc(1, sizeof *c->snd);
        if (!c->snd)
            return -1;
        c->snd->next = c->snd->base = 1;
        c->snd->sidx = conf_sender_index(cf, gidx);
    }
    return uv_timer_init(&w->loop, &c->timer);
}

void client_free(struct client *c)
{
    if (c->magic != CLIENT_MAGIC)
        return;
    free(c->snd);
    free(c->token);
    c->magic = 0;
}

int client_idle(const struct client *c)
{
    return !c->snd || c->snd->base == c->snd->next;
}

/* ---- output ---- */

/* Room for n more bytes of output. */
static int client_reserve(struct client *c, size_t n)
{
    if (c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 1024;
        while (cap < c->wlen + n)
            cap *= 2;
        char *b = realloc(c->wbuf, cap);
        if (!b)
            return -1;
        c->wbuf = b;
        c->wcap = cap;
    }
    return 0;
}

static int client_append(struct client *c, const void *p, size_t n)
{
    if (client_reserve(c, n) < 0)
        return -1;
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    return 0;
}

static void client_write_out(struct client *c);

static void client_on_write(uv_write_t *req, int status)
{
    struct client *c = client_from(container_of(req, struct client, wreq));
    free(c->wfl);
    c->wfl = NULL;
    if (status < 0) {
        client_fail(c, SE_EOF);
        return;
    }
    client_write_out(c);
}

/* Tries the socket at once; what it does not take goes out in one uv_write
 * of the whole buffer (the next output collects in a fresh one meanwhile). */
static void client_write_out(struct client *c)
{
    if (c->wfl || c->wlen == 0)
        return;
    uv_buf_t b = uv_buf_init(c->wbuf, (unsigned)c->wlen);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->wlen) {
        c->wlen = 0;
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        client_fail(c, SE_EOF);
        return;
    }
    if (n < 0)
        n = 0;
    c->wfl = c->wbuf;
    b = uv_buf_init(c->wfl + n, (unsigned)(c->wlen - (size_t)n));
    c->wbuf = NULL;
    c->wlen = c->wcap = 0;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, client_on_write) < 0) {
        free(c->wfl);
        c->wfl = NULL;
        client_fail(c, SE_EOF);
    }
}

/* Frames one message into the output buffer (masked, as a client must)
 * and writes it out, whatever the protocol state: the Engine.IO handshake
 * and pongs answer before the connection is ready. */
static void client_ws_queue_op(struct client *c, int op, const void *p, size_t n)
{
    if (c->state != CS_HELLO && c->state != CS_READY)
        return;
    if (client_reserve(c, n + WSFRAME_MAX_HEADER) < 0) {
        client_fail(c, SE_EOF);
        return;
    }
    c->wlen += wsframe_encode((uint8_t *)c->wbuf + c->wlen, op, p, n, (uint32_t)worker_rand(c->w));
    client_write_out(c);
}

static void client_ws_queue(struct client *c, const char *json, size_t len)
{
    client_ws_queue_op(c, WSFRAME_TEXT, json, len);
}

static void client_send_frame(struct client *c, const char *json, size_t len)
{
    if (c->state == CS_READY)
        client_ws_queue(c, json, len);
}

/* ---- requests ---- */

static void client_send_join(struct client *c)
{
    char b[160];
    int n = c->w->conf->proto == PROTO_SOCKETIO
                ? snprintf(b, sizeof b, "42%d[\"join\",{\"room\":\"%s\"}]", RID_JOIN, c->room_id)
                : snprintf(b, sizeof b, "{\"op\":\"join\",\"rid\":%d,\"room\":\"%s\"}", RID_JOIN, c->room_id);
    c->want_join = 0;
    client_send_frame(c, b, (size_t)n);
}

static void client_sync(struct client *c)
{
    if (c->w->conf->proto == PROTO_SOCKETIO)
        return;                       /* no history in Socket.IO */
    if (c->syncing) {
        c->want_sync = 1;
        return;
    }
    char b[200];
    int n = snprintf(b, sizeof b,
                     "{\"op\":\"sync\",\"rid\":%d,\"room\":\"%s\",\"after\":%" PRIu64 ",\"limit\":1000}",
                     RID_SYNC, c->room_id, c->last);
    c->syncing = 1;
    c->want_sync = 0;
    c->w->st.syncs++;
    client_send_frame(c, b, (size_t)n);
}

static void client_send_slot(struct client *c, struct sender_slot *s)
{
    struct worker *w = c->w;
    size_t need = (size_t)w->conf->payload + 256;
    if (need > w->sbuf_cap) {
        char *b = realloc(w->sbuf, need);
        assert(b);
        w->sbuf = b;
        w->sbuf_cap = need;
    }
    int n = w->conf->proto == PROTO_SOCKETIO
                ? snprintf(w->sbuf, w->sbuf_cap,
                           "42%" PRIu64 "[\"send\",{\"room\":\"%s\",\"cid\":\"%s.%" PRIu64
                           "\",\"text\":\"t=%" PRIu64 " a=%" PRIu64, 2 * s->n, c->room_id, w->conf->cid_salt,
                           s->n, s->t, s->t_sent)
                : snprintf(w->sbuf, w->sbuf_cap,
                           "{\"op\":\"send\",\"rid\":%" PRIu64 ",\"room\":\"%s\",\"cid\":\"%s.%" PRIu64
                           "\",\"text\":\"t=%" PRIu64 " a=%" PRIu64, 2 * s->n, c->room_id, w->conf->cid_salt,
                           s->n, s->t, s->t_sent);
    /* Pad the text to --payload bytes: "t=<intended ns> a=<actual ns>" plus
     * one space and 'x's. */
    int tlen = snprintf(NULL, 0, "t=%" PRIu64 " a=%" PRIu64, s->t, s->t_sent);
    if (tlen < w->conf->payload) {
        w->sbuf[n++] = ' ';
        for (int i = tlen + 1; i < w->conf->payload; i++)
            w->sbuf[n++] = 'x';
    }
    if (w->conf->proto == PROTO_SOCKETIO) {
        memcpy(w->sbuf + n, "\"}]", 3);
        n += 3;
    } else {
        memcpy(w->sbuf + n, "\"}", 2);
        n += 2;
    }
    if (s->tries++ > 0)
        w->st.resends++;
    s->state = SLOT_INFLIGHT;
    client_send_frame(c, w->sbuf, (size_t)n);
}

void client_send_new(struct client *c, uint64_t intended, uint64_t now)
{
    struct sender *s = c->snd;
    struct worker *w = c->w;
    uint32_t *word = ledger_word(w->ledger, s->sidx, s->next);
    if (s->next - s->base >= SENDER_RING || !word) {
        w->st.errs[SE_BACKLOG]++;
        return;
    }
    uint64_t n = s->next++;
    int inwin = worker_in_window(w, intended);
    __atomic_store_n(word, inwin ? LEDGER_INWIN : 0u, __ATOMIC_RELAXED);
    w->st.sent++;
    w->st.sent_win += (uint64_t)inwin;
    __atomic_fetch_add(&w->ledger->inflight, 1, __ATOMIC_RELEASE);
    if (inwin)
        hist_add(&w->h_lag, sched_lag_us(intended, now));
    struct sender_slot *sl = &s->ring[n % SENDER_RING];
    assert(sl->state == SLOT_FREE);
    *sl = (struct sender_slot){ .n = n, .t = intended, .t_sent = now, .state = SLOT_QUEUED };
    if (c->state == CS_READY)
        client_send_slot(c, sl);
}

/* After hello: every unacked message again, with its cid. With only_retry,
 * just those an `unavailable` / `rate_limited` sent back. */
static void client_resend(struct client *c, int only_retry)
{
    struct sender *s = c->snd;
    if (!s)
        return;
    for (uint64_t n = s->base; n < s->next && c->state == CS_READY; n++) {
        struct sender_slot *sl = &s->ring[n % SENDER_RING];
        if (sl->state == SLOT_FREE || (only_retry && sl->state != SLOT_RETRY))
            continue;
        client_send_slot(c, sl);
    }
}

static void client_slot_done(struct client *c, struct sender_slot *sl, uint32_t flag)
{
    struct sender *s = c->snd;
    sl->state = SLOT_FREE;
    ledger_flag(c->w->ledger, s->sidx, sl->n, flag);
    __atomic_fetch_sub(&c->w->ledger->inflight, 1, __ATOMIC_RELEASE);
    while (s->base < s->next && s->ring[s->base % SENDER_RING].state == SLOT_FREE)
        s->base++;
}

static struct sender_slot *client_slot(struct client *c, uint64_t n)
{
    struct sender *s = c->snd;
    if (!s || n < s->base || n >= s->next)
        return NULL;
    struct sender_slot *sl = &s->ring[n % SENDER_RING];
    return sl->n == n && sl->state != SLOT_FREE ? sl : NULL;
}

/* Full jitter: a random wait in [0, min(30 s, 0.5 s * 2^k)]. */
static uint64_t client_backoff_ms(struct client *c, unsigned k)
{
    uint64_t cap = k >= 6 ? 30000 : 500ull << k;
    if (cap > 30000)
        cap = 30000;
    return worker_rand(c->w) % (cap + 1);
}

static void client_arm_retry(struct client *c, uint64_t ms)
{
    if (!uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, client_on_timer, ms, 0);
}

/* ---- replies and events ---- */

static uint64_t client_num(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 ? (uint64_t)v->valuedouble : 0;
}

static const char *client_str(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A text is "t=<intended ns> a=<actual ns> xxx...": 1 and both times when
 * it is one of ours (an older "t=<ns>" counts as both). */
static int client_stamps(struct delivery_str text, uint64_t *t, uint64_t *a)
{
    const char *p = text.p;
    size_t n = text.n, i = 2;
    if (!p || n < 3 || memcmp(p, "t=", 2) != 0)
        return 0;
    *t = *a = delivery_u64(p + 2, n - 2);
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++;
    if (n - i > 3 && memcmp(p + i, " a=", 3) == 0)
        *a = delivery_u64(p + i + 3, n - i - 3);
    return 1;
}

/* A cid is "<salt>.<n>": the salt is new on every chatbench invocation, so a
 * later run with the same --run-id (same users, same rooms) is not taken by
 * chatd for resends of the earlier run's messages. 0 = not one of ours. */
static uint64_t client_cid_n(const struct client *c, struct delivery_str cid)
{
    const struct worker *w = c->w;
    size_t sl = w->salt_len;
    if (!cid.p || cid.n <= sl + 1 || memcmp(cid.p, w->conf->cid_salt, sl) != 0 || cid.p[sl] != '.')
        return 0;
    return delivery_u64(cid.p + sl + 1, cid.n - sl - 1);
}

static void client_count_delivery(struct client *c, const struct delivery *d, uint64_t now)
{
    struct worker *w = c->w;
    w->st.delivered++;
    uint64_t t, a;
    if (!client_stamps(d->text, &t, &a))
        return;
    if (worker_in_window(w, t)) {
        w->st.delivered_win++;
        __atomic_fetch_add(&w->ledger->delivered_win, 1, __ATOMIC_RELAXED);
        hist_add(&w->h_win, sched_lag_us(t, now));
        hist_add(&w->h_win_sent, sched_lag_us(a, now));
    } else {
        hist_add(&w->h_warm, sched_lag_us(t, now));
    }
    int sidx = d->from.p && d->cid.p ? worker_sender_by_user(w, d->from.p, d->from.n) : -1;
    uint64_t n = sidx >= 0 ? client_cid_n(c, d->cid) : 0;
    if (n > 0)
        ledger_count(w->ledger, sidx, n);
}

/* One msg, live or from a history page. Only the next seq is taken; a live
 * one beyond it is left to the sync it triggers (dedup by seq is then a
 * comparison with `last`). */
static void client_on_msg(struct client *c, const struct delivery *d, uint64_t now, int from_history)
{
    uint64_t seq = d->seq;
    if (seq == 0 || (d->room.p && !delivery_str_eq(d->room, c->room_id, c->room_len))) {
        c->w->st.errs[SE_BAD_FRAME]++;
        return;
    }
    if (seq > c->max_seen)
        c->max_seen = seq;
    if (seq <= c->last) {
        c->w->st.dups++;
        return;
    }
    if (seq > c->last + 1) {
        if (!from_history) {
            if (!c->syncing)
                c->w->st.gaps++;
            client_sync(c);
            return;
        }
        /* A history page must be dense after `after`: count the hole. */
        c->w->st.errs[SE_BAD_FRAME]++;
    }
    c->last = seq;
    client_count_delivery(c, d, now);
}

static void client_on_history(struct client *c, const cJSON *j, uint64_t now)
{
    uint64_t before = c->last;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages"), *m;
    c->syncing = 0;
    cJSON_ArrayForEach(m, msgs) {
        struct delivery d;
        delivery_from_json(m, &d);
        client_on_msg(c, &d, now, 1);
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "more")) ||
        (c->last > before && (c->want_sync || c->max_seen > c->last))) {
        client_sync(c);
    } else if (c->want_sync || c->max_seen > c->last) {
        /* Seen live but not yet in history: ask again shortly. */
        c->want_sync = 1;
        client_arm_retry(c, 100);
    }
}

static void client_on_hello(struct client *c)
{
    struct worker *w = c->w;
    if (c->state != CS_HELLO)
        return;
    c->state = CS_READY;
    c->attempt = 0;
    c->retry_after_ms = 0;
    uv_timer_stop(&c->timer);
    w->st.conns++;
    w->st.handshakes++;
    worker_connect_done(w);
    if (!c->ever_ready) {
        c->ever_ready = 1;
        worker_on_connected(w);
    }
    if (!c->joined || w->conf->proto == PROTO_SOCKETIO)
        client_send_join(c);
    else
        client_sync(c);
    client_resend(c, 0);
}

static void client_on_ack(struct client *c, uint64_t cid)
{
    struct sender_slot *sl = client_slot(c, cid);
    if (!sl)
        return;                       /* ack of a resend already acked */
    struct worker *w = c->w;
    w->st.acked++;
    c->retry_k = 0;
    uint32_t *word = ledger_word(w->ledger, c->snd->sidx, sl->n);
    if (word && (__atomic_load_n(word, __ATOMIC_RELAXED) & LEDGER_INWIN)) {
        hist_add(&w->h_ack, sched_lag_us(sl->t, w->now));
        w->st.acked_win++;
        w->st.expected += (uint64_t)c->members;
        __atomic_fetch_add(&w->ledger->expected, (uint64_t)c->members, __ATOMIC_RELAXED);
    }
    client_slot_done(c, sl, LEDGER_ACKED);
}

static void client_on_error(struct client *c, const cJSON *j)
{
    const char *code = client_str(j, "code");
    int e = stats_err_from_code(code ? code : "");
    uint64_t rid = client_num(j, "rid");
    int retry = e == SE_UNAVAILABLE || e == SE_RATE_LIMITED || e == SE_INTERNAL;
    uint64_t wait = e == SE_RATE_LIMITED ? 500 + worker_rand(c->w) % 1000
                                         : client_backoff_ms(c, c->retry_k++);
    c->w->st.errs[e]++;
    if (rid == RID_JOIN) {
        c->want_join = 1;
        client_arm_retry(c, wait);
    } else if (rid == RID_SYNC) {
        c->syncing = 0;
        c->want_sync = 1;
        client_arm_retry(c, wait);
    } else if (rid > 0 && rid % 2 == 0) {
        struct sender_slot *sl = client_slot(c, rid / 2);
        if (!sl)
            return;
        if (retry) {
            sl->state = SLOT_RETRY;
            client_arm_retry(c, wait);
        } else {
            client_slot_done(c, sl, LEDGER_DROPPED);
        }
    }
}

static void client_on_joined(struct client *c, uint64_t head)
{
    if (c->joined)
        return;
    c->joined = 1;
    if (head > c->last)
        c->last = head;
    if (head > c->max_seen)
        c->max_seen = head;
    worker_on_joined(c->w);
}

/* Socket.IO: an acknowledgement "43<id>[reply]" of join (id RID_JOIN) or of a
 * send (id 2 * cid); a reply with "code" is the peer's error. */
static void client_sio_ack(struct client *c, uint64_t id, cJSON *reply)
{
    if (cJSON_IsObject(reply) && client_str(reply, "code")) {
        cJSON_AddNumberToObject(reply, "rid", (double)id);
        client_on_error(c, reply);
    } else if (id == RID_JOIN) {
        client_on_joined(c, 0);
    } else if (id > 0 && id % 2 == 0) {
        client_on_ack(c, id / 2);
    }
}

/* Socket.IO: a "msg" event is one delivery; no seq, so no gap detection. */
static void client_sio_msg(struct client *c, const struct delivery *d, uint64_t now)
{
    if (!delivery_str_eq(d->room, c->room_id, c->room_len)) {
        c->w->st.errs[SE_BAD_FRAME]++;
        return;
    }
    client_count_delivery(c, d, now);
}

static void client_sio_event(struct client *c, const cJSON *args, uint64_t now)
{
    const cJSON *name = cJSON_GetArrayItem(args, 0), *m = cJSON_GetArrayItem(args, 1);
    if (!cJSON_IsString(name) || strcmp(name->valuestring, "msg") != 0)
        return;
    struct delivery d = { 0 };
    if (cJSON_IsObject(m))
        delivery_from_json(m, &d);
    client_sio_msg(c, &d, now);
}

/* Engine.IO packet type, then for "4" (message) a Socket.IO packet: type,
 * optional ack id, JSON payload. */
static void client_sio_frame(struct client *c, const uint8_t *p, size_t n)
{
    if (n >= 1 && p[0] == '0') {      /* Engine.IO open: connect to namespace "/" */
        if (c->state == CS_HELLO)
            client_ws_queue(c, "40", 2);
        return;
    }
    if (n == 1 && p[0] == '2') {      /* ping */
        client_ws_queue(c, "3", 1);
        return;
    }
    if (n == 1 && (p[0] == '3' || p[0] == '6'))
        return;
    if (n == 1 && p[0] == '1') {      /* Engine.IO close */
        client_fail(c, SE_CLOSE_OTHER);
        return;
    }
    if (n < 2 || p[0] != '4') {
        c->w->st.errs[SE_BAD_FRAME]++;
        return;
    }
    struct delivery d;
    if (delivery_scan_sio((const char *)p, n, &d)) {
        client_sio_msg(c, &d, c->w->now);
        return;
    }
    size_t i = 2;
    uint64_t id = 0;
    int has_id = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9') {
        id = id * 10 + (uint64_t)(p[i++] - '0');
        has_id = 1;
    }
    switch (p[1]) {
    case '0':                         /* CONNECT accepted: plays chatd's hello */
        client_on_hello(c);
        return;
    case '4':                         /* CONNECT_ERROR: the token was refused */
        client_fail(c, SE_HTTP_401);
        return;
    case '1':                         /* DISCONNECT by the server */
        client_fail(c, SE_CLOSE_OTHER);
        return;
    case '2':
    case '3':
        break;
    default:
        c->w->st.errs[SE_BAD_FRAME]++;
        return;
    }
    uint64_t now = c->w->now;
    cJSON *args = cJSON_ParseWithLength((const char *)p + i, n - i);
    if (!cJSON_IsArray(args) || (p[1] == '3' && !has_id))
        c->w->st.errs[SE_BAD_FRAME]++;
    else if (p[1] == '3')
        client_sio_ack(c, id, cJSON_GetArrayItem(args, 0));
    else
        client_sio_event(c, args, now);
    cJSON_Delete(args);
}

static void client_on_frame(struct client *c, const uint8_t *p, size_t n)
{
    c->w->st.frames++;
    if (c->w->conf->proto == PROTO_SOCKETIO) {
        client_sio_frame(c, p, n);
        return;
    }
    uint64_t now = c->w->now;
    struct delivery d;
    if (delivery_scan_chatd((const char *)p, n, &d)) {
        client_on_msg(c, &d, now, 0);
        return;
    }
    cJSON *j = cJSON_ParseWithLength((const char *)p, n);
    const char *op = client_str(j, "op");
    if (!op) {
        c->w->st.errs[SE_BAD_FRAME]++;
    } else if (strcmp(op, "msg") == 0) {
        delivery_from_json(j, &d);
        client_on_msg(c, &d, now, 0);
    } else if (strcmp(op, "ack") == 0) {
        const char *cid = client_str(j, "cid");
        uint64_t n = client_cid_n(c, (struct delivery_str){ .p = cid, .n = cid ? strlen(cid) : 0 });
        if (n)
            client_on_ack(c, n);
    } else if (strcmp(op, "history") == 0) {
        client_on_history(c, j, now);
    } else if (strcmp(op, "ok") == 0 && client_num(j, "rid") == RID_JOIN) {
        client_on_joined(c, client_num(j, "seq"));
    } else if (strcmp(op, "error") == 0) {
        client_on_error(c, j);
    } else if (strcmp(op, "hello") == 0) {
        client_on_hello(c);
    }
    cJSON_Delete(j);
}

/* ---- frames ---- */

static int client_ws_on_frame(void *user, int op, const uint8_t *p, size_t n)
{
    struct client *c = client_from(user);
    switch (op) {
    case WSFRAME_TEXT:
        client_on_frame(c, p, n);
        break;
    case WSFRAME_BINARY:
        c->w->st.errs[SE_BAD_FRAME]++;
        break;
    case WSFRAME_PING:
        client_ws_queue_op(c, WSFRAME_PONG, p, n);
        break;
    case WSFRAME_CLOSE:
        c->close_seen = 1;
        c->close_code = n >= 2 ? (unsigned)p[0] << 8 | p[1] : 0;
        break;
    default:
        break;
    }
    return c->state != CS_HELLO && c->state != CS_READY;
}

static void client_feed(struct client *c, const char *p, size_t n)
{
    int r = wsframe_reader_feed(&c->rd, (const uint8_t *)p, n, client_ws_on_frame, c);
    if (c->state != CS_HELLO && c->state != CS_READY)
        return;                       /* failed inside a callback */
    if (r < 0) {
        client_fail(c, SE_BAD_FRAME);
        return;
    }
    if (c->close_seen) {
        /* Our close reply echoes the code, then the connection goes. */
        unsigned code = c->close_code;
        uint8_t b[2] = { (uint8_t)(code >> 8), (uint8_t)code };
        client_ws_queue_op(c, WSFRAME_CLOSE, b, code ? 2 : 0);
        c->reconnect_now = code == 1012;
        client_fail(c, code == 1012 ? SE_CLOSE_1012 : code == 1001 ? SE_CLOSE_1001 : SE_CLOSE_OTHER);
    }
}

/* ---- connection ---- */

static void client_b64(const unsigned char *in, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static const char *client_header(const char *hs, const char *name)
{
    size_t nl = strlen(name);
    for (const char *l = strstr(hs, "\r\n"); l; l = strstr(l, "\r\n")) {
        l += 2;
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            l += nl + 1;
            while (*l == ' ' || *l == '\t')
                l++;
            return l;
        }
    }
    return NULL;
}

static void client_on_upgrade(struct client *c, const char *p, size_t n)
{
    if (!c->hs && !(c->hs = malloc(CLIENT_HS_MAX + 1))) {
        client_fail(c, SE_HANDSHAKE);
        return;
    }
    size_t take = n < CLIENT_HS_MAX - c->hs_len ? n : CLIENT_HS_MAX - c->hs_len;
    memcpy(c->hs + c->hs_len, p, take);
    c->hs_len += take;
    c->hs[c->hs_len] = '\0';
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hs_len == CLIENT_HS_MAX)
            client_fail(c, SE_HANDSHAKE);
        return;
    }
    end[2] = '\0';                    /* headers end with one CRLF now */
    int status = strncmp(c->hs, "HTTP/1.1 ", 9) == 0 ? atoi(c->hs + 9) : 0;
    if (status != 101) {
        const char *ra = client_header(c->hs, "Retry-After");
        if (ra)
            c->retry_after_ms = strtoull(ra, NULL, 10) * 1000;
        client_fail(c, status == 401 ? SE_HTTP_401 : status == 503 ? SE_HTTP_503 : SE_HTTP_OTHER);
        return;
    }
    const char *acc = client_header(c->hs, "Sec-WebSocket-Accept");
    if (!acc || strncmp(acc, c->accept, strlen(c->accept)) != 0) {
        client_fail(c, SE_HANDSHAKE);
        return;
    }
    /* What follows the headers (already the hello, often) is WebSocket. */
    size_t hdr = (size_t)(end + 4 - c->hs), rest = c->hs_len - hdr;
    c->state = CS_HELLO;
    if (rest)
        client_feed(c, c->hs + hdr, rest);
    free(c->hs);                      /* client_fail does not free hs: on_closed does */
    c->hs = NULL;
    c->hs_len = 0;
    if (take < n && (c->state == CS_HELLO || c->state == CS_READY))
        client_feed(c, p + take, n - take);
}

static void client_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct client *c = client_from(container_of(h, struct client, tcp));
    *buf = uv_buf_init(c->w->rbuf, sizeof c->w->rbuf);
}

static void client_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct client *c = client_from(container_of(s, struct client, tcp));
    if (n == 0)
        return;
    if (n < 0) {
        client_fail(c, SE_EOF);
        return;
    }
    /* One clock reading per read: every frame in it arrived then. */
    c->w->now = worker_now();
    if (c->state == CS_UPGRADING)
        client_on_upgrade(c, buf->base, (size_t)n);
    else if (c->state == CS_HELLO || c->state == CS_READY)
        client_feed(c, buf->base, (size_t)n);
}

static void client_on_connect(uv_connect_t *req, int status)
{
    struct client *c = client_from(container_of(req, struct client, creq));
    if (status == UV_ECANCELED || c->state != CS_CONNECTING)
        return;
    if (status < 0) {
        client_fail(c, SE_CONNECT);
        return;
    }
    const struct conf_gw *gw = &c->w->conf->gw[c->gw];
    unsigned char key[16], sha[SHA_DIGEST_LENGTH];
    char key64[32], buf[1024];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = worker_rand(c->w);
        memcpy(key + i, &r, 8);
    }
    client_b64(key, sizeof key, key64);
    int n = snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key64);
    SHA1((const unsigned char *)buf, (size_t)n, sha);
    client_b64(sha, sizeof sha, c->accept);
    if (c->w->conf->proto == PROTO_SOCKETIO)
        n = snprintf(buf, sizeof buf,
                     "GET /socket.io/?EIO=4&transport=websocket&token=%s HTTP/1.1\r\nHost: %s\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     c->token, gw->host, key64);
    else
        n = snprintf(buf, sizeof buf,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "Authorization: Bearer %s\r\n\r\n", gw->path, gw->host, key64, c->token);
    c->state = CS_UPGRADING;
    if (n < 0 || (size_t)n >= sizeof buf || client_append(c, buf, (size_t)n) < 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, client_on_alloc, client_on_read) < 0) {
        client_fail(c, SE_HANDSHAKE);
        return;
    }
    client_write_out(c);
}

static void client_schedule(struct client *c)
{
    struct worker *w = c->w;
    uint64_t delay = c->reconnect_now ? 0 : client_backoff_ms(c, c->attempt);
    if (delay < c->retry_after_ms)
        delay = c->retry_after_ms + worker_rand(w) % 500;
    c->attempt++;
    c->reconnect_now = 0;
    c->retry_after_ms = 0;
    c->gw = (c->gw + 1) % w->conf->ngw;
    c->state = CS_IDLE;
    w->st.reconnects++;
    uv_timer_start(&c->timer, client_on_timer, delay, 0);
}

static void client_on_closed(uv_handle_t *h)
{
    struct client *c = client_from(container_of(h, struct client, tcp));
    wsframe_reader_free(&c->rd);
    c->close_seen = 0;
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
    c->wlen = 0;
    c->syncing = 0;
    if (c->snd)                       /* on the wire of a dead connection: send again */
        for (int i = 0; i < SENDER_RING; i++)
            if (c->snd->ring[i].state != SLOT_FREE)
                c->snd->ring[i].state = SLOT_QUEUED;
    if (c->w->phase == PHASE_DONE) {
        c->state = CS_DONE;
        return;
    }
    client_schedule(c);
}

static void client_fail(struct client *c, int err)
{
    struct worker *w = c->w;
    if (c->state < CS_CONNECTING || c->state >= CS_CLOSING)
        return;
    w->st.errs[err]++;
    if (c->state == CS_READY)
        w->st.conns--;
    else
        worker_connect_done(w);
    c->state = CS_CLOSING;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, client_on_closed);
}

void client_connect(struct client *c)
{
    struct worker *w = c->w;
    const struct conf *cf = w->conf;
    const struct conf_gw *gw = &cf->gw[c->gw];
    int r = uv_tcp_init_ex(&w->loop, &c->tcp, gw->addr.ss_family);
    if (r < 0) {                      /* EMFILE and the like: no handle to close */
        w->st.errs[SE_CONNECT]++;
        worker_connect_done(w);
        client_schedule(c);
        return;
    }
    c->state = CS_CONNECTING;
    if (cf->nsrc && gw->addr.ss_family == AF_INET) {
        /* Source port chosen at connect() per 4-tuple, not at bind(): each
         * source address then carries a full port range per gateway. */
        uv_os_fd_t fd;
        int one = 1;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        uv_tcp_bind(&c->tcp, (const struct sockaddr *)&cf->src[c->gidx % cf->nsrc], 0);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&gw->addr, client_on_connect);
    if (r < 0) {
        client_fail(c, SE_CONNECT);
        return;
    }
    uv_timer_start(&c->timer, client_on_timer, CLIENT_CONNECT_TIMEOUT_MS, 0);
}

static void client_on_timer(uv_timer_t *t)
{
    struct client *c = client_from(container_of(t, struct client, timer));
    switch (c->state) {
    case CS_IDLE:
        worker_cq_push(c->w, c);
        break;
    case CS_CONNECTING:
    case CS_UPGRADING:
    case CS_HELLO:
        client_fail(c, SE_TIMEOUT);
        break;
    case CS_READY:
        if (c->want_join)
            client_send_join(c);
        if (c->want_sync)
            client_sync(c);
        client_resend(c, 1);
        break;
    default:
        break;
    }
}

void client_shutdown(struct client *c)
{
    if (c->state >= CS_CONNECTING && c->state < CS_CLOSING) {
        if (c->state == CS_READY)
            c->w->st.conns--;
        c->state = CS_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, client_on_closed);
    }
    uv_close((uv_handle_t *)&c->timer, NULL);
}
