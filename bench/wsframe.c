#include "bench/wsframe.h"

#include <stdlib.h>
#include <string.h>

/* Buffers above this are given back once empty (after a large history page). */
#define WSFRAME_KEEP 65536

struct wsframe_hdr {
    int fin, op;
    size_t hlen;                        /* header bytes */
    uint64_t plen;                      /* payload bytes */
};

void wsframe_reader_init(struct wsframe_reader *r, size_t max_msg)
{
    memset(r, 0, sizeof *r);
    r->max_msg = max_msg;
}

void wsframe_reader_free(struct wsframe_reader *r)
{
    free(r->buf);
    free(r->msg);
    wsframe_reader_init(r, r->max_msg);
}

static int wsframe_reserve(uint8_t **b, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < need)
        c *= 2;
    uint8_t *p = realloc(*b, c);
    if (!p)
        return WSFRAME_ENOMEM;
    *b = p;
    *cap = c;
    return 0;
}

/* 1 with h filled when p[0..n) starts with a whole header, 0 when more bytes
 * are needed, or an error. The payload length is checked here, before any of
 * it is buffered. */
static int wsframe_parse_header(const struct wsframe_reader *r, const uint8_t *p, size_t n,
                                struct wsframe_hdr *h)
{
    if (n < 2)
        return 0;
    h->fin = p[0] >> 7;
    h->op = p[0] & 0x0f;
    if ((p[0] & 0x70) || (p[1] & 0x80))
        return WSFRAME_EPROTO;          /* extensions were not negotiated; servers do not mask */
    if (h->op > WSFRAME_BINARY && (h->op < WSFRAME_CLOSE || h->op > WSFRAME_PONG))
        return WSFRAME_EPROTO;
    unsigned l7 = p[1] & 0x7f;
    if (l7 < 126) {
        h->hlen = 2;
        h->plen = l7;
    } else if (l7 == 126) {
        if (n < 4)
            return 0;
        h->hlen = 4;
        h->plen = (uint64_t)p[2] << 8 | p[3];
    } else {
        if (n < 10)
            return 0;
        h->hlen = 10;
        h->plen = 0;
        for (int i = 2; i < 10; i++)
            h->plen = h->plen << 8 | p[i];
        if (h->plen >> 63)
            return WSFRAME_EPROTO;
    }
    if (h->op >= WSFRAME_CLOSE && (!h->fin || h->plen > 125))
        return WSFRAME_EPROTO;
    if (h->plen > r->max_msg)
        return WSFRAME_ETOOBIG;
    return 1;
}

/* One whole frame: a control frame or a complete unfragmented message goes
 * to cb as it lies; fragments collect in r->msg. */
static int wsframe_on_frame(struct wsframe_reader *r, const struct wsframe_hdr *h, const uint8_t *p,
                            wsframe_cb cb, void *user)
{
    size_t n = (size_t)h->plen;
    if (h->op >= WSFRAME_CLOSE) {
        if (h->op == WSFRAME_CLOSE)
            r->done = 1;
        return cb(user, h->op, p, n) || r->done ? 1 : 0;
    }
    if ((h->op == WSFRAME_CONT) != (r->msg_op != 0))
        return WSFRAME_EPROTO;          /* a continuation with nothing open, or a new message inside one */
    if (h->op != WSFRAME_CONT && h->fin)
        return cb(user, h->op, p, n) ? 1 : 0;
    if (r->msg_len + n > r->max_msg)
        return WSFRAME_ETOOBIG;
    if (wsframe_reserve(&r->msg, &r->msg_cap, r->msg_len + n) < 0)
        return WSFRAME_ENOMEM;
    memcpy(r->msg + r->msg_len, p, n);
    r->msg_len += n;
    if (h->op != WSFRAME_CONT)
        r->msg_op = h->op;
    if (!h->fin)
        return 0;
    int op = r->msg_op;
    size_t len = r->msg_len;
    r->msg_op = 0;
    r->msg_len = 0;
    return cb(user, op, r->msg ? r->msg : (const uint8_t *)"", len) ? 1 : 0;
}

int wsframe_reader_feed(struct wsframe_reader *r, const uint8_t *p, size_t n, wsframe_cb cb,
                        void *user)
{
    if (r->done)
        return 1;
    if (r->len) {                       /* finish the split frame first: read from our copy */
        if (wsframe_reserve(&r->buf, &r->cap, r->len + n) < 0)
            return WSFRAME_ENOMEM;
        memcpy(r->buf + r->len, p, n);
        p = r->buf;
        n += r->len;
        r->len = 0;
    }
    size_t off = 0;
    for (;;) {
        struct wsframe_hdr h;
        int e = wsframe_parse_header(r, p + off, n - off, &h);
        if (e < 0)
            return e;
        if (e == 0 || n - off - h.hlen < h.plen)
            break;
        e = wsframe_on_frame(r, &h, p + off + h.hlen, cb, user);
        off += h.hlen + (size_t)h.plen;
        if (e != 0) {
            r->done = e > 0;
            return e;
        }
    }
    size_t rest = n - off;
    if (rest && p != r->buf && wsframe_reserve(&r->buf, &r->cap, rest) < 0)
        return WSFRAME_ENOMEM;
    if (rest)
        memmove(r->buf, p + off, rest); /* p may be r->buf itself */
    r->len = rest;
    if (rest == 0 && r->cap > WSFRAME_KEEP) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    if (r->msg_op == 0 && r->msg_cap > WSFRAME_KEEP) {
        free(r->msg);
        r->msg = NULL;
        r->msg_cap = 0;
    }
    return 0;
}

size_t wsframe_encode(uint8_t *out, int opcode, const uint8_t *p, size_t n, uint32_t mask)
{
    size_t h = 0;
    out[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        out[h++] = (uint8_t)(0x80 | n);
    } else if (n <= 0xffff) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    uint8_t key[4];
    memcpy(key, &mask, 4);
    memcpy(out + h, key, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        out[h + i] = p[i] ^ key[i & 3];
    return h + n;
}
