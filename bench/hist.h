/* hist: a log-bucket latency histogram (HdrHistogram's layout, much smaller).
 *
 * Values are microseconds. Below 256 every value has its own bucket; above,
 * each power of two is cut into 128 equal buckets, so a reported quantile is
 * at most 0.8% above the true value. Values from 2^28 us (~268 s) up land in
 * the last bucket; `max` stays exact. Plain data: merge by adding counts, send
 * through a pipe as bytes (same binary on both ends).
 */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>

#define HIST_LINEAR 256                       /* values 0..255 exactly */
#define HIST_SUB 128                          /* buckets per power of two above */
#define HIST_TOP_EXP 28                       /* 2^28 us and up: last bucket */
#define HIST_BUCKETS (HIST_LINEAR + (HIST_TOP_EXP - 8) * HIST_SUB)

struct hist {
    uint64_t n, sum, max;
    uint64_t b[HIST_BUCKETS];
};

void hist_reset(struct hist *h);
void hist_add(struct hist *h, uint64_t us);
void hist_merge(struct hist *dst, const struct hist *src);
/* The highest value equivalent to the bucket holding the q-quantile (0 < q
 * <= 1), capped at the exact max; 0 when the histogram is empty. */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
