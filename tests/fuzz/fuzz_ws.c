/* fuzz_ws: the pure helpers of net/ws.c.
 *
 * ws_utf8_valid (the guard in front of on_text, with its 8-byte ASCII fast
 * path) is checked differentially against the reference below, written
 * straight from the Unicode standard's table of well-formed byte sequences
 * (Unicode 15, table 3-7) rather than by decoding code points. Every suffix
 * of the input is checked too, so the fast path meets every alignment.
 *
 * ws_frame_header: the first 8 bytes are a payload length, the 9th an
 * opcode; the header must be the shortest RFC 6455 encoding of that length.
 *
 * ws_parser_feed (net/ws_parser.c, the client-frame parser): byte 0 picks a
 * chunk size, byte 1 the message limit, the rest is a client byte stream.
 * The stream is parsed whole and in chunks: both must give the same result
 * and the same deliveries, and every delivery must respect RFC 6455 (valid
 * opcode, control payload <= 125 bytes, text and close reasons well-formed
 * UTF-8 by the reference above, close codes a peer may send, messages within
 * the limit). The result is 0 or one of the documented close codes; ASan's
 * leak check sees the buffers of a message left unfinished.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/ws.h"
#include "net/ws_parser.h"

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_ws: invariant failed at line %d: %s\n", line, what);
    abort();
}

static int in(unsigned char b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; }

/* Table 3-7: each row is a lead byte range and the range of the 2nd byte;
 * any further bytes are 80..BF. */
static int ref_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char b = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;
        if (b <= 0x7f) {
            i++;
            continue;
        } else if (in(b, 0xc2, 0xdf)) {
            n = 2;
        } else if (b == 0xe0) {
            n = 3, lo = 0xa0;
        } else if (in(b, 0xe1, 0xec) || in(b, 0xee, 0xef)) {
            n = 3;
        } else if (b == 0xed) {
            n = 3, hi = 0x9f;
        } else if (b == 0xf0) {
            n = 4, lo = 0x90;
        } else if (in(b, 0xf1, 0xf3)) {
            n = 4;
        } else if (b == 0xf4) {
            n = 4, hi = 0x8f;
        } else {
            return 0;
        }
        if (len - i < n || !in(s[i + 1], lo, hi))
            return 0;
        for (size_t k = 2; k < n; k++)
            if (!in(s[i + k], 0x80, 0xbf))
                return 0;
        i += n;
    }
    return 1;
}

static void check_header(const uint8_t *data, size_t size)
{
    uint64_t len = 0;
    for (size_t i = 0; i < 8 && i < size; i++)
        len = len << 8 | data[i];
    int opcode = size > 8 ? data[8] : 1;
    /* No buffer reaches 2^63 bytes; RFC 6455 5.2 forbids such lengths. */
    size_t slen = (size_t)(len & INT64_MAX);
    uint8_t out[10];
    memset(out, 0xaa, sizeof out);
    size_t h = ws_frame_header(out, slen, opcode);
    CHECK(out[0] == (0x80 | (opcode & 0x0f)));
    CHECK((out[1] & 0x80) == 0); /* server frames are never masked */
    uint64_t got;
    if (slen < 126) {
        CHECK(h == 2 && out[1] == slen);
        got = out[1];
    } else if (slen <= 0xffff) {
        CHECK(h == 4 && out[1] == 126);
        got = (uint64_t)out[2] << 8 | out[3];
    } else {
        CHECK(h == 10 && out[1] == 127 && (out[2] & 0x80) == 0); /* RFC 6455 5.2: MSB 0 */
        got = 0;
        for (int i = 0; i < 8; i++)
            got = got << 8 | out[2 + i];
    }
    CHECK(got == (uint64_t)slen);
}

struct parse_log {
    uint32_t max_msg;
    unsigned events;
    uint64_t hash; /* FNV-1a over (opcode, length, payload) of every delivery */
};

static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ull;
}

static int on_frame(void *user, int opcode, uint8_t *d, size_t len)
{
    struct parse_log *l = user;
    CHECK(d != NULL);
    switch (opcode) {
    case WS_OP_TEXT:
        CHECK(ref_utf8_valid(d, len));
        /* fall through */
    case WS_OP_BINARY:
        CHECK(len <= l->max_msg);
        break;
    case WS_OP_CLOSE:
        CHECK(len != 1 && len <= 125);
        if (len >= 2) {
            unsigned code = (unsigned)d[0] << 8 | d[1];
            CHECK((code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006) ||
                  (code >= 3000 && code <= 4999));
            CHECK(ref_utf8_valid(d + 2, len - 2));
        }
        break;
    case WS_OP_PING:
    case WS_OP_PONG:
        CHECK(len <= 125);
        break;
    default:
        CHECK(!"unexpected opcode");
    }
    l->events++;
    hash_bytes(&l->hash, &opcode, sizeof opcode);
    hash_bytes(&l->hash, &len, sizeof len);
    hash_bytes(&l->hash, d, len);
    return 0;
}

static int parse(const uint8_t *data, size_t size, size_t step, uint32_t max_msg, struct parse_log *l)
{
    /* A private copy: the parser unmasks in place. */
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    ws_parser_t p = { .max_msg = max_msg };
    l->max_msg = max_msg;
    l->events = 0;
    l->hash = 0xcbf29ce484222325ull;
    int r = 0;
    for (size_t off = 0; off < size && r == 0; off += step) {
        size_t n = size - off < step ? size - off : step;
        r = ws_parser_feed(&p, buf + off, n, on_frame, l);
    }
    ws_parser_free(&p);
    free(buf);
    return r;
}

static void check_parser(const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    size_t step = data[0] & 0x0f ? data[0] & 0x0f : 1;
    uint32_t max_msg = 16 + (uint32_t)data[1] * 4; /* 16..1036: 1009 is reachable */
    data += 2, size -= 2;
    struct parse_log whole, parts;
    int rw = parse(data, size, size ? size : 1, max_msg, &whole);
    int rp = parse(data, size, step, max_msg, &parts);
    CHECK(rw == 0 || rw == 1002 || rw == 1007 || rw == 1009);
    if (rw != rp || whole.events != parts.events || whole.hash != parts.hash) {
        fprintf(stderr, "fuzz_ws: whole: r=%d events=%u, in %zu-byte chunks: r=%d events=%u\n", rw,
                whole.events, step, rp, parts.events);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly size bytes, so ASan sees any read past the end. */
    unsigned char *s = malloc(size ? size : 1);
    CHECK(s != NULL);
    memcpy(s, data, size);
    for (size_t off = 0; off <= size && off < 16; off++) {
        int got = ws_utf8_valid(s + off, size - off);
        int want = ref_utf8_valid(s + off, size - off);
        if (got != want) {
            fprintf(stderr, "fuzz_ws: ws_utf8_valid=%d reference=%d at offset %zu\n", got, want, off);
            abort();
        }
    }
    free(s);
    check_header(data, size);
    check_parser(data, size);
    return 0;
}
