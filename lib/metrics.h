/* metrics: a tiny Prometheus registry for one single-threaded process.
 *
 * Metrics are registered once at start (registration allocates, updates never
 * do) and live until metrics_free(). A metric is one time series: name plus a
 * fixed label set written as Prometheus label text, e.g. `code="not_member"`.
 * Several series may share a name (HELP/TYPE is printed once per name, from
 * the first registration). Histograms use fixed exponential buckets in
 * seconds, from 100 us to ~26 s, which covers socket writes to Kafka stalls.
 */
#ifndef CHATD_METRICS_H
#define CHATD_METRICS_H

#include <stddef.h>

typedef struct metric metric_t;

metric_t *metrics_counter(const char *name, const char *help, const char *labels);
metric_t *metrics_gauge(const char *name, const char *help, const char *labels);
metric_t *metrics_histogram(const char *name, const char *help, const char *labels);

void metric_inc(metric_t *m);
void metric_add(metric_t *m, double v);
void metric_set(metric_t *m, double v);
void metric_observe(metric_t *m, double seconds);
double metric_value(const metric_t *m);

/* Scrape-time series: what is cheaper to read when asked than to keep up to
 * date (allocator statistics). One collector per process; it runs at each
 * render, after the registered metrics, and writes one metric family at a
 * time: metrics_emit_family, then that family's metrics_emit lines. */
typedef struct metrics_buf metrics_out_t;
void metrics_set_collector(void (*fn)(metrics_out_t *out));
void metrics_emit_family(metrics_out_t *out, const char *name, const char *help, const char *type);
void metrics_emit(metrics_out_t *out, const char *name, const char *labels, double v);

/* Renders every series as Prometheus text exposition format 0.0.4.
 * Returns a malloc'd NUL-terminated string (caller frees) or NULL on ENOMEM. */
char *metrics_render(size_t *len);
void metrics_free(void);

#endif
