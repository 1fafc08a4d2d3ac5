/* ledger: one word per message, shared by every worker process.
 *
 * Why shared: a room may be spread over several workers (conf_client_proc),
 * so a message is acknowledged in its sender's process and delivered in
 * others. The parent maps the ledger (MAP_SHARED, anonymous) before it forks,
 * every worker updates it with atomic operations, and the parent judges each
 * message from it once every worker has exited: acknowledged, delivered to
 * every member of its room, and to none twice (the same message under two
 * seqs counts twice: extra).
 *
 * Word of sender s's message n (cid "<salt>.<n>", n >= 1): deliveries counted
 * (low 16 bits, saturating) and flags. The parent owns the mapping
 * (ledger_create / ledger_destroy); workers inherit it.
 */
#ifndef BENCH_LEDGER_H
#define BENCH_LEDGER_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct stats;

#define LEDGER_COUNT 0xffffu
#define LEDGER_ACKED 0x10000u
#define LEDGER_INWIN 0x20000u
#define LEDGER_DROPPED 0x40000u

struct ledger {
    uint64_t delivered_win;           /* all workers: deliveries of window messages */
    uint64_t expected;                /* all workers: acked window messages x members */
    uint64_t inflight;                /* all workers: messages made, not yet acked or dropped */
    uint64_t sending;                 /* workers whose window has not ended (the parent sets it) */
    uint64_t per_sender;              /* words per sender; cids 1..per_sender-1 */
    uint64_t nsenders;
    size_t bytes;                     /* of the mapping */
    uint32_t info[];
};

/* Words for every message nsenders can make in `seconds` at `rate` msgs/s
 * altogether; NULL (errno set) when the mapping fails or would be absurd. */
struct ledger *ledger_create(int nsenders, double rate, double seconds);
void ledger_destroy(struct ledger *l);
/* Sender s's word of message n, or NULL when n is beyond the ledger. */
uint32_t *ledger_word(struct ledger *l, int s, uint64_t n);
/* A delivery of sender s's message n (any process). */
void ledger_count(struct ledger *l, int s, uint64_t n);
void ledger_flag(struct ledger *l, int s, uint64_t n, uint32_t flag);
/* Adds to st what one word says about a window message of a room of
 * `members`: for an acked one, members that never got it (missing) and
 * deliveries beyond one per member (extra). */
void ledger_judge(uint32_t word, int members, struct stats *st);
/* ledger_judge over every message of every sender. */
void ledger_account(const struct ledger *l, const struct conf *c, struct stats *st);

#endif
