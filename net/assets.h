/* assets: the browser page (the files of web/), compiled into the binary and served at
 * its path by any role that chooses to (the gateway does).
 *
 * scripts/embed-web.sh turns each file of web/ into one table row: URL path
 * ("/app.js"), Content-Type, and a strong ETag made of a hash of the bytes.
 * The table is read-only and lives for the whole process.
 *
 * Caching: the paths carry no version, so every response says
 * `Cache-Control: no-cache` and the browser revalidates with If-None-Match;
 * an unchanged file costs a 304 with no body, a new binary's file is picked
 * up at the next load. Every response carries a Content-Security-Policy that
 * allows scripts, styles and images from the page's own origin only (no
 * inline script or style, no eval, no framing), and WebSocket/fetch
 * connections to the same host.
 */
#ifndef CHATD_ASSETS_H
#define CHATD_ASSETS_H

#include <stddef.h>

#include "net/http.h"

struct asset {
    const char *path;            /* "/index.html" */
    const char *content_type;
    const char *etag;            /* quoted, ready for the header */
    const unsigned char *data;
    size_t len;
};

extern const struct asset assets[];
extern const int assets_count;

/* The asset served at path ("/" is "/index.html"), or NULL. */
const struct asset *assets_find(const char *path);

/* If the request's path names an asset, answers it (GET and HEAD; 304 when
 * If-None-Match matches; 405 for other methods) and returns 1; otherwise
 * leaves req untouched and returns 0. */
int assets_serve(http_req_t *req);

#endif
