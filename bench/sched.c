#include "bench/sched.h"

#include <math.h>

uint64_t sched_due(uint64_t t_start, double rate, uint64_t now)
{
    if (now < t_start || rate <= 0)
        return 0;
    return (uint64_t)((double)(now - t_start) / 1e9 * rate);
}

uint64_t sched_intended(uint64_t t_start, double rate, uint64_t k)
{
    if (rate <= 0)
        return t_start;
    uint64_t t = t_start + (uint64_t)ceil((double)k * 1e9 / rate);
    /* Floating-point rounding may move the instant sched_due() counts k by
     * a nanosecond or two: the intended time is exactly that instant. */
    while (sched_due(t_start, rate, t) < k)
        t++;
    while (t > t_start && sched_due(t_start, rate, t - 1) >= k)
        t--;
    return t;
}

uint64_t sched_lag_us(uint64_t intended, uint64_t actual)
{
    return actual > intended ? (actual - intended) / 1000 : 0;
}

int sched_next(struct sched *s, uint64_t now, uint64_t *intended)
{
    if (s->made >= sched_due(s->t_start, s->rate, now))
        return 0;
    *intended = sched_intended(s->t_start, s->rate, ++s->made);
    return 1;
}
