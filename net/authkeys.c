#include "net/authkeys.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/metrics.h"

#define AUTHKEYS_FILE_MAX (1 << 20)
#define AUTHKEYS_POLL_MS 1000

static struct {
    const struct conf *conf;
    struct auth_policy policy;
    jwks_t *jwks;
    int started;
    uv_fs_poll_t poll;
    uv_signal_t sighup;
    metric_t *keys, *reload_ok, *reload_failed;
} ak;

/* The whole file, NUL-terminated (caller frees), or NULL with *why. */
static char *authkeys_read(const char *path, size_t *len, const char **why)
{
    FILE *f = fopen(path, "rb");
    *why = strerror(errno);
    if (!f)
        return NULL;
    char *buf = malloc(AUTHKEYS_FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, AUTHKEYS_FILE_MAX + 1, f) : 0;
    int bad = !buf || ferror(f) || n > AUTHKEYS_FILE_MAX;
    *why = !buf ? "out of memory" : n > AUTHKEYS_FILE_MAX ? "larger than 1 MiB" : "read error";
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int authkeys_reload(void)
{
    const char *path = ak.conf->jwks_file, *why;
    size_t len = 0;
    int skipped = 0;
    jwks_t *k = NULL;
    char *buf = authkeys_read(path, &len, &why);
    if (!buf || jwks_parse(buf, len, &k, &skipped, &why) < 0) {
        free(buf);
        metric_inc(ak.reload_failed);
        log_error("jwks_load_failed", "path=%s why=%s keeping=%zu", log_q(path, strlen(path)),
                  log_q(why, strlen(why)), jwks_count(ak.jwks));
        return -1;
    }
    free(buf);
    jwks_free(ak.jwks);
    ak.jwks = k;
    ak.policy.jwks = k;
    metric_inc(ak.reload_ok);
    metric_set(ak.keys, (double)jwks_count(k));
    log_info("jwks_loaded", "path=%s keys=%zu skipped=%d", log_q(path, strlen(path)), jwks_count(k), skipped);
    return 0;
}

static void authkeys_on_change(uv_fs_poll_t *h, int status, const uv_stat_t *prev, const uv_stat_t *cur)
{
    (void)h, (void)prev, (void)cur;
    if (status < 0) {
        /* Gone (being replaced, or deleted): the keys in use stay. */
        log_warn("jwks_file_unavailable", "path=%s err=%s", log_q(ak.conf->jwks_file, strlen(ak.conf->jwks_file)),
                 uv_err_name(status));
        return;
    }
    authkeys_reload();
}

static void authkeys_on_sighup(uv_signal_t *s, int signum)
{
    (void)s, (void)signum;
    log_info("jwks_reload_signal", "signal=SIGHUP");
    authkeys_reload();
}

int authkeys_start(uv_loop_t *loop, const struct conf *c)
{
    ak.conf = c;
    ak.policy = (struct auth_policy){ .algs = c->jwt_algs, .secret = c->jwt_secret,
                                      .previous = c->jwt_secret_previous, .issuer = c->jwt_issuer,
                                      .audience = c->jwt_audience };
    if (!c->jwks_file[0])
        return 0;
    ak.keys = metrics_gauge("chatd_jwks_keys", "keys of the JWKS file in use", NULL);
    ak.reload_ok = metrics_counter("chatd_jwks_loads_total", "JWKS file loads by result", "result=\"ok\"");
    ak.reload_failed = metrics_counter("chatd_jwks_loads_total", "JWKS file loads by result", "result=\"failed\"");
    if (authkeys_reload() < 0)
        return -1;
    uv_fs_poll_init(loop, &ak.poll);
    uv_signal_init(loop, &ak.sighup);
    int rc = uv_fs_poll_start(&ak.poll, authkeys_on_change, c->jwks_file, AUTHKEYS_POLL_MS);
    if (rc == 0)
        rc = uv_signal_start(&ak.sighup, authkeys_on_sighup, SIGHUP);
    /* Neither keeps the loop alive on its own (shutdown). */
    uv_unref((uv_handle_t *)&ak.poll);
    uv_unref((uv_handle_t *)&ak.sighup);
    ak.started = 1;
    if (rc)
        log_error("jwks_watch_failed", "err=%s", uv_err_name(rc));
    return rc ? -1 : 0;
}

int authkeys_verify(const char *token, int64_t now_s, struct auth_identity *id, const char **why)
{
    return auth_verify_policy(&ak.policy, token, now_s, id, why);
}

void authkeys_stop(void)
{
    if (ak.started) {
        uv_close((uv_handle_t *)&ak.poll, NULL);
        uv_close((uv_handle_t *)&ak.sighup, NULL);
        ak.started = 0;
    }
    ak.policy.jwks = NULL;
    jwks_free(ak.jwks);
    ak.jwks = NULL;
}
