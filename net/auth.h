/* auth: client identity from JWTs (JWS compact form).
 *
 * A token is accepted only if its header's alg is one the policy accepts
 * (the configuration decides, never the token), its signature checks with
 * the key that alg and kid select, it has a numeric `exp` in the future (and
 * `nbf`, if present, not more than a minute ahead), and a `sub` that is a
 * valid user id (1..64 of A-Za-z0-9_.-). `name` is optional.
 *
 * Keys: HS256 uses only the shared secret (and the previous one during a
 * rotation); RS256, ES256 and EdDSA use only the JWKS key named by the
 * header's `kid`, and only if that key is for that alg (net/jwks.h). So an
 * HS256 token MACed with a public key's bytes is just a bad signature, and a
 * token cannot pick a key of another type. `crit` headers are refused.
 *
 * Optional claims checked when configured: `iss` equal to the issuer, `aud`
 * (a string or an array) containing the audience. `rooms`, if present, is
 * an array of room patterns the user may join: "lobby" or "team-*" (a
 * trailing * matches any rest); absent = no restriction. Signature checks
 * and claims parsing use OpenSSL and cJSON directly: libjwt 1.10 (Debian
 * 12) has no EdDSA and chooses the algorithm from the token. Pure
 * functions: no I/O.
 */
#ifndef CHATD_AUTH_H
#define CHATD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "net/jwks.h"

#define AUTH_USER_MAX 64
#define AUTH_NAME_MAX 128
#define AUTH_ROOMS_MAX 2048          /* the rooms claim, packed (see rooms) */
#define AUTH_TOKEN_MAX 16384

struct auth_identity {
    char user[AUTH_USER_MAX + 1];
    char name[AUTH_NAME_MAX + 1];   /* "" when absent */
    int64_t exp;
    int has_rooms;                  /* 1: the token restricts joins to rooms */
    char rooms[AUTH_ROOMS_MAX];     /* patterns, each followed by '\n' */
};

/* What a deployment accepts. Strings may be NULL or "" (not set). */
struct auth_policy {
    unsigned algs;                  /* JWKS_ALG_* mask */
    const char *secret, *previous;  /* HS256 */
    const jwks_t *jwks;             /* RS256, ES256, EdDSA */
    const char *issuer, *audience;
};

/* Returns 0 and fills id, or ERR_UNAUTHORIZED with *why set to a short
 * static reason ("expired", "alg not accepted", ...) for the log. */
int auth_verify_policy(const struct auth_policy *p, const char *token, int64_t now_s,
                       struct auth_identity *id, const char **why);
/* 1 if the identity may join room (no rooms claim, or a pattern matches). */
int auth_rooms_allow(const char *rooms, int has_rooms, const char *room);

/* auth_verify_policy with HS256 and secret only. */
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
/* The server API's sender (docs/API.md): no token may name it as its sub
 * (refused like a bad sub), so no client speaks, edits or deletes as it. */
#define AUTH_SYSTEM_USER "system"
/* 1 if s is a valid user id. */
int auth_user_valid(const char *s, size_t len);

#endif
