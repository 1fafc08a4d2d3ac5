#include "bench/stats.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static const char *const stats_err_names[SE__COUNT] = {
    [SE_BAD_REQUEST] = "bad_request", [SE_NOT_MEMBER] = "not_member",
    [SE_TOO_LARGE] = "too_large", [SE_RATE_LIMITED] = "rate_limited",
    [SE_FORBIDDEN] = "forbidden", [SE_UNAVAILABLE] = "unavailable",
    [SE_INTERNAL] = "internal", [SE_OTHER_CODE] = "other_code",
    [SE_CONNECT] = "connect_failed", [SE_HTTP_401] = "http_401",
    [SE_HTTP_503] = "http_503", [SE_HTTP_OTHER] = "http_other",
    [SE_HANDSHAKE] = "bad_handshake", [SE_TIMEOUT] = "connect_timeout",
    [SE_CLOSE_1001] = "close_1001", [SE_CLOSE_1012] = "close_1012",
    [SE_CLOSE_OTHER] = "close_other", [SE_EOF] = "connection_lost",
    [SE_BAD_FRAME] = "bad_frame", [SE_BACKLOG] = "sender_backlog",
};

const char *stats_err_name(int e)
{
    return e >= 0 && e < SE__COUNT ? stats_err_names[e] : "?";
}

int stats_err_from_code(const char *code)
{
    for (int e = 0; e < SE_OTHER_CODE; e++)
        if (strcmp(code, stats_err_names[e]) == 0)
            return e;
    return SE_OTHER_CODE;
}

const char *stats_phase_name(int phase)
{
    static const char *const names[] = { "setup", "ready", "warmup", "measure", "drain", "done" };
    return phase >= 0 && phase <= PHASE_DONE ? names[phase] : "?";
}

/* Every field from clients through errs is a uint64_t counter, no padding. */
_Static_assert(offsetof(struct stats, setup_s) ==
               offsetof(struct stats, errs) + SE__COUNT * sizeof(uint64_t), "stats layout");

void stats_add(struct stats *d, const struct stats *s)
{
    uint64_t *dp = &d->clients;
    const uint64_t *sp = &s->clients;
    size_t n = (size_t)((const uint64_t *)&s->errs[SE__COUNT] - sp);
    for (size_t i = 0; i < n; i++)
        dp[i] += sp[i];
    if (s->setup_s > d->setup_s)
        d->setup_s = s->setup_s;
    if (s->connect_s > d->connect_s)
        d->connect_s = s->connect_s;
    if (s->window_s > d->window_s)
        d->window_s = s->window_s;
}

int stats_held(const struct stats *st, char *why, size_t n)
{
    struct { const char *name; uint64_t v; } fail[] = {
        { "unacked", st->sent_win > st->acked_win ? st->sent_win - st->acked_win : 0 },
        { "missing", st->missing },
        { "extra", st->extra },
        { "sender_backlog", st->errs[SE_BACKLOG] },
    };
    size_t len = 0;
    int held = 1;
    if (n > 0)
        why[0] = '\0';
    for (size_t i = 0; i < sizeof fail / sizeof fail[0]; i++) {
        if (fail[i].v == 0)
            continue;
        held = 0;
        if (len < n) {
            int k = snprintf(why + len, n - len, "%s%s %" PRIu64, len ? ", " : "", fail[i].name, fail[i].v);
            len += k > 0 ? (size_t)k : 0;
        }
    }
    return held;
}
