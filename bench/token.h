/* token: the JWTs benchmark clients authenticate with. */
#ifndef BENCH_TOKEN_H
#define BENCH_TOKEN_H

#include <stddef.h>
#include <sys/socket.h>

/* HS256 JWT {"sub":user,"exp":now+ttl_s} signed with secret, written
 * NUL-terminated to out. Returns its length, or -1 if cap is too small or
 * OpenSSL fails. */
int token_sign(const char *secret, const char *user, long ttl_s, char *out, size_t cap);

/* Asks a gateway started with --dev-tokens: POST /api/dev/token. Blocking
 * (used before the loop runs), 5 s timeout. Returns a malloc'd token the
 * caller frees, or NULL. */
char *token_fetch(const struct sockaddr *gw, socklen_t len, const char *host, const char *user);

#endif
