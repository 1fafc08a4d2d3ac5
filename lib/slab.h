/* Fixed-size object pools for what every connection keeps while it is
 * open (its socket handle, WebSocket state, gateway entries) and for what a
 * connection storm has in flight by the thousand (request buffers, pending
 * requests, Redis commands).
 *
 * Why by hand: with glibc malloc these small long-lived objects land
 * between the short-lived allocations of other connections' handshakes
 * (request buffers, JWT parsing, query results, replies). Once a
 * connection storm is over, the freed space is scattered in pages that
 * still hold a live object, so malloc_trim cannot give it back: 200 to
 * 400 B per idle connection on top of the objects themselves
 * (docs/PERFORMANCE.md, idle connections). jemalloc (Debian's libjemalloc2,
 * LD_PRELOADed into the gateway) measured no better, since it too mixes
 * lifetimes within a size class; no packaged pool library frees per object
 * and returns emptied memory.
 * A slab per object type keeps them dense, apart from the transients, and
 * needs no header per object.
 *
 * Blocks of SLAB_BLOCK bytes come from mmap, aligned to their size so an
 * object finds its block by masking its address; slots are handed out from
 * a free list, then by bumping into untouched pages. A block that empties
 * is kept as a spare until slab_trim(): the fan-out path and handshake
 * bursts empty and refill the same few blocks many times a second, and an
 * mmap + munmap + page faults each time cost more than the objects. Loop
 * thread only. Under AddressSanitizer slab_alloc/slab_free are calloc/free,
 * so use-after-free stays detectable. */
#ifndef CHATD_SLAB_H
#define CHATD_SLAB_H

#include <stddef.h>

#define SLAB_BLOCK (128u * 1024u)
/* The largest object a slab holds: a block less its header (at most
 * SLAB_HDR_MAX bytes). A slab asked for more refuses to allocate rather
 * than hand out slots past its block's end; configuration that sizes a
 * slab checks slab_fits() first (conf/conf.c). */
#define SLAB_HDR_MAX 128u
#define SLAB_MAX_OBJECT (SLAB_BLOCK - SLAB_HDR_MAX)

/* gcc says __SANITIZE_ADDRESS__, clang (the fuzz build) __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define SLAB_USES_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_USES_MALLOC 1
#endif
#endif

struct slab_block;

struct slab {
    const char *name;
    size_t size;                /* object size as asked */
    size_t align;               /* the object type's alignment */
    size_t slot;                /* size rounded up to align */
    struct slab_block *partial; /* blocks with a free slot */
    struct slab_block *spare;   /* empty blocks, until slab_trim() */
    size_t objects, blocks;     /* blocks: mapped, spares included */
    struct slab *next_slab;     /* the listed slabs (slab_list) */
    int listed;
    int refused;                /* size over SLAB_MAX_OBJECT, logged */
};

/* For objects of type T, or of sz bytes aligned like pointers. */
#define SLAB_INIT(nm, T) { .name = (nm), .size = sizeof(T), .align = _Alignof(T) }
#define SLAB_INIT_SIZE(nm, sz) { .name = (nm), .size = (sz), .align = _Alignof(void *) }

/* Adds s to the slabs slab_trim() and slab_collect() walk (once; the first
 * allocation does it too). */
void slab_list(struct slab *s);

/* A file-scope slab, listed before main() runs: /metrics then has the same
 * series from the first scrape on, whatever has been allocated yet.
 * SLAB_DEFINE(gw_conns, SLAB_INIT("gw_conn", struct gw_conn)); */
#define SLAB_DEFINE(var, ...)                                                      \
    static struct slab var;                                                        \
    __attribute__((constructor)) static void var##_list(void) { slab_list(&var); } \
    static struct slab var = __VA_ARGS__

/* 1 when an object of size bytes fits a slab slot (size <= SLAB_MAX_OBJECT). */
static inline int slab_fits(size_t size) { return size > 0 && size <= SLAB_MAX_OBJECT; }

/* Zeroed, or NULL when out of memory or when s->size does not fit a slot
 * (slab_fits; logged once per slab: a program error, never client input). */
void *slab_alloc(struct slab *s);
/* The same, contents undefined: for large objects the caller fills. */
void *slab_alloc_raw(struct slab *s);
/* p from slab_alloc(s) on the same s, or NULL. */
void slab_free(struct slab *s, void *p);
/* Unmaps the spare blocks of every slab (a periodic timer calls it, next to
 * malloc_trim: after a burst the memory goes back within seconds). */
void slab_trim(void);
/* A metrics collector (metrics_set_collector): per listed slab,
 * chatd_slab_objects (live objects) and chatd_slab_mapped_bytes (blocks
 * mapped, spares included; 0 under AddressSanitizer, where slabs are
 * malloc). With these a gateway's RSS reads as connections x objects. */
struct metrics_buf;
void slab_collect(struct metrics_buf *out);

#endif
