/* ws_parser: RFC 6455 client-frame parser, a pure byte engine (no socket).
 *
 * Hand-written rather than libwslay's event API because memory per idle
 * connection is the gateway's scaling limit: a wslay_event_context embeds a
 * fixed ~4 KiB input buffer, so every connection cost ~8.6 KiB before
 * anything else. Here the state is a few dozen bytes and the bytes are
 * parsed where they were read (the loop-wide read buffer): a frame that
 * arrives whole is unmasked in place and handed out without a copy. Only a
 * message split across reads (or fragmented) is copied into a per-parser
 * heap buffer, grown as its bytes arrive (never to the length the peer
 * claims) and freed as soon as the message is delivered, so an idle
 * connection holds no heap memory here.
 *
 * Enforced (each violation returns the close code to send):
 *   1002  unmasked client frame, RSV bits set (no extension is negotiated),
 *         unknown opcode, control frame fragmented or over 125 bytes,
 *         continuation without a message in progress, a new data message
 *         before the previous one finished, 64-bit length with the top bit
 *         set, close payload of 1 byte or with a code a peer may not send
 *   1007  text message or close reason that is not UTF-8
 *   1009  message (all fragments together) over max_msg; found from the
 *         frame header, before any payload is buffered
 *   1011  out of memory
 * Binary messages are delivered (the caller decides; chatd closes 1003).
 */
#ifndef CHATD_WS_PARSER_H
#define CHATD_WS_PARSER_H

#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xa,
};

/* A complete data message (text already UTF-8 checked) or a complete control
 * frame (a close payload already checked). data is valid during the call and
 * may be modified; it is NULL-free ("" when len is 0). A non-zero return
 * stops ws_parser_feed, which returns it. */
typedef int (*ws_parser_cb)(void *user, int opcode, uint8_t *data, size_t len);

/* Zero-initialise, then set max_msg. Fields are private. */
typedef struct ws_parser {
    uint8_t *msg;        /* partial payload (heap) while one spans reads */
    uint32_t msg_len, msg_cap;
    uint32_t max_msg;
    uint32_t need;       /* payload bytes of the current frame still to come */
    uint32_t flen;       /* payload length of the current frame */
    uint8_t hdr[14];     /* header bytes gathered so far */
    uint8_t hdr_len;
    uint8_t opcode;      /* current frame's; 0 between frames */
    uint8_t fin;
    uint8_t msg_op;      /* TEXT/BINARY of a fragmented message in progress, else 0 */
    uint8_t in_payload;  /* header done, payload (need bytes) next */
    uint8_t ctl_len;     /* bytes of a control payload in ctl */
    uint8_t *ctl;        /* control payload split across reads (125 B, heap) */
} ws_parser_t;

/* Parses data[0..len), unmasking it in place. Returns 0 when every byte was
 * taken, a close code (1002, 1007, 1009, 1011) when the peer broke the
 * protocol (feed no more), or the callback's non-zero return. */
int ws_parser_feed(ws_parser_t *p, uint8_t *data, size_t len, ws_parser_cb cb, void *user);

/* Frees the partial-message buffers; p may be fed again afterwards. */
void ws_parser_free(ws_parser_t *p);

/* 1 if s[0..len) is valid UTF-8 (RFC 3629: no overlongs, no surrogates). */
int ws_utf8_valid(const unsigned char *s, size_t len);

#endif
