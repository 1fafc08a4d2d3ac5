/* jwks: public keys of an identity provider, from a JWK Set (RFC 7517), and
 * JWS signature checks with them (OpenSSL 3 EVP).
 *
 * Supported keys, each usable with exactly one algorithm:
 *   kty RSA, n and e (2048..8192 bits)     -> RS256
 *   kty EC,  crv P-256, x and y            -> ES256
 *   kty OKP, crv Ed25519, x                -> EdDSA
 * A key whose `use` is not "sig", whose `alg` is another algorithm than the
 * above (RS384, PS256, ...), or whose kty/crv is not supported is skipped
 * (counted), so a provider's full set loads. A key without `kid` is skipped:
 * tokens choose their key by kid. A supported key that is malformed (bad
 * base64url, point not on the curve, short RSA modulus, `alg` that does not
 * fit its kty), a duplicate kid, or private key material (`d`, `p`, ...)
 * refuses the whole set: a set is used as it is written or not at all.
 * Pure functions, no I/O; key material is never logged.
 */
#ifndef CHATD_JWKS_H
#define CHATD_JWKS_H

#include <stddef.h>

/* JWS algorithms chatd knows, as bits (a configured set is a mask). */
enum jwks_alg {
    JWKS_ALG_HS256 = 1,
    JWKS_ALG_RS256 = 2,
    JWKS_ALG_ES256 = 4,
    JWKS_ALG_EDDSA = 8,
};
#define JWKS_ALG_ASYMMETRIC (JWKS_ALG_RS256 | JWKS_ALG_ES256 | JWKS_ALG_EDDSA)

#define JWKS_KID_MAX 128
#define JWKS_KEYS_MAX 64

typedef struct jwks jwks_t;

/* The bit of the algorithm named s[0..n) ("RS256", ...), 0 if unknown. */
unsigned jwks_alg_from_name(const char *s, size_t n);
const char *jwks_alg_name(unsigned alg);
/* Parses a comma-separated list ("HS256,RS256") into a mask; -1 on an
 * unknown name or an empty list. */
int jwks_algs_parse(const char *list, unsigned *mask);

/* Parses json[0..len). Returns 0 and *out (caller frees with jwks_free), or
 * -1 with *why a short static reason. *skipped (may be NULL): keys left out. */
int jwks_parse(const char *json, size_t len, jwks_t **out, int *skipped, const char **why);
void jwks_free(jwks_t *k);
size_t jwks_count(const jwks_t *k);
/* The algorithm bit of the key named kid, 0 if none. */
unsigned jwks_key_alg(const jwks_t *k, const char *kid);
/* 1 if sig[0..siglen) is a valid signature of msg[0..len) by the key named
 * kid with alg (which must be that key's algorithm), else 0. */
int jwks_verify(const jwks_t *k, const char *kid, unsigned alg, const unsigned char *msg, size_t len,
                const unsigned char *sig, size_t siglen);

#endif
