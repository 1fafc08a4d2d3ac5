#include "lib/slab.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <utlist.h>

#include "lib/log.h"
#include "lib/metrics.h"

static struct slab *slab_all; /* listed slabs: trim, metrics */

/* An object larger than a block would give a block zero slots, and the bump
 * allocator would then hand out memory past the block's end. Refused in
 * both builds, so the ASan build fails the way the real one does. */
static int slab_refuses(struct slab *s)
{
    if (slab_fits(s->size))
        return 0;
    if (!s->refused) {
        s->refused = 1;
        log_error("slab_object_too_large", "slab=%s size=%zu max=%u", s->name, s->size,
                  (unsigned)SLAB_MAX_OBJECT);
    }
    return 1;
}

void slab_list(struct slab *s)
{
    if (!s->listed) {
        s->listed = 1;
        s->next_slab = slab_all;
        slab_all = s;
    }
}

void slab_collect(struct metrics_buf *out)
{
    char labels[80];
    metrics_emit_family(out, "chatd_slab_objects", "Live objects in a fixed-size slab (lib/slab.h).",
                        "gauge");
    for (struct slab *s = slab_all; s; s = s->next_slab) {
        snprintf(labels, sizeof labels, "slab=\"%s\"", s->name);
        metrics_emit(out, "chatd_slab_objects", labels, (double)s->objects);
    }
    metrics_emit_family(out, "chatd_slab_mapped_bytes",
                        "Bytes a slab has mapped, spare blocks included (lib/slab.h).", "gauge");
    for (struct slab *s = slab_all; s; s = s->next_slab) {
        snprintf(labels, sizeof labels, "slab=\"%s\"", s->name);
        metrics_emit(out, "chatd_slab_mapped_bytes", labels, (double)s->blocks * SLAB_BLOCK);
    }
}

#ifdef SLAB_USES_MALLOC

void *slab_alloc(struct slab *s)
{
    if (slab_refuses(s))
        return NULL;
    void *p = calloc(1, s->size);
    if (p) {
        s->objects++;
        slab_list(s);
    }
    return p;
}

void *slab_alloc_raw(struct slab *s) { return slab_alloc(s); }

void slab_free(struct slab *s, void *p)
{
    if (!p)
        return;
    s->objects--;
    free(p);
}

void slab_trim(void) {}

#else

struct slab_block {
    struct slab *owner;
    struct slab_block *next, *prev; /* in owner->partial or (next only) owner->spare */
    void *free;                     /* freed slots */
    char *fresh;                    /* first never-used slot */
    unsigned used, cap;
};

#define SLAB_HDR ((sizeof(struct slab_block) + 15) & ~(size_t)15)
_Static_assert(SLAB_HDR <= SLAB_HDR_MAX, "SLAB_MAX_OBJECT must leave room for the block header");

static struct slab_block *slab_block_of(const void *p)
{
    return (struct slab_block *)((uintptr_t)p & ~(uintptr_t)(SLAB_BLOCK - 1));
}

static void slab_block_reset(struct slab *s, struct slab_block *b)
{
    b->free = NULL;
    b->fresh = (char *)b + SLAB_HDR;
    b->used = 0;
    b->cap = (unsigned)((SLAB_BLOCK - SLAB_HDR) / s->slot);
}

/* mmap gives page alignment only: map twice the size, keep the aligned half. */
static struct slab_block *slab_block_new(struct slab *s)
{
    size_t len = 2 * (size_t)SLAB_BLOCK;
    char *raw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *base = (char *)(((uintptr_t)raw + SLAB_BLOCK - 1) & ~(uintptr_t)(SLAB_BLOCK - 1));
    if (base > raw)
        munmap(raw, (size_t)(base - raw));
    if (base + SLAB_BLOCK < raw + len)
        munmap(base + SLAB_BLOCK, (size_t)(raw + len - (base + SLAB_BLOCK)));
    struct slab_block *b = (struct slab_block *)base;
    b->owner = s;
    slab_block_reset(s, b);
    s->blocks++;
    slab_list(s);
    return b;
}

/* A free slot holds the free list's pointer. */
static void slab_slot_size(struct slab *s)
{
    size_t a = s->align < _Alignof(void *) ? _Alignof(void *) : s->align;
    size_t n = s->size < sizeof(void *) ? sizeof(void *) : s->size;
    s->slot = (n + a - 1) & ~(a - 1);
}

void *slab_alloc_raw(struct slab *s)
{
    if (!s->slot) {
        if (slab_refuses(s))
            return NULL;
        slab_slot_size(s);
    }
    struct slab_block *b = s->partial;
    if (!b) {
        if ((b = s->spare))
            LL_DELETE(s->spare, b);
        else if (!(b = slab_block_new(s)))
            return NULL;
        DL_PREPEND(s->partial, b);
    }
    void *p = b->free;
    if (p) {
        b->free = *(void **)p;
    } else {
        p = b->fresh;
        b->fresh += s->slot;
    }
    if (++b->used == b->cap)
        DL_DELETE(s->partial, b);
    s->objects++;
    return p;
}

void *slab_alloc(struct slab *s)
{
    void *p = slab_alloc_raw(s);
    if (p)
        memset(p, 0, s->size);
    return p;
}

/* An emptied block waits on the spare list for slab_trim(). */
static void slab_block_release(struct slab *s, struct slab_block *b)
{
    DL_DELETE(s->partial, b);
    slab_block_reset(s, b);
    LL_PREPEND(s->spare, b);
}

void slab_trim(void)
{
    for (struct slab *s = slab_all; s; s = s->next_slab)
        while (s->spare) {
            struct slab_block *b = s->spare;
            LL_DELETE(s->spare, b);
            munmap(b, SLAB_BLOCK);
            s->blocks--;
        }
}

void slab_free(struct slab *s, void *p)
{
    if (!p)
        return;
    struct slab_block *b = slab_block_of(p);
    CHATD_ASSERT(b->owner == s && b->used > 0);
    if (b->used == b->cap)
        DL_PREPEND(s->partial, b);
    *(void **)p = b->free;
    b->free = p;
    s->objects--;
    if (--b->used == 0)
        slab_block_release(s, b);
}

#endif
