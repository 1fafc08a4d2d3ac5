/* ws_parser: see net/ws_parser.h for the contract and why it exists.
 *
 * Per frame: gather the header (2 to 14 bytes, possibly over several reads),
 * check it completely, then take payload bytes. The mask is applied by the
 * payload offset within the frame, so a frame split anywhere unmasks the
 * same. A whole frame inside one read is delivered from the read buffer; a
 * data frame that is fragmented or split goes to p->msg, a split control
 * frame to p->ctl (control frames may arrive between fragments).
 */
#include "net/ws_parser.h"

#include <stdlib.h>
#include <string.h>

#define WS_CTL_MAX 125

int ws_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* Chat text is mostly ASCII: skip it eight bytes at a time. */
        uint64_t w;
        if (len - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ull) == 0)) {
            i += 8;
            continue;
        }
        unsigned char b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((b & 0xe0) == 0xc0) {
            n = 1, cp = b & 0x1fu, min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            n = 2, cp = b & 0x0fu, min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            n = 3, cp = b & 0x07u, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i - 1 < n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

void ws_parser_free(ws_parser_t *p)
{
    free(p->msg);
    free(p->ctl);
    p->msg = NULL;
    p->ctl = NULL;
    p->msg_len = p->msg_cap = 0;
    p->ctl_len = 0;
}

/* Header size once its first two bytes are known. */
static size_t ws_parser_hdr_size(const uint8_t *h)
{
    /* An unmasked frame is refused as soon as its 2nd byte is in. */
    size_t n = 2 + (h[1] & 0x80 ? 4 : 0);
    uint8_t l7 = h[1] & 0x7f;
    return n + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
}

/* A close code a peer may send (RFC 6455 7.4.1, 7.4.2; IANA registry). */
static int ws_parser_close_code_ok(unsigned code)
{
    if (code >= 3000 && code <= 4999)
        return 1;
    return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

/* Checks a complete header h and starts its frame; 0 or a close code. */
static int ws_parser_header(ws_parser_t *p, const uint8_t *h)
{
    uint8_t op = h[0] & 0x0f, fin = h[0] >> 7;
    if (h[0] & 0x70)
        return 1002;
    if (!(h[1] & 0x80))
        return 1002;
    uint64_t len = h[1] & 0x7f;
    /* RFC 6455 5.2: the length takes the shortest form that holds it. */
    if (len == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        if (len < 126)
            return 1002;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        if (len >> 63 || len <= 0xffff)
            return 1002;
    }
    if (op >= 0x8) {
        if ((op != WS_OP_CLOSE && op != WS_OP_PING && op != WS_OP_PONG) || !fin || len > WS_CTL_MAX)
            return 1002;
    } else if (op == WS_OP_CONT) {
        if (!p->msg_op)
            return 1002;
    } else if (op == WS_OP_TEXT || op == WS_OP_BINARY) {
        if (p->msg_op)
            return 1002;
    } else {
        return 1002;
    }
    if (op < 0x8 && len > (uint64_t)p->max_msg - (op == WS_OP_CONT ? p->msg_len : 0))
        return 1009;
    p->opcode = op ? op : p->msg_op;
    if (op == WS_OP_TEXT || op == WS_OP_BINARY)
        p->msg_op = op;
    p->fin = fin;
    p->flen = p->need = (uint32_t)len;
    p->in_payload = 1;
    return 0;
}

static void ws_parser_unmask(const ws_parser_t *p, uint8_t *d, size_t n)
{
    const uint8_t *mask = p->hdr + p->hdr_len - 4;
    size_t off = p->flen - p->need;
    for (size_t i = 0; i < n; i++)
        d[i] ^= mask[(off + i) & 3];
}

/* Appends n payload bytes of a data frame to p->msg. */
static int ws_parser_keep(ws_parser_t *p, const uint8_t *d, size_t n)
{
    if (n == 0)
        return 0;
    size_t want = (size_t)p->msg_len + n;
    if (want > p->msg_cap) {
        /* Double, but never past what this frame can still bring: a peer that
         * claims 64 KiB and sends 10 bytes holds ~10 bytes here. */
        size_t cap = p->msg_cap < 128 ? 256 : (size_t)p->msg_cap * 2;
        size_t bound = (size_t)p->msg_len + p->need;
        if (cap > bound)
            cap = bound;
        if (cap < want)
            cap = want;
        uint8_t *m = realloc(p->msg, cap);
        if (!m)
            return 1011;
        p->msg = m;
        p->msg_cap = (uint32_t)cap;
    }
    memcpy(p->msg + p->msg_len, d, n);
    p->msg_len += (uint32_t)n;
    return 0;
}

static int ws_parser_check_close(const uint8_t *d, size_t n)
{
    if (n == 0)
        return 0;
    if (n == 1)
        return 1002;
    if (!ws_parser_close_code_ok((unsigned)d[0] << 8 | d[1]))
        return 1002;
    return ws_utf8_valid(d + 2, n - 2) ? 0 : 1007;
}

/* The current frame is complete; data/n is its payload (control) or, for a
 * final data frame, the whole message. */
static int ws_parser_deliver(ws_parser_t *p, uint8_t *d, size_t n, ws_parser_cb cb, void *user)
{
    static uint8_t empty[1];
    int op = p->opcode;
    p->in_payload = 0;
    p->hdr_len = 0;
    p->opcode = 0;
    if (op == WS_OP_CLOSE) {
        int r = ws_parser_check_close(d, n);
        if (r)
            return r;
    } else if (op == WS_OP_TEXT && !ws_utf8_valid(d, n)) {
        return 1007;
    }
    if (op < 0x8)
        p->msg_op = 0;
    return cb(user, op, n ? d : empty, n);
}

/* Takes up to len payload bytes of the current frame; *used says how many. */
static int ws_parser_payload(ws_parser_t *p, uint8_t *d, size_t len, size_t *used, ws_parser_cb cb,
                             void *user)
{
    size_t take = len < p->need ? len : p->need;
    ws_parser_unmask(p, d, take);
    *used = take;
    int whole = take == p->need && p->need == p->flen; /* the frame is all in d */
    p->need -= (uint32_t)take;
    if (p->opcode >= 0x8) {
        if (whole)
            return ws_parser_deliver(p, d, take, cb, user);
        if (!p->ctl && !(p->ctl = malloc(WS_CTL_MAX)))
            return 1011;
        memcpy(p->ctl + p->ctl_len, d, take);
        p->ctl_len = (uint8_t)(p->ctl_len + take);
        if (p->need)
            return 0;
        size_t n = p->ctl_len;
        p->ctl_len = 0;
        /* Freed only after delivery: the callback reads it. */
        int r = ws_parser_deliver(p, p->ctl, n, cb, user);
        free(p->ctl);
        p->ctl = NULL;
        return r;
    }
    if (whole && p->fin && p->msg_len == 0)
        return ws_parser_deliver(p, d, take, cb, user); /* the common case: no copy */
    int r = ws_parser_keep(p, d, take);
    if (r || p->need)
        return r;
    if (!p->fin) { /* fragment done; the message goes on */
        p->in_payload = 0;
        p->hdr_len = 0;
        p->opcode = 0;
        return 0;
    }
    uint8_t *m = p->msg;
    size_t n = p->msg_len;
    p->msg = NULL;
    p->msg_len = p->msg_cap = 0;
    r = ws_parser_deliver(p, m, n, cb, user);
    free(m);
    return r;
}

int ws_parser_feed(ws_parser_t *p, uint8_t *data, size_t len, ws_parser_cb cb, void *user)
{
    while (len > 0 || (p->in_payload && p->need == 0)) {
        if (!p->in_payload) {
            /* Gather the header in p->hdr: it is at most 14 bytes. */
            size_t want = p->hdr_len < 2 ? 2 : ws_parser_hdr_size(p->hdr);
            while (p->hdr_len < want && len > 0) {
                p->hdr[p->hdr_len++] = *data++;
                len--;
                if (p->hdr_len == 2)
                    want = ws_parser_hdr_size(p->hdr);
            }
            if (p->hdr_len < want)
                return 0;
            int r = ws_parser_header(p, p->hdr);
            if (r)
                return r;
            continue;
        }
        size_t used;
        int r = ws_parser_payload(p, data, len, &used, cb, user);
        if (r)
            return r;
        data += used;
        len -= used;
    }
    return 0;
}
