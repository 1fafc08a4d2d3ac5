#include "bench/delivery.h"

#include <cJSON.h>
#include <string.h>

/* The fields the scanner returns, as bits: each may appear once. */
enum { DF_OP = 1, DF_ROOM = 2, DF_SEQ = 4, DF_FROM = 8, DF_CID = 16, DF_TEXT = 32 };

/* A seq longer than this is left to cJSON, which reads numbers as doubles. */
#define DELIVERY_SEQ_DIGITS 15

static int delivery_digit(char c)
{
    return c >= '0' && c <= '9';
}

uint64_t delivery_u64(const char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n && delivery_digit(p[i]); i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return UINT64_MAX;
        v = v * 10 + d;
    }
    return v;
}

int delivery_str_eq(struct delivery_str s, const char *p, size_t n)
{
    return s.p && s.n == n && memcmp(s.p, p, n) == 0;
}

static const char *delivery_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The string whose opening quote is at p: *s gets its raw contents, *esc
 * whether it holds an escape. Returns what follows the closing quote, or NULL. */
static const char *delivery_string(const char *p, const char *e, struct delivery_str *s, int *esc)
{
    /* Fast case, no escape and no control byte: memchr finds the end and the
     * check below has no early exit, so both run over words, not bytes. */
    const char *q = memchr(p + 1, '"', (size_t)(e - p - 1));
    unsigned odd = 0;
    for (const char *r = p + 1; q && r < q; r++)
        odd |= ((unsigned char)*r < 0x20) | (*r == '\\');
    if (q && !odd) {
        *esc = 0;
        *s = (struct delivery_str){ .p = p + 1, .n = (size_t)(q - p - 1) };
        return q + 1;
    }
    q = p + 1;
    *esc = 0;
    while (q < e && *q != '"') {
        if ((unsigned char)*q < 0x20)
            return NULL;
        if (*q == '\\') {
            if (e - q < 2)
                return NULL;
            *esc = 1;
            q++;
        }
        q++;
    }
    if (q >= e)
        return NULL;
    *s = (struct delivery_str){ .p = p + 1, .n = (size_t)(q - p - 1) };
    return q + 1;
}

/* A JSON number at p; *plain says whether it is a non-negative integer short
 * enough to read exactly. Returns what follows it, or NULL. */
static const char *delivery_number(const char *p, const char *e, int *plain)
{
    *plain = 1;
    if (p < e && *p == '-') {
        p++;
        *plain = 0;
    }
    const char *d = p;
    while (p < e && delivery_digit(*p))
        p++;
    if (p == d || (p - d > 1 && *d == '0'))
        return NULL;
    if (p - d > DELIVERY_SEQ_DIGITS)
        *plain = 0;
    if (p < e && *p == '.') {
        d = ++p;
        while (p < e && delivery_digit(*p))
            p++;
        if (p == d)
            return NULL;
        *plain = 0;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        d = p;
        while (p < e && delivery_digit(*p))
            p++;
        if (p == d)
            return NULL;
        *plain = 0;
    }
    return p;
}

static unsigned delivery_field(struct delivery_str k)
{
    switch (k.n) {
    case 2:
        return memcmp(k.p, "op", 2) == 0 ? DF_OP : 0;
    case 3:
        return memcmp(k.p, "seq", 3) == 0 ? DF_SEQ : memcmp(k.p, "cid", 3) == 0 ? DF_CID : 0;
    case 4:
        return memcmp(k.p, "room", 4) == 0 ? DF_ROOM
               : memcmp(k.p, "from", 4) == 0 ? DF_FROM
               : memcmp(k.p, "text", 4) == 0 ? DF_TEXT : 0;
    default:
        return 0;
    }
}

/* One value at p (not an object or array: those are refused). f is the
 * field it belongs to (0: skipped); the value must have that field's type. */
