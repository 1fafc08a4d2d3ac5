/* fuzz_jwks: jwks_parse (net/jwks.h), the JWK Set parser, and token checks
 * against whatever it loads.
 *
 * Every input is used twice:
 *   raw:        the input is the JWKS file;
 *   structured: the input's bytes become the key material (EC x and y,
 *               Ed25519 x, RSA n) of a well-formed set, so the key import
 *               and the curve checks behind the JSON are reached.
 * Invariants: a parse succeeds with why NULL and at most 64 keys, or fails
 * with why set and no set; every loaded key has a single algorithm; a token
 * whose signature is not a real one is refused with every loaded kid.
 */
#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "net/auth.h"
#include "net/jwks.h"

#define FUZZ_NOW 1700000000

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_jwks: invariant failed at line %d: %s\n", line, what);
    abort();
}

static size_t b64url(char *out, const unsigned char *in, size_t n)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[len] = 0;
    return (size_t)len;
}

/* A token for kid/alg with a signature of siglen 'A' bytes (never valid). */
static void check_refused(const jwks_t *k, const char *kid, const char *alg, size_t siglen)
{
    char header[256], payload[] = "{\"sub\":\"amy\",\"exp\":1800000000}", tok[2048];
    unsigned char sig[600];
    memset(sig, 'A', siglen);
    snprintf(header, sizeof header, "{\"alg\":\"%s\",\"kid\":\"%s\"}", alg, kid);
    size_t n = b64url(tok, (unsigned char *)header, strlen(header));
    tok[n++] = '.';
    n += b64url(tok + n, (unsigned char *)payload, strlen(payload));
    tok[n++] = '.';
    b64url(tok + n, sig, siglen);
    struct auth_policy p = { .algs = JWKS_ALG_HS256 | JWKS_ALG_ASYMMETRIC, .secret = "s", .jwks = k };
    struct auth_identity id;
    const char *why = NULL;
    CHECK(auth_verify_policy(&p, tok, FUZZ_NOW, &id, &why) == ERR_UNAUTHORIZED && why != NULL);
}

static void parse(const char *json, size_t len)
{
    jwks_t *k = (jwks_t *)&k;
    int skipped = -1;
    const char *why = "unset";
    int rc = jwks_parse(json, len, &k, &skipped, &why);
    CHECK(rc == 0 || rc == -1);
    if (rc) {
        CHECK(k == NULL && why != NULL);
        return;
    }
    CHECK(why == NULL && k != NULL && jwks_count(k) <= JWKS_KEYS_MAX && skipped >= 0);
    /* kids come from the input: try the short, printable ones by name */
    static const char *const kids[] = { "a", "b", "r1", "e1", "d1", "k" };
    static const char *const algs[] = { "RS256", "ES256", "EdDSA", "HS256" };
    for (size_t i = 0; i < sizeof kids / sizeof kids[0]; i++) {
        unsigned a = jwks_key_alg(k, kids[i]);
        CHECK(a == 0 || a == JWKS_ALG_RS256 || a == JWKS_ALG_ES256 || a == JWKS_ALG_EDDSA);
        if (!a)
            continue;
        for (size_t j = 0; j < sizeof algs / sizeof algs[0]; j++) {
            check_refused(k, kids[i], algs[j], 64);
            check_refused(k, kids[i], algs[j], 256);
        }
    }
    jwks_free(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse((const char *)data, size);

    if (size < 64)
        return 0;
    char x[64], y[64], ed[64], *n = malloc(4 * (size / 3 + 2)), *json = malloc(4 * (size / 3 + 2) + 512);
    CHECK(n && json);
    b64url(x, data, 32);
    b64url(y, data + 32, 32);
    b64url(ed, data + 16, 32);
    b64url(n, data, size);
    int len = snprintf(json, 4 * (size / 3 + 2) + 512,
                       "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
                       "{\"kty\":\"OKP\",\"kid\":\"b\",\"crv\":\"Ed25519\",\"x\":\"%s\"},"
                       "{\"kty\":\"RSA\",\"kid\":\"r1\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
                       x, y, ed, n);
    parse(json, (size_t)len);
    free(n);
    free(json);
    return 0;
}
