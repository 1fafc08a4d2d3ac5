/* fuzz_api: the server API's request parsing (net/apireq.h): the input is
 * both a path (up to its first newline, NUL-terminated) and, after it, a
 * body, parsed as required and as optional.
 * Invariants: a split path has at most APIREQ_SEGS segments of at most
 * APIREQ_SEG_MAX bytes; a body is an object of at most APIREQ_MEMBERS_MAX
 * members with distinct keys, or NULL with why set; a string member read
 * is 1..max bytes of valid UTF-8. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/apireq.h"
#include "net/ws_parser.h"

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_api: invariant failed at line %d: %s\n", line, what);
    abort();
}

static void fuzz_body(const char *body, size_t len, int optional)
{
    const char *why = NULL;
    cJSON *o = apireq_body(body, len, optional, &why);
    if (!o) {
        CHECK(why != NULL);
        return;
    }
    int n = 0;
    for (const cJSON *a = o->child; a; a = a->next, n++)
        for (const cJSON *b = o->child; b != a; b = b->next)
            CHECK(strcmp(a->string, b->string) != 0);
    CHECK(n <= APIREQ_MEMBERS_MAX);
    static const char *const keys[] = { "text", "from", "idempotency_key", "name", "owner" };
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *s;
        int r = apireq_str(o, keys[k], 64, &s);
        CHECK(r >= -1 && r <= 1);
        if (r == 1)
            CHECK(s && s[0] && strlen(s) <= 64 && ws_utf8_valid((const unsigned char *)s, strlen(s)));
        else
            CHECK(s == NULL);
    }
    cJSON_Delete(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t plen = nl ? (size_t)(nl - data) : size;
    char *path = malloc(plen + 1);
    if (!path)
        return 0;
    memcpy(path, data, plen);
    path[plen] = 0;
    char seg[APIREQ_SEGS][APIREQ_SEG_MAX + 1];
    int n = -1;
    if (apireq_split(path, seg, &n) == 0) {
        CHECK(n >= 0 && n <= APIREQ_SEGS);
        for (int i = 0; i < n; i++)
            CHECK(strlen(seg[i]) <= APIREQ_SEG_MAX);
    }
    free(path);
    const char *body = nl ? (const char *)nl + 1 : NULL;
    size_t blen = nl ? size - plen - 1 : 0;
    /* A copy of exactly blen bytes: ASan sees any read past the body. */
    char *copy = blen ? malloc(blen) : NULL;
    if (copy)
        memcpy(copy, body, blen);
    fuzz_body(copy, blen, 0);
    fuzz_body(copy, blen, 1);
    free(copy);
    return 0;
}
