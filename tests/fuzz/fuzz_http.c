/* fuzz_http: the HTTP/1.1 front door, net/http.c (http-parser driven), and
 * the WebSocket upgrade that continues from it (net/ws.c + net/ws_parser.c).
 *
 * net/http.c exposes no pure parsing entry point: its http-parser callbacks
 * and http_conn_feed() are static and a connection exists only once the
 * listener accepted a socket. So the harness drives the real server, built
 * once: one uv loop, one http_server_init on 127.0.0.1:0, one ws_init.
 * Each input is one loopback TCP connection: the bytes are written (whole,
 * or in chunks with a loop turn between them, so strings split across reads
 * are exercised), the loop runs with UV_RUN_NOWAIT until nothing moves,
 * then the client resets the connection (SO_LINGER 0: no TIME_WAIT, so the
 * ephemeral ports never run out) and the loop runs until every handle of
 * that connection is closed and freed. Nothing outlives an input, so
 * LeakSanitizer's per-input check sees every leak.
 *
 * The handler reads every accessor (ASan checks the strings), then:
 *   a request with an Upgrade header  -> ws_accept (frames after the
 *                                        request go through net/ws_parser.c);
 *   path /defer...                    -> answered one loop turn later;
 *   query e=...                       -> http_respond_error (escaping);
 *   otherwise                         -> 200 echoing the body.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "lib/log.h"
#include "net/http.h"
#include "net/ws.h"

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_http: check failed at line %d: %s\n", line, what);
    abort();
}

#define DEFER_MAX 8
#define QUIET_TURNS 3 /* loop turns with no progress before the client leaves */

static uv_loop_t f_loop;
static http_server_t *f_srv;
static int f_port;
static unsigned f_base_handles;
static http_req_t *f_deferred[DEFER_MAX];
static unsigned f_ndeferred;
static volatile size_t f_sink; /* keeps accessor reads from being optimised out */

static void count_cb(uv_handle_t *h, void *arg)
{
    (void)h;
    (*(unsigned *)arg)++;
}

static unsigned loop_handles(void)
{
    unsigned n = 0;
    uv_walk(&f_loop, count_cb, &n);
    return n;
}

static void on_text(ws_conn_t *c, const char *data, size_t len, void *user)
{
    (void)user;
    ws_conn_send_text(c, data, len);
    if (len == 5 && memcmp(data, "close", 5) == 0)
        ws_conn_close(c, 1000, "bye");
}

static void on_close(ws_conn_t *c, int code, void *user)
{
    (void)c;
    (void)user;
    f_sink += (size_t)code;
}

static const struct ws_callbacks f_ws_cb = { on_text, on_close };

static void handler(http_req_t *req, void *user)
{
    static const char *const headers[] = { "Host", "Upgrade", "Connection", "Content-Type",
                                           "Content-Length", "Origin", "Authorization",
                                           "Sec-WebSocket-Key", "Sec-WebSocket-Version", "" };
    static const char *const params[] = { "token", "room", "after", "limit", "e", "" };
    (void)user;
    const char *method = http_req_method(req), *path = http_req_path(req);
    CHECK(method != NULL && path != NULL);
    CHECK(strcmp(http_req_peer(req), "127.0.0.1") == 0);
    size_t blen = 0;
    const char *body = http_req_body(req, &blen);
    CHECK(body != NULL && blen <= 64 * 1024 && body[blen] == '\0');
    size_t sum = strlen(method) + strlen(path);
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        const char *v = http_req_header(req, headers[i]);
        sum += v ? strlen(v) + 1 : 0;
    }
    char qbuf[256], tiny[4];
    const char *e = NULL;
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        const char *v = http_req_query(req, params[i], qbuf, sizeof qbuf);
        CHECK(v == NULL || (v == qbuf && strlen(v) < sizeof qbuf));
        sum += v ? strlen(v) : 0;
        v = http_req_query(req, params[i], tiny, sizeof tiny);
        CHECK(v == NULL || strlen(v) < sizeof tiny);
    }
    f_sink += sum;

    if (http_req_header(req, "Upgrade")) {
        ws_accept(req, "{\"op\":\"hello\"}", 14, &f_ws_cb, NULL);
        return;
    }
    if (strncmp(path, "/defer", 6) == 0 && f_ndeferred < DEFER_MAX) {
        f_deferred[f_ndeferred++] = req;
        return;
    }
    if ((e = http_req_query(req, "e", qbuf, sizeof qbuf)) != NULL) {
        http_respond_error(req, 400, e, path);
        return;
    }
    http_respond(req, 200, "application/octet-stream", body, blen, "X-Fuzz: 1\r\n");
}

