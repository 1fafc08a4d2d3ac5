/* hex: the value of one hexadecimal digit, for the percent-decoders of
 * request URLs (net/http.c) and Redis URLs (store/redis.c). */
#ifndef CHATD_HEX_H
#define CHATD_HEX_H

/* 0..15 for [0-9a-fA-F], else -1. */
int hex_digit(char c);

#endif
