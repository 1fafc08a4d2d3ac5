/* b64: unpadded base64url (RFC 4648 section 5), as JWS and JWK use it. */
#ifndef CHATD_B64_H
#define CHATD_B64_H

#include <stddef.h>

/* Decodes s[0..n) into out (at least n * 3 / 4 + 1 bytes). Padding, '+',
 * '/', whitespace and a dangling single character are refused: a token or
 * key has exactly one spelling. Returns the decoded length, or -1. */
long b64url_decode(const char *s, size_t n, unsigned char *out);

#endif
