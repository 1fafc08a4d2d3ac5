#include "lib/jbuf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jbuf_init(struct jbuf *b, size_t cap_hint)
{
    memset(b, 0, sizeof *b);
    b->p = malloc(cap_hint ? cap_hint : 64);
    if (!b->p)
        b->failed = 1;
    else
        b->cap = cap_hint ? cap_hint : 64;
}

void jbuf_free(struct jbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void jbuf_reset(struct jbuf *b)
{
    b->len = 0;
    b->need_comma = 0;
}

static int jbuf_reserve(struct jbuf *b, size_t n)
{
    if (b->failed)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

char *jbuf_take(struct jbuf *b, size_t *len)
{
    if (b->failed || jbuf_reserve(b, 0) < 0) {
        jbuf_free(b);
        return NULL;
    }
    b->p[b->len] = 0;
    char *p = b->p;
    if (len)
        *len = b->len;
    memset(b, 0, sizeof *b);
    return p;
}

void jbuf_raw(struct jbuf *b, const char *s, size_t n)
{
    if (jbuf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void jbuf_rawz(struct jbuf *b, const char *s) { jbuf_raw(b, s, strlen(s)); }

static void jbuf_ch(struct jbuf *b, char c)
{
    if (jbuf_reserve(b, 1) == 0)
        b->p[b->len++] = c;
}

void jbuf_obj_open(struct jbuf *b) { jbuf_ch(b, '{'); b->need_comma = 0; }
void jbuf_obj_close(struct jbuf *b) { jbuf_ch(b, '}'); b->need_comma = 1; }
void jbuf_arr_open(struct jbuf *b) { jbuf_ch(b, '['); b->need_comma = 0; }
void jbuf_arr_close(struct jbuf *b) { jbuf_ch(b, ']'); b->need_comma = 1; }

void jbuf_comma(struct jbuf *b)
{
    if (b->need_comma)
        jbuf_ch(b, ',');
    b->need_comma = 0;
}

void jbuf_key(struct jbuf *b, const char *key)
{
    if (b->need_comma)
        jbuf_ch(b, ',');
    jbuf_ch(b, '"');
    jbuf_rawz(b, key);
    jbuf_raw(b, "\":", 2);
    b->need_comma = 0;
}

void jbuf_str(struct jbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX. */
    if (jbuf_reserve(b, n * 6 + 2) < 0)
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->need_comma = 1;
}

void jbuf_strz(struct jbuf *b, const char *s) { jbuf_str(b, s, strlen(s)); }

void jbuf_int(struct jbuf *b, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
    jbuf_raw(b, tmp, (size_t)n);
    b->need_comma = 1;
}

void jbuf_bool(struct jbuf *b, int v)
{
    jbuf_rawz(b, v ? "true" : "false");
    b->need_comma = 1;
}

void jbuf_kv_str(struct jbuf *b, const char *k, const char *s, size_t n) { jbuf_key(b, k); jbuf_str(b, s, n); }
void jbuf_kv_strz(struct jbuf *b, const char *k, const char *s) { jbuf_key(b, k); jbuf_strz(b, s); }
void jbuf_kv_int(struct jbuf *b, const char *k, int64_t v) { jbuf_key(b, k); jbuf_int(b, v); }
