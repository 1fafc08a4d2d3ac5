/* chatbench: chatd's load generator.
 *
 * main parses the options, forks --procs workers (each its own libuv loop
 * and whole rooms of clients, see worker.h) and then runs a small loop of
 * its own: it reads each worker's records from a pipe, starts every worker
 * at the same CLOCK_MONOTONIC instant once all have joined their rooms,
 * prints progress once a second and, when all have finished, the summary
 * and the JSON report.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bench/conf.h"
#include "bench/hist.h"
#include "bench/ledger.h"
#include "bench/stats.h"
#include "bench/worker.h"

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))
#define FD_RESERVE 64                 /* per worker: loop, pipes, stdio */

struct parent_worker {
    pid_t pid;
    int down_fd, up_fd;               /* parent's ends of the two pipes */
    uv_pipe_t up;
    struct stats_rec in;              /* record being read */
    size_t got;
    struct stats_rec last;            /* latest complete record */
    double sent_s, acked_s, delivered_s; /* rates between its last two records */
    int have, ready, final, gone;
};

struct parent {
    const struct conf *conf;
    uv_loop_t *loop;
    struct parent_worker *w;
    int n, nready, ndone, go_sent, signals;
    int settling, quiet_ticks;        /* all ready: waiting for the frames to stop */
    uint64_t t_ready, frames_mark;
    double settle_s;                  /* time spent settling */
    uv_timer_t progress;
    uv_signal_t sigint, sigterm;
    uint64_t t0;
    struct hist h, hsent, ack, lag;   /* merged from the workers' latest records */
};

static const char usage[] =
    "usage: chatbench [options]\n"
    "Opens --clients WebSocket clients to chatd, joins them to rooms, sends at --rate\n"
    "for --duration seconds and reports end-to-end latency and delivery.\n\n"
    "  --url LIST               gateways, comma-separated (ws://127.0.0.1:8080)\n"
    "  --clients N              clients in all (100)\n"
    "  --room-size M            members per room; room ids unique per run (10)\n"
    "  --senders-per-room K     members of each room that send (1)\n"
    "  --rate R                 messages/s across all senders (100)\n"
    "  --duration S             measured window, seconds (10)\n"
    "  --warmup S               sending before the window, not counted (2)\n"
    "  --drain S                after the window: wait at most this for acks and\n"
    "                           deliveries of window messages (10)\n"
    "  --payload BYTES          message text length (64; at least \"t=<ns>\")\n"
    "  --procs P                worker processes, each with its own loop (1)\n"
    "  --source-ips A-B|LIST    bind clients to these source addresses, round-robin\n"
    "                           (e.g. 127.0.0.1-127.0.0.20) for more than 64k connections\n"
    "  --connect-concurrency N  connection setups in progress per process (64)\n"
    "  --setup-timeout S        start anyway after this long joining (120)\n"
    "  --json FILE              write the report as JSON\n"
    "  --jwt-secret SECRET      sign HS256 tokens (default: $CHATD_JWT_SECRET; if\n"
    "                           neither, tokens come from POST /api/dev/token)\n"
    "  --settle S               after setup, wait until no frame arrived for ~2 s\n"
    "                           (join events of big rooms), at most S seconds (30)\n"
    "  --run-id ID              user and room ids of an earlier run, to reuse its\n"
    "                           rooms (default: new ones)\n"
    "  --proto chatd|socketio   what the clients speak (chatd); socketio drives the\n"
    "                           Socket.IO peer of bench/peer/ (needs a JWT secret)\n"
    "  --help\n";

/* ---- options ---- */

