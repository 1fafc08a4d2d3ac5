#include "net/apireq.h"

#include <string.h>

#include "net/proto.h"
#include "net/ws_parser.h"

static int apireq_hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int apireq_split(const char *path, char seg[APIREQ_SEGS][APIREQ_SEG_MAX + 1], int *n)
{
    *n = 0;
    if (*path != '/')
        return -1;
    const char *p = path + 1;
    while (*p) {
        if (*n == APIREQ_SEGS)
            return -1;
        char *out = seg[(*n)++];
        size_t o = 0;
        for (; *p && *p != '/'; p++) {
            int ch = (unsigned char)*p;
            if (ch == '%') {
                int hi = apireq_hex((unsigned char)p[1]);
                int lo = hi < 0 ? -1 : apireq_hex((unsigned char)p[2]);
                if (lo < 0)
                    return -1;
                ch = hi * 16 + lo;
                p += 2;
            }
            if (o == APIREQ_SEG_MAX || ch == 0)
                return -1;
            out[o++] = (char)ch;
        }
        out[o] = 0;
        if (*p == '/')
            p++;
    }
    return 0;
}

cJSON *apireq_body(const char *body, size_t len, int optional, const char **why)
{
    if ((!body || len == 0) && optional) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            *why = "out of memory";
        return o;
    }
    if (body && proto_json_has_nul(body, len)) {
        *why = "strings must not contain U+0000";
        return NULL;
    }
    cJSON *o = body ? cJSON_ParseWithLength(body, len) : NULL;
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        *why = "the body must be a JSON object";
        return NULL;
    }
    /* The check is quadratic; the member cap bounds it. */
    int n = 0;
    for (const cJSON *a = o->child; a; a = a->next, n++)
        for (const cJSON *b = o->child; b != a && n <= APIREQ_MEMBERS_MAX; b = b->next)
            if (!strcmp(a->string, b->string))
                n = APIREQ_MEMBERS_MAX + 1;
    if (n > APIREQ_MEMBERS_MAX) {
        cJSON_Delete(o);
        *why = "a body has at most 32 members, each key once";
        return NULL;
    }
    return o;
}

int apireq_str(const cJSON *o, const char *key, size_t max, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return -1;
    size_t n = strlen(v->valuestring);
    if (n > max || !ws_utf8_valid((const unsigned char *)v->valuestring, n))
        return -1;
    *out = v->valuestring;
    return 1;
}
