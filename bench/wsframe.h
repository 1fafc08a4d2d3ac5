/* wsframe: the client side of RFC 6455 framing, as chatbench needs it.
 *
 * Why not libwslay, which chatbench used before: chatbench shares a 2-core
 * box with the server it measures, so its CPU per delivered frame is taken
 * from the figures. A profile of rooms of 10 (4000 clients, 8000 msgs/s) had
 * wslay_event_recv + wslay_frame_recv at 3% of all samples plus malloc and
 * memcpy in libc: wslay copies every byte out of the read buffer into its own,
 * then each message into a malloc'ed one. Server frames are unmasked, so a
 * frame that is whole in the read buffer is handed over in place here; only
 * a frame split across reads, or a fragmented message, is copied, into
 * buffers kept per connection. chatd's net/ws_parser is the server side
 * (it requires masked frames and checks UTF-8 on every message), so it does
 * not serve here.
 *
 * Like wslay it owns no socket: bytes in, one callback per message or control
 * frame out; the caller writes what it must answer (pong, close). Text is not
 * checked for UTF-8: chatbench counts and times deliveries, chatd's own tests
 * check what it sends.
 */
#ifndef BENCH_WSFRAME_H
#define BENCH_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

enum {
    WSFRAME_CONT = 0x0, WSFRAME_TEXT = 0x1, WSFRAME_BINARY = 0x2,
    WSFRAME_CLOSE = 0x8, WSFRAME_PING = 0x9, WSFRAME_PONG = 0xa
};

#define WSFRAME_MAX_HEADER 14           /* 2 + 8 (length) + 4 (mask) */

/* Errors (negative): the connection must be dropped. */
#define WSFRAME_EPROTO (-1)             /* masked or RSV bits, unknown opcode, bad control frame,
                                           continuation out of place */
#define WSFRAME_ETOOBIG (-2)            /* message longer than max_msg */
#define WSFRAME_ENOMEM (-3)

struct wsframe_reader {
    size_t max_msg;
    uint8_t *buf;                       /* the start of a frame split across reads */
    size_t len, cap;
    uint8_t *msg;                       /* a fragmented message so far */
    size_t msg_len, msg_cap;
    int msg_op;                         /* its opcode; 0 when none is open */
    int done;                           /* close frame seen or the callback said stop */
};

/* One reassembled text or binary message, or one ping, pong or close frame
 * (p, n: its payload, valid only during the call). Returns 0 to go on,
 * nonzero to stop reading for good (the connection is going away). */
typedef int (*wsframe_cb)(void *user, int opcode, const uint8_t *p, size_t n);

void wsframe_reader_init(struct wsframe_reader *r, size_t max_msg);
/* Frees the buffers; r may be initialised again afterwards. */
void wsframe_reader_free(struct wsframe_reader *r);
/* Reads every whole frame of what earlier calls kept followed by p[0..n),
 * calling cb in order; keeps an incomplete tail for the next call (p itself
 * is not kept). Returns 0, 1 once a close frame was delivered or cb asked to
 * stop (later calls then read nothing), or a WSFRAME_E* code. */
int wsframe_reader_feed(struct wsframe_reader *r, const uint8_t *p, size_t n, wsframe_cb cb,
                        void *user);

/* Writes one masked client frame (FIN set) of payload p[0..n) to out, which
 * has room for n + WSFRAME_MAX_HEADER bytes; returns the bytes written. */
size_t wsframe_encode(uint8_t *out, int opcode, const uint8_t *p, size_t n, uint32_t mask);

#endif
