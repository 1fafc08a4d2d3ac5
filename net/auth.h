/* auth: client identity from HS256 JWTs (libjwt).
 *
 * A token is accepted only if it is HS256, signed with the configured secret,
 * has a numeric `exp` in the future, and a `sub` that is a valid user id
 * (1..64 of A-Za-z0-9_.-). `name` is optional. Pure functions: no I/O.
 */
#ifndef CHATD_AUTH_H
#define CHATD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_USER_MAX 64
#define AUTH_NAME_MAX 128

struct auth_identity {
    char user[AUTH_USER_MAX + 1];
    char name[AUTH_NAME_MAX + 1];   /* "" when absent */
    int64_t exp;
};

/* Returns 0 and fills id, or ERR_UNAUTHORIZED with *why set to a short
 * static reason ("expired", "bad signature", ...) for the log. */
int auth_verify(const char *secret, const char *token, int64_t now_s, struct auth_identity *id,
                const char **why);
/* auth_verify with secret, then, if the signature did not match and
 * previous is non-empty, with previous (secret rotation: tokens signed with
 * the previous secret stay valid until they expire). */
int auth_verify_rotating(const char *secret, const char *previous, const char *token, int64_t now_s,
                         struct auth_identity *id, const char **why);
/* Issues a token for user valid ttl_s seconds. Returns a malloc'd string
 * (caller frees) or NULL. */
char *auth_issue(const char *secret, const char *user, int64_t now_s, int64_t ttl_s);
/* 1 if s is a valid user id. */
int auth_user_valid(const char *s, size_t len);

#endif