static int parse_url(const char *url, struct conf_gw *gw)
{
    char host[128], port[16] = "80";
    const char *p = url;
    if (strncmp(p, "ws://", 5) != 0)
        return -1;
    p += 5;
    const char *end = p + strcspn(p, "/");
    const char *colon = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb || (size_t)(rb - p - 1) >= sizeof host)
            return -1;
        memcpy(host, p + 1, (size_t)(rb - p - 1));
        host[rb - p - 1] = '\0';
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        size_t hl = (size_t)((colon ? colon : end) - p);
        if (hl == 0 || hl >= sizeof host)
            return -1;
        memcpy(host, p, hl);
        host[hl] = '\0';
    }
    if (colon) {
        size_t pl = (size_t)(end - colon - 1);
        if (pl == 0 || pl >= sizeof port)
            return -1;
        memcpy(port, colon + 1, pl);
        port[pl] = '\0';
    }
    snprintf(gw->host, sizeof gw->host, "%.*s", (int)(end - p), p);
    snprintf(gw->path, sizeof gw->path, "%s", *end ? end : "/ws");
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    memcpy(&gw->addr, ai->ai_addr, ai->ai_addrlen);
    gw->addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int add_src(struct conf *c, uint32_t host_order)
{
    if (c->nsrc == CONF_MAX_SRC)
        return -1;
    struct sockaddr_in *s = &c->src[c->nsrc++];
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(host_order);
    return 0;
}

/* "127.0.0.1-127.0.0.20" or "127.0.0.1,127.0.0.2". */
static int parse_src(struct conf *c, char *arg)
{
    for (char *save = NULL, *tok = strtok_r(arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(tok, '-');
        struct in_addr a, b;
        if (dash)
            *dash = '\0';
        if (inet_pton(AF_INET, tok, &a) != 1 || (dash && inet_pton(AF_INET, dash + 1, &b) != 1))
            return -1;
        uint32_t lo = ntohl(a.s_addr), hi = dash ? ntohl(b.s_addr) : lo;
        if (hi < lo)
            return -1;
        for (uint64_t i = lo; i <= hi; i++)
            if (add_src(c, (uint32_t)i) < 0)
                return -1;
    }
    return 0;
}

static double opt_num(const char *name, const char *v, double lo, double hi)
{
    char *end;
    double d = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(d >= lo && d <= hi)) {
        fprintf(stderr, "chatbench: --%s: expected a number in [%g, %g], got \"%s\"\n", name, lo, hi, v);
        exit(2);
    }
    return d;
}

