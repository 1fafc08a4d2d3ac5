#include "lib/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

#define METRICS_BUCKETS 19 /* 100us * 2^k, k = 0..18 */

enum metric_kind { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct metric {
    enum metric_kind kind;
    char *name;
    char *help;
    char *labels;
    double value; /* counter/gauge; sum for histograms */
    unsigned long long count;
    unsigned long long buckets[METRICS_BUCKETS];
    struct metric *next;
};

static struct metric *metrics_head, *metrics_tail;
static void (*metrics_collector)(metrics_out_t *out);

static double metrics_bound(int k) { return 0.0001 * (double)(1u << k); }

static metric_t *metrics_register(enum metric_kind kind, const char *name, const char *help,
                                  const char *labels)
{
    struct metric *m = calloc(1, sizeof *m);
    CHATD_ASSERT(m != NULL);
    m->kind = kind;
    m->name = strdup(name);
    m->help = strdup(help);
    m->labels = strdup(labels ? labels : "");
    CHATD_ASSERT(m->name && m->help && m->labels);
    if (metrics_tail)
        metrics_tail->next = m;
    else
        metrics_head = m;
    metrics_tail = m;
    return m;
}

metric_t *metrics_counter(const char *n, const char *h, const char *l) { return metrics_register(METRIC_COUNTER, n, h, l); }
metric_t *metrics_gauge(const char *n, const char *h, const char *l) { return metrics_register(METRIC_GAUGE, n, h, l); }
metric_t *metrics_histogram(const char *n, const char *h, const char *l) { return metrics_register(METRIC_HISTOGRAM, n, h, l); }

void metric_inc(metric_t *m) { m->value += 1; }
void metric_add(metric_t *m, double v) { m->value += v; }
void metric_set(metric_t *m, double v) { m->value = v; }
double metric_value(const metric_t *m) { return m->value; }

void metric_observe(metric_t *m, double s)
{
    m->value += s;
    m->count++;
    for (int k = 0; k < METRICS_BUCKETS; k++)
        if (s <= metrics_bound(k)) {
            m->buckets[k]++;
            break;
        }
}

struct metrics_buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void metrics_printf(struct metrics_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metrics_printf(struct metrics_buf *b, const char *fmt, ...)
{
    for (;;) {
        if (b->failed)
            return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static int metrics_name_seen(const struct metric *upto, const char *name)
{
    for (const struct metric *m = metrics_head; m != upto; m = m->next)
        if (strcmp(m->name, name) == 0)
            return 1;
    return 0;
}

void metrics_emit_family(metrics_out_t *out, const char *name, const char *help, const char *type)
{
    metrics_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_emit(metrics_out_t *out, const char *name, const char *labels, double v)
{
    if (labels && labels[0])
        metrics_printf(out, "%s{%s} %.17g\n", name, labels, v);
    else
        metrics_printf(out, "%s %.17g\n", name, v);
}

static void metrics_render_one(struct metrics_buf *b, const struct metric *m)
{
    static const char *const types[] = { "counter", "gauge", "histogram" };
    if (!metrics_name_seen(m, m->name))
        metrics_emit_family(b, m->name, m->help, types[m->kind]);
    if (m->kind != METRIC_HISTOGRAM) {
        metrics_emit(b, m->name, m->labels, m->value);
        return;
    }
    const char *sep = m->labels[0] ? "," : "";
    unsigned long long cum = 0;
    for (int k = 0; k < METRICS_BUCKETS; k++) {
        cum += m->buckets[k];
        metrics_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", m->name, m->labels, sep, metrics_bound(k), cum);
    }
    metrics_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->name, m->labels, sep, m->count);
    char name[256];
    snprintf(name, sizeof name, "%s_sum", m->name);
    metrics_emit(b, name, m->labels, m->value);
    snprintf(name, sizeof name, "%s_count", m->name);
    metrics_emit(b, name, m->labels, (double)m->count);
}

void metrics_set_collector(void (*fn)(metrics_out_t *out)) { metrics_collector = fn; }

char *metrics_render(size_t *len)
{
    struct metrics_buf b = { .p = malloc(4096), .cap = 4096 };
    if (!b.p)
        return NULL;
    b.p[0] = 0;
    for (const struct metric *m = metrics_head; m; m = m->next)
        metrics_render_one(&b, m);
    if (metrics_collector)
        metrics_collector(&b);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

void metrics_free(void)
{
    struct metric *m = metrics_head;
    while (m) {
        struct metric *next = m->next;
        free(m->name);
        free(m->help);
        free(m->labels);
        free(m);
        m = next;
    }
    metrics_head = metrics_tail = NULL;
    metrics_collector = NULL;
}
