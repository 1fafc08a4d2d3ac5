#include "roles/ownership.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/jbuf.h"
#include "lib/log.h"
#include "store/db.h"
#include "store/pg.h"

#define OWNERSHIP_MAGIC 0x0e1ea5e5u
/* Between checks: a beat is sent when due, the lease is checked at each. */
#define OWNERSHIP_TICK_MS 20
/* A member waiting for a partition to be released, or giving one back,
 * beats this often, for at most OWNERSHIP_HURRY_MS: a handoff then costs
 * tens of milliseconds, not a beat. */
#define OWNERSHIP_HURRY_BEAT_MS 20
#define OWNERSHIP_HURRY_MS 2000

struct ownership {
    unsigned magic;
    uv_loop_t *loop;
    const struct conf *conf;
    kafka_consumer_t *consumer;
    pg_client_t *pg;
    ownership_busy_cb busy;
    void *ud;
    char member[160];
    uint64_t member_hash;
    uv_timer_t tick;
    int inflight, ready, draining, leaving, left, lapsed;
    uint64_t sent_ms;             /* of the beat in flight */
    uint64_t renewed_ms;          /* send time of the last beat answered: lease held until + LEASE */
    uint64_t next_ms;             /* next beat due */
    uint64_t hurry_since_ms;      /* 0: not hurrying */
    char members[512];            /* the live set last logged */
};

static uint64_t own_now_ms(const ownership_t *o) { return uv_now(o->loop); }

/* 64-bit FNV-1a then a splitmix64 finaliser: every member computes the
 * same weights from the same names, on any platform. */
static uint64_t own_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t own_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static uint64_t own_weight(uint64_t member_hash, int32_t p)
{
    return own_mix(member_hash ^ own_mix((uint64_t)p + 0x9e3779b97f4a7c15ULL));
}

/* One other live member, from a beat's answer. */
struct own_peer {
    const char *name;             /* in the PGresult */
    uint64_t hash;
    const char *held;             /* "{1,2}" */
    int draining;
};

static int own_held_has(const char *held, int32_t p)
{
    const char *s = held;
    while (*s) {
        if (*s >= '0' && *s <= '9') {
            char *end;
            long v = strtol(s, &end, 10);
            if (v == p)
                return 1;
            s = end;
        } else {
            s++;
        }
    }
    return 0;
}

static void own_beat(ownership_t *o);

static void own_on_left(int err, PGresult *res, void *ud)
{
    ownership_t *o = ud;
    (void)res;
    o->left = 1;
    if (err)
        log_warn("ownership_leave_failed", "member=%s err=%s note=\"the lease expires by itself\"",
                 o->member, err_code(err));
    else
        log_info("ownership_left", "member=%s", o->member);
}

/* A candidate owner: a live member that does not drain. */
struct own_cand {
    const char *name;
    uint64_t hash;
    int count;                    /* partitions given it so far */
};

/* The desired owner of partition p: the candidate of highest weight for p
 * that has fewer than cap partitions (rendezvous hashing with bounded
 * load: sticky, and no member gets more than its share when the hash is
 * unlucky). Every member computes it from the same set, in the same
 * partition order, so all agree. NULL if there is no candidate. */
static const char *own_desired(struct own_cand *cs, size_t n, int cap, int32_t p)
{
    struct own_cand *best = NULL;
    uint64_t bw = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t w = own_weight(cs[i].hash, p);
        if (cs[i].count >= cap)
            continue;
        if (!best || w > bw || (w == bw && strcmp(cs[i].name, best->name) > 0)) {
            best = &cs[i];
            bw = w;
        }
    }
    if (!best)
        return NULL;
    best->count++;
    return best->name;
}

/* Gives back what another should own, takes what this member should own
 * once no live member lists it (released, or its lease expired). */
