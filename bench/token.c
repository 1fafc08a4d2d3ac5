#include "bench/token.h"

#include <cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* base64url without padding; returns the length written (out holds 4/3 n + 1). */
static size_t token_b64url(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

int token_sign(const char *secret, const char *user, long ttl_s, char *out, size_t cap)
{
    char claims[160];
    int cl = snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":%ld}", user,
                      (long)time(NULL) + ttl_s);
    if (cl < 0 || (size_t)cl >= sizeof claims)
        return -1;
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    if (cap < (sizeof hdr + (size_t)cl + 32) * 4 / 3 + 8)
        return -1;
    size_t n = token_b64url((const unsigned char *)hdr, sizeof hdr - 1, out);
    out[n++] = '.';
    n += token_b64url((const unsigned char *)claims, (size_t)cl, out + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, n,
              mac, &maclen))
        return -1;
    out[n++] = '.';
    n += token_b64url(mac, maclen, out + n);
    return (int)n;
}

static int token_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

char *token_fetch(const struct sockaddr *gw, socklen_t len, const char *host, const char *user)
{
    int fd = socket(gw->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[512], resp[4096];
    char *tok = NULL;
    size_t got = 0;
    char body[128];
    int bl = snprintf(body, sizeof body, "{\"user\":\"%s\"}", user);
    int rl = snprintf(req, sizeof req,
                      "POST /api/dev/token HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n%s", host, bl, body);
    if (rl < 0 || (size_t)rl >= sizeof req)
        goto out;
    if (connect(fd, gw, len) < 0 || token_write_all(fd, req, (size_t)rl) < 0)
        goto out;
    for (;;) {
        ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof resp - 1)
            break;
    }
    resp[got] = '\0';
    const char *b = strstr(resp, "\r\n\r\n");
    if (strncmp(resp, "HTTP/1.1 200", 12) != 0 || !b)
        goto out;
    cJSON *j = cJSON_Parse(b + 4);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "token");
    if (cJSON_IsString(t))
        tok = strdup(t->valuestring);
    cJSON_Delete(j);
out:
    close(fd);
    return tok;
}
