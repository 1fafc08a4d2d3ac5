/* fanout_limit: the fastest fan-out this machine can do, as a yardstick for
 * chatd's. No chat logic at all: one writer process pushes one pre-encoded
 * WebSocket frame (chatd's `msg` shape, same text length) to N loopback TCP
 * sockets as fast as the kernel takes it, one forked reader process drains
 * the other ends and counts bytes. Deliveries/s = bytes read / frame size /
 * window.
 *
 * Writer: level-triggered epoll on EPOLLOUT; each writable socket gets one
 * write of --batch frames (the same buffer for every socket, as chatd shares
 * one encoded frame among recipients), continued from where a short write
 * stopped. Reader: epoll on EPOLLIN, 64 KiB reads. The two sides are
 * separate processes so each stays under the 20000 open-file limit.
 *
 * Output: one JSON object on stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LIMIT_EVENTS 1024

static double limit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void limit_die(const char *what)
{
    fprintf(stderr, "fanout_limit: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* A server-to-client text frame (no mask) carrying chatd's msg JSON with a
 * text of `payload` bytes, repeated `batch` times. */
static char *limit_frames(int payload, int batch, size_t *frame_len, size_t *total)
{
    char *json = malloc((size_t)payload + 512);
    if (!json)
        return NULL;
    int n = snprintf(json, (size_t)payload + 512,
                     "{\"op\":\"msg\",\"room\":\"bench-0123abcd-17\",\"seq\":123456,"
                     "\"id\":\"0123456789abcdef0123456789abcdef\",\"from\":\"b0123abcd-17000\","
                     "\"cid\":\"12345\",\"ts\":1764130000000,\"text\":\"");
    memset(json + n, 'x', (size_t)payload);
    n += payload;
    n += snprintf(json + n, 8, "\"}");
    size_t hdr = n < 126 ? 2 : n < 65536 ? 4 : 10;
    *frame_len = hdr + (size_t)n;
    *total = *frame_len * (size_t)batch;
    char *buf = malloc(*total);
    if (!buf) {
        free(json);
        return NULL;
    }
    unsigned char h[10] = { 0x81 };
    if (hdr == 2) {
        h[1] = (unsigned char)n;
    } else if (hdr == 4) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    for (int b = 0; b < batch; b++) {
        memcpy(buf + (size_t)b * *frame_len, h, hdr);
        memcpy(buf + (size_t)b * *frame_len + hdr, json, (size_t)n);
    }
    free(json);
    return buf;
}

/* Reader: connect n sockets, tell the writer, then count bytes. Sends the
 * byte count of [t_measure, t_end] on `up`. */
static int limit_reader(int port, int n, int up, double warmup, double duration)
{
    int ep = epoll_create1(0);
    if (ep < 0)
        limit_die("epoll_create1");
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
            limit_die("reader connect");
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            limit_die("epoll_ctl");
    }
    static char buf[65536];
    struct epoll_event evs[LIMIT_EVENTS];
    double t0 = -1, t_measure = 0, t_end = 0;
    uint64_t bytes = 0;
    for (;;) {
        int k = epoll_wait(ep, evs, LIMIT_EVENTS, 100);
        if (k < 0 && errno != EINTR)
            limit_die("epoll_wait");
        double now = limit_now();
        if (t0 < 0 && k > 0) {        /* the first byte starts the clock */
            t0 = now;
            t_measure = t0 + warmup;
            t_end = t_measure + duration;
        }
        for (int i = 0; i < k; i++) {
            ssize_t r = read(evs[i].data.fd, buf, sizeof buf);
            if (r > 0 && now >= t_measure && now < t_end)
                bytes += (uint64_t)r;
        }
        if (t0 >= 0 && now >= t_end)
            break;
    }
    double window = duration;
    if (write(up, &bytes, sizeof bytes) != sizeof bytes || write(up, &window, sizeof window) != sizeof window)
        limit_die("reader report");
    return 0;
}

int main(int argc, char **argv)
{
    int n = 1000, payload = 64, batch = 1;
    double duration = 5, warmup = 1;
    static const struct option opts[] = {
        { "sockets", required_argument, 0, 'n' }, { "payload", required_argument, 0, 'p' },
        { "batch", required_argument, 0, 'b' }, { "duration", required_argument, 0, 'd' },
        { "warmup", required_argument, 0, 'w' }, { 0, 0, 0, 0 },
    };
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'n': n = atoi(optarg); break;
        case 'p': payload = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        default:
            fprintf(stderr, "usage: fanout_limit [--sockets N] [--payload BYTES] [--batch FRAMES] "
                            "[--duration S] [--warmup S]\n");
            return 2;
        }
    }
    if (n < 1 || n > 19000 || payload < 1 || payload > (1 << 20) || batch < 1 || batch > 4096 ||
        !(duration > 0) || warmup < 0) {
        fprintf(stderr, "fanout_limit: --sockets 1..19000 (open-file limit), --payload 1..1048576, "
                        "--batch 1..4096, --duration > 0, --warmup >= 0\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    size_t frame_len, total;
    char *frames = limit_frames(payload, batch, &frame_len, &total);
    if (!frames)
        limit_die("malloc");

    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        limit_die("listen");
    int up[2];
    if (pipe(up) < 0)
        limit_die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        limit_die("fork");
    if (pid == 0) {
        close(ls);
        close(up[0]);
        _exit(limit_reader(ntohs(a.sin_port), n, up[1], warmup, duration));
    }
    close(up[1]);

    int ep = epoll_create1(0);
    size_t *off = calloc((size_t)n, sizeof *off);
    int *fds = calloc((size_t)n, sizeof *fds);
    if (ep < 0 || !off || !fds)
        limit_die("setup");
    for (int i = 0; i < n; i++) {
        int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            limit_die("accept");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[i] = fd;
        struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = (uint32_t)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            limit_die("epoll_ctl");
    }
    /* The reader stops after warmup + duration; writes fail then, which ends
     * this loop a moment later. */
    struct epoll_event evs[LIMIT_EVENTS];
    uint64_t writes = 0;
    double deadline = limit_now() + warmup + duration + 30;
    int open_fds = n;
    while (open_fds > 0 && limit_now() < deadline) {
        int k = epoll_wait(ep, evs, LIMIT_EVENTS, 100);
        if (k < 0 && errno != EINTR)
            limit_die("epoll_wait");
        for (int e = 0; e < k; e++) {
            uint32_t i = evs[e].data.u32;
            ssize_t r = write(fds[i], frames + off[i], total - off[i]);
            if (r > 0) {
                off[i] = (off[i] + (size_t)r) % total;
                writes++;
            } else if (r < 0 && errno != EAGAIN && errno != EINTR) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                close(fds[i]);
                open_fds--;
            }
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            pid = -1;
            break;
        }
    }
    uint64_t bytes = 0;
    double window = 0;
    if (read(up[0], &bytes, sizeof bytes) != sizeof bytes || read(up[0], &window, sizeof window) != sizeof window) {
        fprintf(stderr, "fanout_limit: the reader did not report\n");
        return 1;
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    double per_s = (double)bytes / (double)frame_len / window;
    printf("{\"sockets\": %d, \"payload\": %d, \"frame_bytes\": %zu, \"batch\": %d, \"window_s\": %.3f, "
           "\"deliveries\": %.0f, \"deliveries_per_s\": %.1f, \"mbytes_per_s\": %.1f, \"writes\": %llu}\n",
           n, payload, frame_len, batch, window, (double)bytes / (double)frame_len, per_s,
           (double)bytes / window / 1e6, (unsigned long long)writes);
    free(frames);
    free(off);
    free(fds);
    return 0;
}