static void own_apply(ownership_t *o, const struct own_peer *peers, size_t n, const int64_t *next,
                      int parts)
{
    struct own_cand *cs = calloc(n + 1, sizeof *cs);
    CHATD_ASSERT(cs != NULL);
    size_t nc = 0;
    if (!o->draining)
        cs[nc++] = (struct own_cand){ o->member, o->member_hash, 0 };
    for (size_t i = 0; i < n; i++)
        if (!peers[i].draining)
            cs[nc++] = (struct own_cand){ peers[i].name, peers[i].hash, 0 };
    int cap = nc ? (int)((parts + (int)nc - 1) / (int)nc) : 0;
    int hurry = 0;
    for (int32_t p = 0; p < parts; p++) {
        const char *want = own_desired(cs, nc, cap, p);
        int mine = want == o->member;
        int owned = kafka_consumer_owns(o->consumer, p);
        int held_by_other = 0;
        for (size_t i = 0; i < n && !held_by_other; i++)
            held_by_other = own_held_has(peers[i].held, p);
        if (o->draining)
            continue;
        if (mine && !owned) {
            if (held_by_other)
                hurry = 1;
            else
                kafka_consumer_assign(o->consumer, p, next[p]);
        } else if (!mine && owned) {
            kafka_consumer_release(o->consumer, p);
            hurry = 1;
        }
    }
    free(cs);
    uint64_t now = own_now_ms(o);
    if (!hurry)
        o->hurry_since_ms = 0;
    else if (!o->hurry_since_ms)
        o->hurry_since_ms = now;
    int fast = o->hurry_since_ms && now - o->hurry_since_ms < OWNERSHIP_HURRY_MS;
    o->next_ms = o->sent_ms + (fast ? OWNERSHIP_HURRY_BEAT_MS : OWNERSHIP_BEAT_MS);
}

static void own_log_members(ownership_t *o, const struct own_peer *peers, size_t n)
{
    char list[sizeof o->members];
    size_t off = 0;
    list[0] = 0;
    for (size_t i = 0; i < n && off + 2 < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s%s", i ? "," : "",
                                peers[i].name, peers[i].draining ? "(draining)" : "");
    if (off >= sizeof list)
        off = sizeof list - 1;
    if (strcmp(list, o->members) == 0)
        return;
    memcpy(o->members, list, off + 1);
    log_info("ownership_members", "member=%s others=%s", o->member, list[0] ? list : "-");
}

static void own_on_beat(int err, PGresult *res, void *ud)
{
    ownership_t *o = ud;
    CHATD_ASSERT(o->magic == OWNERSHIP_MAGIC);
    o->inflight = 0;
    if (o->leaving)
        return;
    if (err) {
        if (o->ready && !o->lapsed)
            log_warn("ownership_beat_failed", "member=%s err=%s", o->member, err_code(err));
        o->next_ms = o->sent_ms + OWNERSHIP_BEAT_MS;
        return;
    }
    /* Renewed at the server's now(), which came after sent_ms: the lease
     * lasts at least until sent_ms + LEASE. A gap between two renewals
     * longer than the lease means it may have lapsed in between. */
    if (o->renewed_ms && o->sent_ms > o->renewed_ms + OWNERSHIP_LEASE_MS && !o->lapsed) {
        log_warn("ownership_lease_lapsed", "member=%s since_ms=%" PRIu64, o->member,
                 o->sent_ms - o->renewed_ms);
        kafka_consumer_release_lost(o->consumer);
    }
    /* A near miss: the lease held, but more than half of it went by before
     * this renewal was known (a starved loop or a slow PostgreSQL; the
     * saturation run reports the worst). */
    uint64_t now = own_now_ms(o);
    if (o->renewed_ms && now > o->renewed_ms + OWNERSHIP_LEASE_MS / 2 &&
        now <= o->renewed_ms + OWNERSHIP_LEASE_MS)
        log_warn("ownership_beat_slow", "member=%s since_ms=%" PRIu64 " rtt_ms=%" PRIu64,
                 o->member, now - o->renewed_ms, now - o->sent_ms);
    o->renewed_ms = o->sent_ms;
    o->lapsed = 0;
    int parts = kafka_consumer_partitions(o->consumer);
    if (parts == 0) { /* the topic's metadata is not there yet */
        o->next_ms = o->sent_ms + OWNERSHIP_HURRY_BEAT_MS;
        return;
    }
    int rows = PQntuples(res);
    struct own_peer *peers = calloc((size_t)rows + 1, sizeof *peers);
    int64_t *next = malloc(((size_t)parts + 1) * sizeof *next);
    CHATD_ASSERT(peers != NULL && next != NULL);
    for (int p = 0; p < parts; p++)
        next[p] = -1;
    size_t n = 0;
    for (int i = 0; i < rows; i++) {
        if (!PQgetisnull(res, i, 0)) {
            peers[n].name = PQgetvalue(res, i, 0);
            peers[n].hash = own_hash(peers[n].name);
            peers[n].held = PQgetvalue(res, i, 1);
            peers[n].draining = PQgetvalue(res, i, 2)[0] == 't';
            n++;
        } else if (!PQgetisnull(res, i, 3) && !PQgetisnull(res, i, 4)) {
            long p = strtol(PQgetvalue(res, i, 3), NULL, 10);
            if (p >= 0 && p < parts)
                next[p] = strtoll(PQgetvalue(res, i, 4), NULL, 10);
        }
    }
    own_log_members(o, peers, n);
    own_apply(o, peers, n, next, parts);
    if (!o->ready) {
        o->ready = 1;
        kafka_consumer_assign(o->consumer, -1, -1); /* joined, possibly with nothing */
    }
    free(peers);
    free(next);
}

