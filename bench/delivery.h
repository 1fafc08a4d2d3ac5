/* delivery: the fields chatbench reads from a delivered message (room, seq,
 * from, cid, text), taken straight from the frame.
 *
 * Why: deliveries are nearly every frame chatbench receives (room size x
 * sends), and building a cJSON tree for each (a malloc per key and value,
 * strcmp per lookup) was a visible share of the box's CPU in rooms of 10.
 * The scanner reads one flat JSON object and points into the frame; anything
 * it does not take as plainly as cJSON would (an escape in a field it
 * returns, nesting, a duplicate field, a seq that is not a small integer,
 * bad syntax) makes it say no, and the caller parses the frame with cJSON as
 * before. So both paths give the same answer for every frame.
 */
#ifndef BENCH_DELIVERY_H
#define BENCH_DELIVERY_H

#include <stddef.h>
#include <stdint.h>

struct cJSON;

struct delivery_str {
    const char *p;                      /* NULL: absent or not a string; not NUL-terminated */
    size_t n;
};

struct delivery {
    struct delivery_str room, from, cid, text;
    uint64_t seq;                       /* 0: absent, not a number or negative */
};

/* chatd: 1 when p[0..n) is {"op":"msg",...} and d is filled, else 0. */
int delivery_scan_chatd(const char *p, size_t n, struct delivery *d);
/* Socket.IO: the same for an event packet 42["msg",{...}] (whole packet). */
int delivery_scan_sio(const char *p, size_t n, struct delivery *d);
/* d from a msg object cJSON parsed (a history page, or a frame the scanners
 * refused); d points into m. */
void delivery_from_json(const struct cJSON *m, struct delivery *d);
/* The decimal number at the start of p[0..n) (0 if none), like strtoull
 * without a sign: saturates at UINT64_MAX. */
uint64_t delivery_u64(const char *p, size_t n);
/* 1 when s is exactly the n bytes at p. */
int delivery_str_eq(struct delivery_str s, const char *p, size_t n);

#endif
