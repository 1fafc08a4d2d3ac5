#include "lib/loopstat.h"

#include "lib/log.h"
#include "lib/metrics.h"

static struct {
    uv_prepare_t prepare;
    int started;
    uint64_t last_ns, last_idle_ns;
    metric_t *iteration, *busy;
} loopstat;

static void loopstat_on_prepare(uv_prepare_t *h)
{
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(h->loop);
    uint64_t wall = now - loopstat.last_ns, blocked = idle - loopstat.last_idle_ns;
    double busy = (double)(wall > blocked ? wall - blocked : 0) / 1e9;
    loopstat.last_ns = now;
    loopstat.last_idle_ns = idle;
    metric_observe(loopstat.iteration, busy);
    metric_add(loopstat.busy, busy);
}

int loopstat_start(uv_loop_t *loop)
{
    int rc = uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
    if (rc == 0)
        rc = uv_prepare_init(loop, &loopstat.prepare);
    if (rc) {
        log_error("loopstat_failed", "err=%s", uv_strerror(rc));
        return rc;
    }
    loopstat.iteration = metrics_histogram(
        "chatd_loop_iteration_seconds",
        "Time the event loop spent running callbacks in one iteration (its tail delays every client).",
        NULL);
    loopstat.busy = metrics_counter("chatd_loop_busy_seconds_total",
                                    "Time the event loop spent running callbacks; rate() is its utilisation.",
                                    NULL);
    loopstat.last_ns = uv_hrtime();
    loopstat.last_idle_ns = uv_metrics_idle_time(loop);
    uv_prepare_start(&loopstat.prepare, loopstat_on_prepare);
    uv_unref((uv_handle_t *)&loopstat.prepare); /* never keeps the loop alive */
    loopstat.started = 1;
    return 0;
}

void loopstat_stop(void)
{
    if (!loopstat.started)
        return;
    loopstat.started = 0;
    uv_close((uv_handle_t *)&loopstat.prepare, NULL);
}