static const char *delivery_value(const char *p, const char *e, unsigned f, struct delivery *d,
                                  struct delivery_str *op)
{
    if (*p == '"') {
        struct delivery_str v;
        int esc;
        if (!(p = delivery_string(p, e, &v, &esc)) || (f && esc) || f == DF_SEQ)
            return NULL;
        struct delivery_str *to = f == DF_OP ? op : f == DF_ROOM ? &d->room : f == DF_FROM ? &d->from
                                  : f == DF_CID ? &d->cid : f == DF_TEXT ? &d->text : NULL;
        if (to)
            *to = v;
        return p;
    }
    if (*p == '-' || delivery_digit(*p)) {
        int plain;
        const char *q = delivery_number(p, e, &plain);
        if (!q || (f && f != DF_SEQ) || (f == DF_SEQ && !plain))
            return NULL;
        if (f == DF_SEQ)
            d->seq = delivery_u64(p, (size_t)(q - p));
        return q;
    }
    static const char *const lit[] = { "true", "false", "null" };
    for (int i = 0; i < 3 && !f; i++) {
        size_t l = strlen(lit[i]);
        if ((size_t)(e - p) >= l && memcmp(p, lit[i], l) == 0)
            return p + l;
    }
    return NULL;
}

/* The flat object whose '{' is at p. Returns what follows its '}', or NULL
 * to leave the frame to cJSON. */
static const char *delivery_object(const char *p, const char *e, struct delivery *d,
                                   struct delivery_str *op)
{
    unsigned seen = 0;
    memset(d, 0, sizeof *d);
    *op = (struct delivery_str){ 0 };
    p = delivery_ws(p + 1, e);
    if (p < e && *p == '}')
        return p + 1;
    for (;;) {
        struct delivery_str k;
        int esc;
        if (p >= e || *p != '"' || !(p = delivery_string(p, e, &k, &esc)) || esc)
            return NULL;
        p = delivery_ws(p, e);
        if (p >= e || *p != ':')
            return NULL;
        p = delivery_ws(p + 1, e);
        unsigned f = delivery_field(k);
        if (p >= e || (f & seen))
            return NULL;
        seen |= f;
        if (!(p = delivery_value(p, e, f, d, op)))
            return NULL;
        p = delivery_ws(p, e);
        if (p < e && *p == '}')
            return p + 1;
        if (p >= e || *p != ',')
            return NULL;
        p = delivery_ws(p + 1, e);
    }
}

int delivery_scan_chatd(const char *p, size_t n, struct delivery *d)
{
    const char *e = p + n;
    struct delivery_str op;
    p = delivery_ws(p, e);
    if (p >= e || *p != '{' || !(p = delivery_object(p, e, d, &op)))
        return 0;
    return delivery_ws(p, e) == e && delivery_str_eq(op, "msg", 3);
}

int delivery_scan_sio(const char *p, size_t n, struct delivery *d)
{
    static const char head[] = "42[\"msg\",";
    const char *e = p + n;
    struct delivery_str op;
    if (n < sizeof head - 1 || memcmp(p, head, sizeof head - 1) != 0)
        return 0;
    p = delivery_ws(p + sizeof head - 1, e);
    if (p >= e || *p != '{' || !(p = delivery_object(p, e, d, &op)))
        return 0;
    p = delivery_ws(p, e);
    return p < e && *p == ']' && delivery_ws(p + 1, e) == e;
}

static struct delivery_str delivery_json_str(const cJSON *m, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, k);
    if (!cJSON_IsString(v))
        return (struct delivery_str){ 0 };
    return (struct delivery_str){ .p = v->valuestring, .n = strlen(v->valuestring) };
}

void delivery_from_json(const cJSON *m, struct delivery *d)
{
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(m, "seq");
    d->room = delivery_json_str(m, "room");
    d->from = delivery_json_str(m, "from");
    d->cid = delivery_json_str(m, "cid");
    d->text = delivery_json_str(m, "text");
    d->seq = cJSON_IsNumber(seq) && seq->valuedouble >= 0 ? (uint64_t)seq->valuedouble : 0;
}