static void fuzz_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_init(LOG_LVL_ERROR, "fuzz", 0); /* rejects log at info: keep stderr quiet */
    CHECK(uv_loop_init(&f_loop) == 0);
    struct ws_limits lim = { 65536, 256 * 1024, 25000, 10000 };
    CHECK(ws_init(&f_loop, &lim) == 0);
    CHECK(http_server_init(&f_srv, &f_loop, "127.0.0.1", 0, handler, NULL) == 0);
    f_port = http_server_port(f_srv);
    f_base_handles = loop_handles();
}

/* Runs one loop turn, answers deferred requests, drains the client.
 * Returns the number of bytes the client received (progress), or -1 once
 * the server closed or reset its side. */
static long pump(int fd)
{
    uv_run(&f_loop, UV_RUN_NOWAIT);
    long got = 0;
    if (f_ndeferred) {
        for (unsigned i = 0; i < f_ndeferred; i++)
            http_respond(f_deferred[i], 202, NULL, "later", 5, NULL);
        got = 1; /* answering is progress even if the peer is gone */
        f_ndeferred = 0;
    }
    if (fd < 0)
        return got;
    char buf[16384];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            got += n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return got ? got : -1;
        return got;
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Chunk size from the input itself, so a run is reproducible: mostly whole
 * writes, sometimes tiny splits (only for short inputs: one write per byte
 * is slow). */
static size_t chunk_size(const uint8_t *data, size_t size)
{
    static const size_t small[] = { 0, 0, 0, 0, 1, 2, 3, 7, 16, 64 };
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    size_t c = small[h % (sizeof small / sizeof small[0])];
    if (c == 0 || size <= c)
        return size;
    return size > 512 && c < 64 ? 64 : c;
}

/* A loopback connect can fail for reasons outside chatd (ephemeral ports
 * still held by other processes' TIME_WAIT, a full accept queue while the
 * machine is busy): retry for a while, abort only if it never works. */
static int client_connect(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)f_port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int attempt = 0;; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(fd >= 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (attempt == 200) {
            fprintf(stderr, "fuzz_http: connect: %s\n", strerror(e));
            abort();
        }
        pump(-1); /* let the server accept whatever is queued */
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!f_srv)
        fuzz_init();
    int fd = client_connect();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double deadline = now_s() + 5;

    /* Wait for the accept, so the connection is the server's before data. */
    while (loop_handles() == f_base_handles) {
        pump(-1);
        CHECK(now_s() < deadline);
    }

    size_t chunk = chunk_size(data, size), off = 0;
    int gone = 0;
    while (off < size && !gone) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = send(fd, data + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            gone = 1; /* the server cut us: the rest is moot */
        if (pump(fd) < 0)
            gone = 1;
        CHECK(now_s() < deadline);
    }
    /* Let the server finish with what it has (keep-alive, pipelining,
     * upgrade leftovers, deferred answers) until nothing moves. */
    for (int quiet = 0; quiet < QUIET_TURNS && !gone;) {
        long p = pump(fd);
        if (p < 0)
            gone = 1;
        quiet = p == 0 ? quiet + 1 : 0;
        CHECK(now_s() < deadline);
    }
    struct linger lg = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    /* Every handle of this connection closed and freed. */
    while (loop_handles() != f_base_handles || f_ndeferred) {
        pump(-1);
        if (now_s() >= deadline) {
            fprintf(stderr, "fuzz_http: connection still open 5 s after the client left\n");
            abort();
        }
    }
    return 0;
}
