#include "bench/ledger.h"

#include <errno.h>
#include <sys/mman.h>

#include "bench/conf.h"
#include "bench/stats.h"

#define LEDGER_MAX_BYTES (8ull << 30) /* virtual: pages are touched only as used */

struct ledger *ledger_create(int nsenders, double rate, double seconds)
{
    /* Round-robin gives each sender at most one more than its share; cid 0
     * is unused; a little slack for the tick that ends the window. */
    double share = nsenders > 0 ? rate * seconds / nsenders : 0;
    uint64_t per = (uint64_t)share + 8;
    double bytes = sizeof(struct ledger) + (double)per * (nsenders > 0 ? nsenders : 1) * sizeof(uint32_t);
    if (!(bytes < (double)LEDGER_MAX_BYTES)) {
        errno = EFBIG;
        return NULL;
    }
    struct ledger *l = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (l == MAP_FAILED)
        return NULL;
    l->per_sender = per;
    l->nsenders = (uint64_t)(nsenders > 0 ? nsenders : 0);
    l->bytes = (size_t)bytes;
    return l;
}

void ledger_destroy(struct ledger *l)
{
    if (l)
        munmap(l, l->bytes);
}

uint32_t *ledger_word(struct ledger *l, int s, uint64_t n)
{
    if (s < 0 || (uint64_t)s >= l->nsenders || n == 0 || n >= l->per_sender)
        return NULL;
    return &l->info[(uint64_t)s * l->per_sender + n];
}

void ledger_count(struct ledger *l, int s, uint64_t n)
{
    uint32_t *w = ledger_word(l, s, n);
    /* Saturates: rooms are far below 65535 members, so the count only nears
     * it if something delivers the same message over and over. */
    if (w && (__atomic_load_n(w, __ATOMIC_RELAXED) & LEDGER_COUNT) != LEDGER_COUNT)
        __atomic_fetch_add(w, 1u, __ATOMIC_RELAXED);
}

void ledger_flag(struct ledger *l, int s, uint64_t n, uint32_t flag)
{
    uint32_t *w = ledger_word(l, s, n);
    if (w)
        __atomic_fetch_or(w, flag, __ATOMIC_RELAXED);
}

void ledger_judge(uint32_t word, int members, struct stats *st)
{
    if (!(word & LEDGER_INWIN) || !(word & LEDGER_ACKED))
        return;
    uint64_t d = word & LEDGER_COUNT, m = (uint64_t)members;
    st->missing += d < m ? m - d : 0;
    st->extra += d > m ? d - m : 0;
}

void ledger_account(const struct ledger *l, const struct conf *c, struct stats *st)
{
    for (uint64_t s = 0; s < l->nsenders; s++) {
        int members = conf_room_members(c, conf_sender_room(c, (int)s));
        const uint32_t *w = &l->info[s * l->per_sender];
        for (uint64_t n = 1; n < l->per_sender; n++)
            ledger_judge(__atomic_load_n(&w[n], __ATOMIC_RELAXED), members, st);
    }
}