static void parse_options(struct conf *c, int argc, char **argv)
{
    static const struct option opts[] = {
        { "url", required_argument, 0, 'u' }, { "clients", required_argument, 0, 'c' },
        { "room-size", required_argument, 0, 'm' }, { "senders-per-room", required_argument, 0, 'k' },
        { "rate", required_argument, 0, 'r' }, { "duration", required_argument, 0, 'd' },
        { "warmup", required_argument, 0, 'w' }, { "drain", required_argument, 0, 'D' },
        { "payload", required_argument, 0, 'p' }, { "procs", required_argument, 0, 'P' },
        { "source-ips", required_argument, 0, 's' }, { "json", required_argument, 0, 'j' },
        { "connect-concurrency", required_argument, 0, 'C' },
        { "setup-timeout", required_argument, 0, 'T' },
        { "jwt-secret", required_argument, 0, 'S' }, { "help", no_argument, 0, 'h' },
        { "proto", required_argument, 0, 'x' }, { "settle", required_argument, 0, 'e' },
        { "run-id", required_argument, 0, 'i' },
        { 0, 0, 0, 0 },
    };
    char *urls = NULL;
    *c = (struct conf){ .clients = 100, .room_size = 10, .senders_per_room = 1, .procs = 1,
                        .payload = 64, .connect_concurrency = 64, .rate = 100, .duration = 10,
                        .warmup = 2, .drain = 10, .setup_timeout = 120, .settle = 30 };
    const char *run_id = NULL;
    const char *env = getenv("CHATD_JWT_SECRET");
    if (env)
        snprintf(c->secret, sizeof c->secret, "%s", env);
    for (int o; (o = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (o) {
        case 'u': urls = optarg; break;
        case 'c': c->clients = (int)opt_num("clients", optarg, 1, 10000000); break;
        case 'm': c->room_size = (int)opt_num("room-size", optarg, 1, 1000000); break;
        case 'k': c->senders_per_room = (int)opt_num("senders-per-room", optarg, 0, 1000000); break;
        case 'r': c->rate = opt_num("rate", optarg, 0, 1e9); break;
        case 'd': c->duration = opt_num("duration", optarg, 0.001, 1e6); break;
        case 'w': c->warmup = opt_num("warmup", optarg, 0, 1e6); break;
        case 'D': c->drain = opt_num("drain", optarg, 0, 1e6); break;
        case 'p': c->payload = (int)opt_num("payload", optarg, 1, 1 << 20); break;
        case 'P': c->procs = (int)opt_num("procs", optarg, 1, 1024); break;
        case 'C': c->connect_concurrency = (int)opt_num("connect-concurrency", optarg, 1, 1e6); break;
        case 'T': c->setup_timeout = opt_num("setup-timeout", optarg, 1, 1e6); break;
        case 'j': c->json_path = optarg; break;
        case 'e': c->settle = opt_num("settle", optarg, 0, 1e6); break;
        case 'i':
            if (strlen(optarg) == 0 || strlen(optarg) >= sizeof c->run ||
                strspn(optarg, "0123456789abcdefghijklmnopqrstuvwxyz") != strlen(optarg)) {
                fprintf(stderr, "chatbench: --run-id: 1 to %zu characters of [0-9a-z]\n", sizeof c->run - 1);
                exit(2);
            }
            run_id = optarg;
            break;
        case 'S': snprintf(c->secret, sizeof c->secret, "%s", optarg); break;
        case 'x':
            if (strcmp(optarg, "chatd") == 0) {
                c->proto = PROTO_CHATD;
            } else if (strcmp(optarg, "socketio") == 0) {
                c->proto = PROTO_SOCKETIO;
            } else {
                fprintf(stderr, "chatbench: --proto: expected chatd or socketio, got \"%s\"\n", optarg);
                exit(2);
            }
            break;
        case 's':
            if (parse_src(c, optarg) < 0) {
                fprintf(stderr, "chatbench: --source-ips: bad list or range (max %d)\n", CONF_MAX_SRC);
                exit(2);
            }
            break;
        case 'h': fputs(usage, stdout); exit(0);
        default: fputs(usage, stderr); exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "chatbench: unexpected argument \"%s\"\n%s", argv[optind], usage);
        exit(2);
    }
    char def[] = "ws://127.0.0.1:8080", *save = NULL;
    for (char *u = strtok_r(urls ? urls : def, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
        if (c->ngw == CONF_MAX_GW || parse_url(u, &c->gw[c->ngw]) < 0) {
            fprintf(stderr, "chatbench: --url: cannot use \"%s\" (ws://host:port[/path])\n", u);
            exit(2);
        }
        c->ngw++;
    }
    if (c->proto == PROTO_SOCKETIO && !c->secret[0]) {
        fprintf(stderr, "chatbench: --proto=socketio needs --jwt-secret or $CHATD_JWT_SECRET "
                        "(the peer has no dev tokens)\n");
        exit(2);
    }
    c->nrooms = (c->clients + c->room_size - 1) / c->room_size;
    for (int r = 0; r < c->nrooms; r++)
        c->nsenders += conf_room_senders(c, r);
    if (c->procs > c->clients)
        c->procs = c->clients;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned salt = (unsigned)(ts.tv_sec * 2654435761u ^ (unsigned)ts.tv_nsec ^ (unsigned)getpid() * 40503u);
    snprintf(c->cid_salt, sizeof c->cid_salt, "%08x", salt);
    if (run_id)
        snprintf(c->run, sizeof c->run, "%s", run_id);
    else
        snprintf(c->run, sizeof c->run, "%08x", salt);
}

/* Each worker's clients (conf_client_proc) must fit RLIMIT_NOFILE. */
static int check_fds(const struct conf *c)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int most = 0, *n = calloc((size_t)c->procs, sizeof *n);
    if (!n)
        return -1;
    for (int g = 0; g < c->clients; g++)
        n[conf_client_proc(c, g)]++;
    for (int p = 0; p < c->procs; p++)
        if (n[p] > most)
            most = n[p];
    free(n);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)most + FD_RESERVE > rl.rlim_cur) {
        fprintf(stderr, "chatbench: %d clients in one process, but only %llu open files allowed: "
                        "raise --procs\n", most, (unsigned long long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

/* ---- progress and records ---- */

static void parent_sum(struct parent *p, struct stats *st, int *phase)
{
    memset(st, 0, sizeof *st);
    hist_reset(&p->h);
    hist_reset(&p->hsent);
    hist_reset(&p->ack);
    hist_reset(&p->lag);
    *phase = PHASE_DONE;
    for (int i = 0; i < p->n; i++) {
        struct parent_worker *w = &p->w[i];
        if (!w->have)
            continue;
        stats_add(st, &w->last.st);
        hist_merge(&p->h, &w->last.h);
        hist_merge(&p->hsent, &w->last.hsent);
        hist_merge(&p->ack, &w->last.ack);
        hist_merge(&p->lag, &w->last.lag);
        if ((int)w->last.phase < *phase)
            *phase = (int)w->last.phase;
    }
}

static void parent_settle_tick(struct parent *p);

static void parent_on_progress(uv_timer_t *t)
{
    struct parent *p = container_of(t, struct parent, progress);
    struct stats st;
    int phase;
    uint64_t now = worker_now(), errs = 0;
    double sent = 0, acked = 0, delivered = 0;
    parent_sum(p, &st, &phase);
    parent_settle_tick(p);
    for (int e = 0; e < SE__COUNT; e++)
        errs += st.errs[e];
    for (int i = 0; i < p->n; i++) {
        sent += p->w[i].sent_s;
        acked += p->w[i].acked_s;
        delivered += p->w[i].delivered_s;
    }
    fprintf(stderr,
            "[%5.1fs] %-7s conns %" PRIu64 "/%" PRIu64 "  sent/s %.0f  acked/s %.0f  delivered/s %.0f"
            "  p99 %.2f ms (%s)  reconnects %" PRIu64 "  errors %" PRIu64 "\n",
            (double)(now - p->t0) / 1e9,
            phase == PHASE_READY && !p->go_sent ? "settle" : stats_phase_name(phase), st.conns, st.clients,
            sent, acked,
            delivered, hist_quantile(&p->h, 0.99) / 1000.0,
            phase >= PHASE_MEASURE ? "window" : "so far", st.reconnects, errs);
}

static uint64_t parent_frames(const struct parent *p)
{
    uint64_t f = 0;
    for (int i = 0; i < p->n; i++)
        f += p->w[i].have ? p->w[i].last.st.frames : 0;
    return f;
}

static void parent_start(struct parent *p)
{
    p->go_sent = 1;
    p->settle_s = (double)(worker_now() - p->t_ready) / 1e9;
    uint64_t start = worker_now() + 100000000u; /* 100 ms: every worker has it by then */
    for (int i = 0; i < p->n; i++)
        if (!p->w[i].gone && write(p->w[i].down_fd, &start, sizeof start) != sizeof start)
            fprintf(stderr, "chatbench: worker %d: cannot send start: %s\n", i, strerror(errno));
}

/* Every client joined. Joining a big room makes chatd tell every member
 * online ("joined"): a room of 1000 filling up sends ~500000 of those, which
 * would land in the window. So sending starts once no frame arrived for two
 * progress ticks (workers report once a second), or after --settle. */
static void parent_go(struct parent *p)
{
    if (p->go_sent || p->settling || p->nready < p->n)
        return;
    p->t_ready = worker_now();
    if (p->conf->settle <= 0) {
        parent_start(p);
        return;
    }
    p->settling = 1;
    p->frames_mark = parent_frames(p);
}

static void parent_settle_tick(struct parent *p)
{
    if (!p->settling || p->go_sent)
        return;
    uint64_t f = parent_frames(p);
    if (f == p->frames_mark) {
        p->quiet_ticks++;
    } else {
        p->frames_mark = f;
        p->quiet_ticks = 0;
    }
    if (p->quiet_ticks >= 2 || (double)(worker_now() - p->t_ready) / 1e9 >= p->conf->settle) {
        if (p->quiet_ticks < 2)
            fprintf(stderr, "chatbench: still receiving after --settle %g s: starting anyway\n",
                    p->conf->settle);
        parent_start(p);
    }
}

static void parent_worker_done(struct parent *p, struct parent_worker *w)
{
    p->ndone++;
    uv_close((uv_handle_t *)&w->up, NULL);
    if (p->ndone == p->n) {
        uv_close((uv_handle_t *)&p->progress, NULL);
        uv_close((uv_handle_t *)&p->sigint, NULL);
        uv_close((uv_handle_t *)&p->sigterm, NULL);
    }
}

static void parent_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct parent_worker *w = container_of(h, struct parent_worker, up);
    *buf = uv_buf_init((char *)&w->in + w->got, (unsigned)(sizeof w->in - w->got));
}

static void parent_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct parent_worker *w = container_of(s, struct parent_worker, up);
    struct parent *p = s->data;
    if (n < 0) {
        w->gone = 1;
        if (!w->final)
            fprintf(stderr, "chatbench: worker %d ended without a final report\n", (int)(w - p->w));
        if (!w->ready) {
            w->ready = 1;
            p->nready++;
            parent_go(p);
        }
        parent_worker_done(p, w);
        return;
    }
    w->got += (size_t)n;
    if (w->got < sizeof w->in)
        return;
    w->got = 0;
    if (w->have && w->in.t > w->last.t) {
        double dt = (double)(w->in.t - w->last.t) / 1e9;
        w->sent_s = (double)(w->in.st.sent - w->last.st.sent) / dt;
        w->acked_s = (double)(w->in.st.acked - w->last.st.acked) / dt;
        w->delivered_s = (double)(w->in.st.delivered - w->last.st.delivered) / dt;
    }
    w->last = w->in;
    w->have = 1;
    if (w->in.type == REC_READY && !w->ready) {
        w->ready = 1;
        p->nready++;
        parent_go(p);
    } else if (w->in.type == REC_FINAL) {
        w->final = 1;
    }
}

/* Ctrl-C reaches the workers as SIGTERM from here (they ignore SIGINT): the
 * first ends the window and drains briefly, the second stops at once. */
static void parent_on_signal(uv_signal_t *s, int sig)
{
    (void)sig;
    struct parent *p = s->data;
    p->signals++;
    for (int i = 0; i < p->n; i++)
        if (!p->w[i].gone)
            kill(p->w[i].pid, SIGTERM);
}

/* ---- summary ---- */

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static void print_hist(FILE *f, const char *name, const struct hist *h, const char *what)
{
    fprintf(f, "  %-12s p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (mean %.3f, n %" PRIu64 ")%s\n",
            name, ms(hist_quantile(h, 0.5)), ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
            ms(hist_quantile(h, 0.999)), ms(h->max), h->n ? (double)h->sum / (double)h->n / 1000.0 : 0.0,
            h->n, what);
}

static void json_hist(FILE *f, const char *name, const struct hist *h)
{
    fprintf(f, "  \"%s\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
               "\"max\": %.3f, \"mean\": %.3f, \"count\": %" PRIu64 "},\n",
            name, ms(hist_quantile(h, 0.5)), ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
            ms(hist_quantile(h, 0.999)), ms(h->max), h->n ? (double)h->sum / (double)h->n / 1000.0 : 0.0,
            h->n);
}

static void print_summary(FILE *f, const struct conf *c, const struct stats *st, const struct parent *p)
{
    const struct hist *h = &p->h, *ack = &p->ack;
    double settle_s = p->settle_s;
    char why[160];
    int held = stats_held(st, why, sizeof why);
    double win = st->window_s > 0 ? st->window_s : 1;
    fprintf(f, "chatbench summary: run %s (%s), %d clients in %d rooms of %d, %d senders, %d gateway(s), "
               "%d proc(s), rate %g/s, payload %d B\n",
            c->run, c->proto == PROTO_SOCKETIO ? "socketio" : "chatd", c->clients, c->nrooms, c->room_size,
            c->nsenders, c->ngw, c->procs, c->rate, c->payload);
    fprintf(f, "  setup        %" PRIu64 " of %d clients joined in %.2f s (%" PRIu64 " handshakes)\n",
            st->joined, c->clients, st->setup_s, st->handshakes);
    fprintf(f, "  connect      %" PRIu64 " of %d clients had a hello in %.2f s (%.0f handshakes/s)\n",
            st->connected, c->clients, st->connect_s,
            st->connect_s > 0 ? (double)st->connected / st->connect_s : 0.0);
    fprintf(f, "  settle       %.2f s (waiting for setup's frames to stop)\n", settle_s);
    fprintf(f, "  window       %.2f s (after %.1f s warmup)\n", st->window_s, c->warmup);
    fprintf(f, "  sent         %" PRIu64 " (%.1f/s; %" PRIu64 " in all phases)\n", st->sent_win,
            (double)st->sent_win / win, st->sent);
    fprintf(f, "  acked        %" PRIu64 " (unacked at end %" PRIu64 ")\n", st->acked_win,
            st->sent_win - st->acked_win);
    fprintf(f, "  delivered    %" PRIu64 " (%.1f deliveries/s)\n", st->delivered_win,
            (double)st->delivered_win / win);
    fprintf(f, "  expected     %" PRIu64 " (acked x room members, sender included)\n", st->expected);
    fprintf(f, "  missing      %" PRIu64 "   extra %" PRIu64 "\n", st->missing, st->extra);
    fprintf(f, "  delivery     %s%s\n", held ? "held: every window message acked and delivered once to every member"
                                               : "NOT held: ", held ? "" : why);
    print_hist(f, "latency ms", h, "  (intended send time -> delivery)");
    print_hist(f, "from send ms", &p->hsent, "  (actual send time -> delivery)");
    print_hist(f, "send lag ms", &p->lag, "  (actual - intended send time)");
    fprintf(f, "  ack ms       p50 %.3f  p99 %.3f  max %.3f  (intended send time -> ack)\n",
            ms(hist_quantile(ack, 0.5)), ms(hist_quantile(ack, 0.99)), ms(ack->max));
    fprintf(f, "  errors      ");
    int any = 0;
    for (int e = 0; e < SE__COUNT; e++)
        if (st->errs[e]) {
            fprintf(f, " %s %" PRIu64, stats_err_name(e), st->errs[e]);
            any = 1;
        }
    fprintf(f, "%s\n", any ? "" : " none");
    fprintf(f, "  reconnects   %" PRIu64 "   syncs %" PRIu64 "  gaps %" PRIu64 "  resends %" PRIu64
               "  duplicates %" PRIu64 "\n",
            st->reconnects, st->syncs, st->gaps, st->resends, st->dups);
}

static int write_json(const char *path, const struct conf *c, const struct stats *st, const struct parent *p)
{
    const struct hist *h = &p->h, *ack = &p->ack;
    double settle_s = p->settle_s;
    char why[160];
    int held = stats_held(st, why, sizeof why);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    double win = st->window_s > 0 ? st->window_s : 1;
    fprintf(f, "{\n  \"run\": \"%s\",\n  \"config\": {\"proto\": \"%s\", \"clients\": %d, \"room_size\": %d, \"rooms\": %d, "
               "\"senders\": %d, \"rate\": %g, \"duration\": %g, \"warmup\": %g, \"payload\": %d, "
               "\"procs\": %d, \"gateways\": %d, \"source_ips\": %d},\n",
            c->run, c->proto == PROTO_SOCKETIO ? "socketio" : "chatd", c->clients, c->room_size, c->nrooms, c->nsenders, c->rate, c->duration, c->warmup,
            c->payload, c->procs, c->ngw, c->nsrc);
    fprintf(f, "  \"setup_s\": %.3f, \"joined\": %" PRIu64 ", \"handshakes\": %" PRIu64 ", \"window_s\": %.3f,\n",
            st->setup_s, st->joined, st->handshakes, st->window_s);
    fprintf(f, "  \"settle_s\": %.3f, \"connected\": %" PRIu64 ", \"connect_s\": %.3f, \"handshakes_per_s\": %.1f,\n",
            settle_s, st->connected, st->connect_s,
            st->connect_s > 0 ? (double)st->connected / st->connect_s : 0.0);
    fprintf(f, "  \"sent\": %" PRIu64 ", \"sent_all_phases\": %" PRIu64 ", \"acked\": %" PRIu64
               ", \"delivered\": %" PRIu64 ", \"expected\": %" PRIu64 ", \"missing\": %" PRIu64
               ", \"extra\": %" PRIu64 ", \"unacked\": %" PRIu64 ",\n",
            st->sent_win, st->sent, st->acked_win, st->delivered_win, st->expected, st->missing, st->extra,
            st->sent_win > st->acked_win ? st->sent_win - st->acked_win : 0);
    fprintf(f, "  \"held\": %s, \"not_held\": \"%s\",\n", held ? "true" : "false", why);
    fprintf(f, "  \"sent_per_s\": %.1f, \"deliveries_per_s\": %.1f,\n", (double)st->sent_win / win,
            (double)st->delivered_win / win);
    json_hist(f, "latency_ms", h);
    json_hist(f, "latency_from_send_ms", &p->hsent);
    json_hist(f, "send_lag_ms", &p->lag);
    fprintf(f, "  \"ack_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f},\n", ms(hist_quantile(ack, 0.5)),
            ms(hist_quantile(ack, 0.99)), ms(ack->max));
    fprintf(f, "  \"errors\": {");
    for (int e = 0, first = 1; e < SE__COUNT; e++)
        if (st->errs[e]) {
            fprintf(f, "%s\"%s\": %" PRIu64, first ? "" : ", ", stats_err_name(e), st->errs[e]);
            first = 0;
        }
    fprintf(f, "},\n  \"reconnects\": %" PRIu64 ", \"syncs\": %" PRIu64 ", \"gaps\": %" PRIu64
               ", \"resends\": %" PRIu64 ", \"duplicates\": %" PRIu64 "\n}\n",
            st->reconnects, st->syncs, st->gaps, st->resends, st->dups);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- main ---- */

static int spawn_workers(struct conf *c, struct ledger *l, struct parent_worker *w)
{
    for (int i = 0; i < c->procs; i++) {
        int up[2], down[2];
        if (pipe(up) < 0 || pipe(down) < 0)
            return -1;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            for (int j = 0; j < i; j++) {
                close(w[j].down_fd);
                close(w[j].up_fd);
            }
            close(up[0]);
            close(down[1]);
            signal(SIGINT, SIG_IGN);
            _exit(worker_main(c, l, i, up[1], down[0]));
        }
        close(up[1]);
        close(down[0]);
        w[i].pid = pid;
        w[i].down_fd = down[1];
        w[i].up_fd = up[0];
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct conf conf;
    static struct parent p;
    parse_options(&conf, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (check_fds(&conf) < 0)
        return 2;
    if (conf.payload < 24)
        fprintf(stderr, "chatbench: note: text is at least \"t=<ns>\" (~21 bytes), longer than --payload\n");
    double per_sender = conf.nsenders ? conf.rate / conf.nsenders : 0;
    fprintf(stderr, "chatbench: run %s: %d clients, %d rooms of %d, %d senders at %.1f msg/s each, "
                    "%d proc(s), %d gateway(s)%s\n",
            conf.run, conf.clients, conf.nrooms, conf.room_size, conf.nsenders, per_sender, conf.procs,
            conf.ngw, conf.secret[0] ? "" : ", dev tokens");
    if (per_sender > 20)
        fprintf(stderr, "chatbench: note: chatd's default --rate is 20 requests/s per connection; "
                        "start it with a higher CHATD_RATE or use more --senders-per-room\n");
    p.conf = &conf;
    p.n = conf.procs;
    /* Messages can be made from the start of the warmup to the end of the
     * window. */
    struct ledger *ledger = ledger_create(conf.nsenders, conf.rate, conf.warmup + conf.duration);
    if (!ledger) {
        fprintf(stderr, "chatbench: cannot map the message ledger for %d senders x %g msgs/s x %g s: %s\n",
                conf.nsenders, conf.rate, conf.warmup + conf.duration, strerror(errno));
        return 1;
    }
    ledger->sending = (uint64_t)conf.procs;
    p.w = calloc((size_t)p.n, sizeof *p.w);
    if (!p.w || spawn_workers(&conf, ledger, p.w) < 0) {
        perror("chatbench: fork");
        return 1;
    }
    p.loop = uv_default_loop();
    p.t0 = worker_now();
    for (int i = 0; i < p.n; i++) {
        int fd = p.w[i].up_fd;
        uv_pipe_init(p.loop, &p.w[i].up, 0);
        p.w[i].up.data = &p;
        if (uv_pipe_open(&p.w[i].up, fd) < 0 ||
            uv_read_start((uv_stream_t *)&p.w[i].up, parent_alloc, parent_read) < 0) {
            fprintf(stderr, "chatbench: cannot read worker %d\n", i);
            return 1;
        }
    }
    uv_timer_init(p.loop, &p.progress);
    uv_timer_start(&p.progress, parent_on_progress, 1000, 1000);
    uv_signal_init(p.loop, &p.sigint);
    uv_signal_init(p.loop, &p.sigterm);
    p.sigint.data = p.sigterm.data = &p;
    uv_signal_start(&p.sigint, parent_on_signal, SIGINT);
    uv_signal_start(&p.sigterm, parent_on_signal, SIGTERM);
    uv_run(p.loop, UV_RUN_DEFAULT);

    int ok = 1;
    for (int i = 0; i < p.n; i++) {
        int status;
        close(p.w[i].down_fd);
        if (waitpid(p.w[i].pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
            !p.w[i].final)
            ok = 0;
    }
    struct stats st;
    int phase;
    parent_sum(&p, &st, &phase);
    /* Every worker has exited: each message is judged once, whichever
     * processes acked and received it. */
    ledger_account(ledger, &conf, &st);
    print_summary(stdout, &conf, &st, &p);
    if (conf.json_path && write_json(conf.json_path, &conf, &st, &p) < 0) {
        fprintf(stderr, "chatbench: cannot write %s: %s\n", conf.json_path, strerror(errno));
        ok = 0;
    }
    uv_loop_close(p.loop);
    free(p.w);
    ledger_destroy(ledger);
    return ok && stats_held(&st, NULL, 0) && st.window_s > 0 ? 0 : 1;
}
