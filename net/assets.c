#include "net/assets.h"

#include <stdio.h>
#include <string.h>

const struct asset *assets_find(const char *path)
{
    if (!strcmp(path, "/"))
        path = "/index.html";
    for (int i = 0; i < assets_count; i++)
        if (!strcmp(assets[i].path, path))
            return &assets[i];
    return NULL;
}

/* A Host header fit to be echoed into a header: host or host:port, IPv6 in
 * brackets, nothing else (a forged Host must not inject header text). */
static int assets_host_valid(const char *h)
{
    size_t n = h ? strlen(h) : 0;
    if (n == 0 || n > 255)
        return 0;
    return strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") == n;
}

/* If-None-Match holds a list of tags, maybe weak (W/"..."), or "*". */
static int assets_etag_matches(const char *inm, const char *etag)
{
    return inm && (strstr(inm, etag) != NULL || strcmp(inm, "*") == 0);
}

int assets_serve(http_req_t *req)
{
    const struct asset *a = assets_find(http_req_path(req));
    if (!a)
        return 0;
    const char *method = http_req_method(req);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char body[] = "{\"error\":\"bad_request\",\"message\":\"use GET or HEAD\"}";
        http_respond(req, 405, "application/json", body, sizeof body - 1, "Allow: GET, HEAD\r\n");
        return 1;
    }
    /* CSP 'self' covers ws:// to the same host in current browsers; the
     * explicit ws/wss source keeps older ones (CSP level 2) working too. */
    const char *host = http_req_header(req, "Host");
    char connect[600];
    if (assets_host_valid(host))
        snprintf(connect, sizeof connect, "'self' ws://%s wss://%s", host, host);
    else
        snprintf(connect, sizeof connect, "'self'");
    char hdrs[1400];
    snprintf(hdrs, sizeof hdrs,
             "ETag: %s\r\n"
             "Cache-Control: no-cache\r\n"
             "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
             "img-src 'self'; connect-src %s; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'\r\n"
             "X-Content-Type-Options: nosniff\r\n"
             "Referrer-Policy: no-referrer\r\n",
             a->etag, connect);
    if (assets_etag_matches(http_req_header(req, "If-None-Match"), a->etag))
        http_respond(req, 304, a->content_type, NULL, 0, hdrs);
    else
        http_respond(req, 200, a->content_type, (const char *)a->data, a->len, hdrs);
    return 1;
}