static void own_beat(ownership_t *o)
{
    struct jbuf jh;
    jbuf_init(&jh, 64);
    for (int32_t p = 0; p < kafka_consumer_partitions(o->consumer); p++)
        if (kafka_consumer_owns(o->consumer, p))
            db_array_int(&jh, p);
    char *held = db_array_end(&jh);
    o->inflight = 1;
    o->sent_ms = own_now_ms(o);
    db_lease_beat(o->pg, o->conf->topic_send, o->member, held, o->draining, OWNERSHIP_LEASE_MS,
                  own_on_beat, o);
    free(held);
}

static void own_on_tick(uv_timer_t *t)
{
    ownership_t *o = t->data;
    CHATD_ASSERT(o->magic == OWNERSHIP_MAGIC);
    uint64_t now = own_now_ms(o);
    if (o->leaving)
        return;
    if (o->renewed_ms && now > o->renewed_ms + OWNERSHIP_LEASE_MS && !o->lapsed) {
        o->lapsed = 1; /* another member may hold our partitions now */
        log_warn("ownership_lease_lapsed", "member=%s since_ms=%" PRIu64, o->member,
                 now - o->renewed_ms);
        kafka_consumer_release_lost(o->consumer);
    }
    if (o->draining && !o->busy(o->ud) && !o->inflight) {
        o->leaving = 1;
        db_lease_leave(o->pg, o->conf->topic_send, o->member, own_on_left, o);
        return;
    }
    /* No row before the topic's partition count is known: the others
     * would give this member partitions it could not take yet. */
    if (!o->inflight && now >= o->next_ms && pg_client_ready(o->pg) &&
        kafka_consumer_partitions(o->consumer) > 0)
        own_beat(o);
}

int ownership_init(ownership_t **out, uv_loop_t *loop, const struct conf *conf,
                   kafka_consumer_t *consumer, const char *member, ownership_busy_cb busy,
                   void *ud)
{
    ownership_t *o = calloc(1, sizeof *o);
    if (!o)
        return ERR_NOMEM;
    int rc = pg_client_init(&o->pg, loop, conf->pg, (unsigned)conf->backend_timeout_ms);
    if (rc) {
        free(o);
        return rc;
    }
    o->magic = OWNERSHIP_MAGIC;
    o->loop = loop;
    o->conf = conf;
    o->consumer = consumer;
    o->busy = busy;
    o->ud = ud;
    snprintf(o->member, sizeof o->member, "%s", member);
    o->member_hash = own_hash(o->member);
    uv_timer_init(loop, &o->tick);
    o->tick.data = o;
    uv_timer_start(&o->tick, own_on_tick, 0, OWNERSHIP_TICK_MS);
    log_info("ownership_started", "member=%s lease_ms=%d beat_ms=%d", o->member,
             OWNERSHIP_LEASE_MS, OWNERSHIP_BEAT_MS);
    *out = o;
    return 0;
}

int ownership_ready(const ownership_t *o) { return o->ready; }

void ownership_drain(ownership_t *o)
{
    o->draining = 1;
    o->next_ms = 0; /* tell the others now: they stop waiting for a beat */
}

int ownership_leaving(const ownership_t *o) { return o->draining && !o->left; }

void ownership_close(ownership_t *o)
{
    if (!o)
        return;
    CHATD_ASSERT(o->magic == OWNERSHIP_MAGIC);
    o->leaving = 1;
    pg_client_close(o->pg);
    uv_close((uv_handle_t *)&o->tick, NULL);
}

void ownership_free(ownership_t *o)
{
    if (!o)
        return;
    o->magic = 0;
    free(o);
}
