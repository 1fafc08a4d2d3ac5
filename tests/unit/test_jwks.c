/* Unit tests of JWKS parsing (net/jwks.h) and token verification with
 * RS256, ES256, EdDSA and HS256 under a policy (net/auth.h), the rooms
 * claim, iss/aud, and the algorithm-confusion refusals. Keys are generated
 * here with OpenSSL, so nothing secret is committed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "lib/b64.h"
#include "lib/err.h"
#include "net/auth.h"
#include "net/jwks.h"

static EVP_PKEY *rsa_key, *ec_key, *ed_key;
static char jwks_json[8192];
static int64_t now;

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

static void bn_b64(EVP_PKEY *k, const char *param, char *out)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
    unsigned char buf[1024];
    int n = BN_bn2bin(bn, buf);
    b64url(out, buf, (size_t)n);
    BN_free(bn);
}

/* The JWK members of each test key, as an identity provider publishes them. */
static void rsa_jwk(EVP_PKEY *k, const char *kid, char *out, size_t cap)
{
    char n[1400], e[16];
    bn_b64(k, OSSL_PKEY_PARAM_RSA_N, n);
    bn_b64(k, OSSL_PKEY_PARAM_RSA_E, e);
    snprintf(out, cap, "{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\"}",
             kid, n, e);
}

static void ec_xy(EVP_PKEY *k, char *x, char *y)
{
    unsigned char pub[65];
    size_t len = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pub, sizeof pub, &len), 1);
    assert_int_equal(len, 65);
    b64url(x, pub + 1, 32);
    b64url(y, pub + 33, 32);
}

static void ed_x(EVP_PKEY *k, char *x)
{
    unsigned char pub[32];
    size_t len = sizeof pub;
    assert_int_equal(EVP_PKEY_get_raw_public_key(k, pub, &len), 1);
    b64url(x, pub, len);
}

static int setup(void **state)
{
    (void)state;
    now = (int64_t)time(NULL);
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!rsa_key || !ec_key || !ed_key)
        return -1;
    char r[2000], x[64], y[64], ex[64];
    rsa_jwk(rsa_key, "r1", r, sizeof r);
    ec_xy(ec_key, x, y);
    ed_x(ed_key, ex);
    snprintf(jwks_json, sizeof jwks_json,
             "{\"keys\":[%s,"
             "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"OKP\",\"kid\":\"d1\",\"crv\":\"Ed25519\",\"x\":\"%s\",\"alg\":\"EdDSA\"},"
             /* skipped: encryption key, unsupported alg, unsupported curve, no kid */
             "{\"kty\":\"EC\",\"kid\":\"enc\",\"use\":\"enc\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"RSA\",\"kid\":\"ps\",\"alg\":\"PS256\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
             "{\"kty\":\"EC\",\"kid\":\"p384\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"},"
             "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"}]}",
             r, x, y, ex, x, y, ex);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ed_key);
    return 0;
}

/* header.payload.signature; key: EVP_PKEY (alg RS256/ES256/EdDSA) or an
 * HMAC secret (HS256), NULL for no signature. Caller frees. */
static char *sign(const char *header, const char *payload, unsigned alg, EVP_PKEY *pk, const char *hs_key,
                  size_t hs_len)
{
    char *t = malloc(16384);
    assert_non_null(t);
    size_t n = b64url(t, (const unsigned char *)header, strlen(header));
    t[n++] = '.';
    n += b64url(t + n, (const unsigned char *)payload, strlen(payload));
    size_t signed_len = n;
    t[n++] = '.';
    t[n] = 0;
    unsigned char sig[1024];
    size_t slen = sizeof sig;
    if (alg == JWKS_ALG_HS256 && hs_key) {
        unsigned m = 0;
        assert_non_null(HMAC(EVP_sha256(), hs_key, (int)hs_len, (unsigned char *)t, signed_len, sig, &m));
        slen = m;
    } else if (pk) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestSignInit(ctx, NULL, alg == JWKS_ALG_EDDSA ? NULL : EVP_sha256(), NULL, pk), 1);
        assert_int_equal(EVP_DigestSign(ctx, sig, &slen, (unsigned char *)t, signed_len), 1);
        EVP_MD_CTX_free(ctx);
        if (alg == JWKS_ALG_ES256) { /* DER -> r || s */
            const unsigned char *p = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)slen);
            assert_non_null(es);
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
            ECDSA_SIG_free(es);
            slen = 64;
        }
    } else {
        return t;
    }
    b64url(t + n, sig, slen);
    return t;
}

static char *claims(const char *extra)
{
    static char buf[8192];
    snprintf(buf, sizeof buf, "{\"sub\":\"amy\",\"exp\":%lld%s%s}", (long long)now + 600, extra ? "," : "",
             extra ? extra : "");
    return buf;
}

static jwks_t *load(void)
{
    jwks_t *k = NULL;
    int skipped = -1;
    const char *why = NULL;
    assert_int_equal(jwks_parse(jwks_json, strlen(jwks_json), &k, &skipped, &why), 0);
    assert_null(why);
    assert_int_equal(jwks_count(k), 3);
    assert_int_equal(skipped, 4);
    return k;
}

static void test_jwks_parse(void **state)
{
    (void)state;
    jwks_t *k = load();
    assert_int_equal(jwks_key_alg(k, "r1"), JWKS_ALG_RS256);
    assert_int_equal(jwks_key_alg(k, "e1"), JWKS_ALG_ES256);
    assert_int_equal(jwks_key_alg(k, "d1"), JWKS_ALG_EDDSA);
    assert_int_equal(jwks_key_alg(k, "enc"), 0);
    assert_int_equal(jwks_key_alg(k, "nope"), 0);
    jwks_free(k);
}

static void refused(const char *json, const char *want_why)
{
    jwks_t *k = (jwks_t *)1;
    const char *why = NULL;
    assert_int_equal(jwks_parse(json, strlen(json), &k, NULL, &why), -1);
    assert_null(k);
    assert_non_null(why);
    if (want_why && strcmp(why, want_why)) {
        fprintf(stderr, "json %.80s: why=%s, want %s\n", json, why, want_why);
        fail();
    }
}

static void test_jwks_refused(void **state)
{
    (void)state;
    char x[64], y[64], buf[4096];
    ec_xy(ec_key, x, y);
    refused("", NULL);
    refused("[]", NULL);
    refused("{\"keys\":{}}", NULL);
    refused("{\"keys\":[1]}", "a key is not an object");
    refused("{\"keys\":[{\"kty\":1}]}", NULL);
    /* private material, of any kind */
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\",\"d\":\"%s\"}]}", x, y, x);
    refused(buf, "private or symmetric key material in the set");
    refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"c2VjcmV0\"}]}", "private or symmetric key material in the set");
    /* duplicate kid */
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y, x, y);
    refused(buf, "two keys with the same kid");
    /* a point off the curve: y changed */
    char y2[64];
    strcpy(y2, y);
    y2[5] = y2[5] == 'A' ? 'B' : 'A';
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y2);
    refused(buf, "EC key without a valid P-256 point");
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"crv\":\"P-256\",\"x\":\"%s\"}]}", x);
    refused(buf, "EC key without a valid P-256 point");
    /* alg that does not fit the key type; HS256 on a public key */
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"alg\":\"RS256\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y);
    refused(buf, "a key's alg does not fit its kty");
    snprintf(buf, sizeof buf, "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"a\",\"alg\":\"HS256\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}", x, y);
    refused(buf, "a key's alg does not fit its kty");
    /* short RSA modulus */
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    assert_non_null(small);
    char jwk[2000];
    rsa_jwk(small, "s", jwk, sizeof jwk);
    snprintf(buf, sizeof buf, "{\"keys\":[%s]}", jwk);
    refused(buf, "RSA key shorter than 2048 bits");
    EVP_PKEY_free(small);
    refused("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"not base64!\",\"e\":\"AQAB\"}]}", "RSA key without a valid n and e");
    refused("{\"keys\":[{\"kty\":\"OKP\",\"kid\":\"a\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}]}", "OKP key without a valid Ed25519 x");
    /* too many keys */
    size_t n = (size_t)snprintf(buf, sizeof buf, "{\"keys\":[");
    for (int i = 0; i < 65; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s{\"kty\":\"x\"}", i ? "," : "");
    snprintf(buf + n, sizeof buf - n, "]}");
    refused(buf, "more than 64 keys");
}

static int verify(const struct auth_policy *p, const char *tok, struct auth_identity *id, const char **why)
{
    int rc = auth_verify_policy(p, tok, now, id, why);
    return rc;
}

static void expect_ok(const struct auth_policy *p, char *tok)
{
    struct auth_identity id;
    const char *why = NULL;
    int rc = verify(p, tok, &id, &why);
    if (rc)
        fprintf(stderr, "refused: %s\n", why);
    assert_int_equal(rc, 0);
    assert_string_equal(id.user, "amy");
    free(tok);
}

static void expect_refused(const struct auth_policy *p, char *tok, const char *want_why)
{
    struct auth_identity id;
    const char *why = NULL;
    assert_int_equal(verify(p, tok, &id, &why), ERR_UNAUTHORIZED);
    assert_non_null(why);
    if (want_why && strcmp(why, want_why)) {
        fprintf(stderr, "why=%s, want %s\n", why, want_why);
        fail();
    }
    assert_string_equal(id.user, "");
    free(tok);
}

static void test_verify_algs(void **state)
{
    (void)state;
    jwks_t *k = load();
    struct auth_policy p = { .algs = JWKS_ALG_HS256 | JWKS_ALG_ASYMMETRIC, .secret = "s3cret", .jwks = k };
    const char *c = claims(NULL);
    expect_ok(&p, sign("{\"alg\":\"RS256\",\"kid\":\"r1\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0));
    expect_ok(&p, sign("{\"alg\":\"ES256\",\"kid\":\"e1\",\"typ\":\"JWT\"}", c, JWKS_ALG_ES256, ec_key, NULL, 0));
    expect_ok(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0));
    expect_ok(&p, sign("{\"alg\":\"HS256\"}", c, JWKS_ALG_HS256, NULL, "s3cret", 6));
    /* wrong or missing kid; a kid of another key type */
    expect_refused(&p, sign("{\"alg\":\"RS256\",\"kid\":\"r2\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0), "unknown kid");
    expect_refused(&p, sign("{\"alg\":\"RS256\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0), "unknown kid");
    expect_refused(&p, sign("{\"alg\":\"ES256\",\"kid\":\"r1\"}", c, JWKS_ALG_ES256, ec_key, NULL, 0),
                   "kid is a key for another alg");
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"enc\"}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0), "unknown kid");
    /* signed by another key with the right kid */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    expect_refused(&p, sign("{\"alg\":\"ES256\",\"kid\":\"e1\"}", c, JWKS_ALG_ES256, other, NULL, 0),
                   "malformed or badly signed");
    EVP_PKEY_free(other);
    /* unknown alg, alg none, no alg, crit */
    expect_refused(&p, sign("{\"alg\":\"RS512\",\"kid\":\"r1\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0), "alg not accepted");
    expect_refused(&p, sign("{\"alg\":\"none\"}", c, 0, NULL, NULL, 0), "alg not accepted");
    expect_refused(&p, sign("{\"kid\":\"r1\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0), "alg not accepted");
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"crit\":[\"b64\"]}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "crit header");
    /* the classic confusion: HS256 MACed with the RSA public key's PEM (and
     * its DER, and the raw Ed25519 key) must be a bad signature */
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(bio, rsa_key), 1);
    char *pem;
    long pem_len = BIO_get_mem_data(bio, &pem);
    expect_refused(&p, sign("{\"alg\":\"HS256\",\"kid\":\"r1\"}", c, JWKS_ALG_HS256, NULL, pem, (size_t)pem_len),
                   "malformed or badly signed");
    BIO_free(bio);
    unsigned char raw[32];
    size_t rl = sizeof raw;
    EVP_PKEY_get_raw_public_key(ed_key, raw, &rl);
    expect_refused(&p, sign("{\"alg\":\"HS256\",\"kid\":\"d1\"}", c, JWKS_ALG_HS256, NULL, (char *)raw, rl),
                   "malformed or badly signed");
    /* the configured set decides: without HS256, even the right secret fails;
     * without RS256, a valid RS256 token fails */
    struct auth_policy asym = p;
    asym.algs = JWKS_ALG_ASYMMETRIC;
    expect_refused(&asym, sign("{\"alg\":\"HS256\"}", c, JWKS_ALG_HS256, NULL, "s3cret", 6), "alg not accepted");
    struct auth_policy no_rsa = p;
    no_rsa.algs = JWKS_ALG_HS256 | JWKS_ALG_ES256;
    expect_refused(&no_rsa, sign("{\"alg\":\"RS256\",\"kid\":\"r1\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0),
                   "alg not accepted");
    /* no JWKS at all: asymmetric tokens refused, nothing crashes */
    struct auth_policy nokeys = p;
    nokeys.jwks = NULL;
    expect_refused(&nokeys, sign("{\"alg\":\"RS256\",\"kid\":\"r1\"}", c, JWKS_ALG_RS256, rsa_key, NULL, 0), "unknown kid");
    /* a tampered payload */
    char *t = sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0);
    char *t2 = sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"x\""), 0, NULL, NULL, 0);
    char *sig = strrchr(t, '.');
    char *tampered = malloc(strlen(t2) + strlen(sig) + 1);
    strcpy(tampered, t2);
    strcpy(strrchr(tampered, '.'), sig);
    expect_refused(&p, tampered, "malformed or badly signed");
    free(t);
    free(t2);
    /* a NUL in a claim (cJSON would cut "amy\u0000x" to "amy"), escaped or raw */
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", "{\"sub\":\"amy\\u0000x\",\"exp\":9999999999}",
                            JWKS_ALG_EDDSA, ed_key, NULL, 0), NULL);
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"x\":\"\\u0000\"}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0), NULL);
    /* an escaped backslash before u0000 is text, not a NUL */
    expect_ok(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"a\\\\u0000\""), JWKS_ALG_EDDSA, ed_key, NULL, 0));
    /* duplicate names (which one counts depends on the parser), invalid UTF-8 */
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", "{\"sub\":\"amy\",\"sub\":\"bob\",\"exp\":9999999999}",
                            JWKS_ALG_EDDSA, ed_key, NULL, 0), "claims not UTF-8 or with a duplicate name");
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"kid\":\"r1\"}", c, JWKS_ALG_EDDSA, ed_key, NULL, 0), NULL);
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"\xc3\x28\""), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "claims not UTF-8 or with a duplicate name");
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"\xed\xa0\x80\""), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "claims not UTF-8 or with a duplicate name");
    expect_refused(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"\xc0\xaf\""), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "claims not UTF-8 or with a duplicate name");
    expect_ok(&p, sign("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}", claims("\"name\":\"D\xc3\xa9j\xc3\xa0 \xe2\x9c\x93 \xf0\x9f\x98\x80\""),
                       JWKS_ALG_EDDSA, ed_key, NULL, 0));
    /* expired, even when well signed */
    char exp[128];
    snprintf(exp, sizeof exp, "{\"sub\":\"amy\",\"exp\":%lld}", (long long)now - 1);
    expect_refused(&p, sign("{\"alg\":\"ES256\",\"kid\":\"e1\"}", exp, JWKS_ALG_ES256, ec_key, NULL, 0), "expired");
    jwks_free(k);
}

static void test_verify_iss_aud(void **state)
{
    (void)state;
    jwks_t *k = load();
    struct auth_policy p = { .algs = JWKS_ALG_ASYMMETRIC, .jwks = k, .issuer = "https://idp.example",
                             .audience = "chatd" };
    const char *h = "{\"alg\":\"EdDSA\",\"kid\":\"d1\"}";
    expect_ok(&p, sign(h, claims("\"iss\":\"https://idp.example\",\"aud\":\"chatd\""), JWKS_ALG_EDDSA, ed_key, NULL, 0));
    expect_ok(&p, sign(h, claims("\"iss\":\"https://idp.example\",\"aud\":[\"x\",\"chatd\"]"), JWKS_ALG_EDDSA, ed_key,
                       NULL, 0));
    expect_refused(&p, sign(h, claims("\"iss\":\"https://evil.example\",\"aud\":\"chatd\""), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "wrong iss");
    expect_refused(&p, sign(h, claims("\"aud\":\"chatd\""), JWKS_ALG_EDDSA, ed_key, NULL, 0), "wrong iss");
    expect_refused(&p, sign(h, claims("\"iss\":\"https://idp.example\",\"aud\":\"other\""), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "wrong aud");
    expect_refused(&p, sign(h, claims("\"iss\":\"https://idp.example\",\"aud\":[\"other\"]"), JWKS_ALG_EDDSA, ed_key, NULL, 0),
                   "wrong aud");
    expect_refused(&p, sign(h, claims("\"iss\":\"https://idp.example\""), JWKS_ALG_EDDSA, ed_key, NULL, 0), "wrong aud");
    /* nbf in the future */
    char extra[128];
    snprintf(extra, sizeof extra, "\"iss\":\"https://idp.example\",\"aud\":\"chatd\",\"nbf\":%lld", (long long)now + 3600);
    expect_refused(&p, sign(h, claims(extra), JWKS_ALG_EDDSA, ed_key, NULL, 0), "not yet valid (nbf)");
    jwks_free(k);
}

static void test_rooms_claim(void **state)
{
    (void)state;
    struct auth_policy p = { .algs = JWKS_ALG_HS256, .secret = "k" };
    struct auth_identity id;
    const char *why;
    const char *h = "{\"alg\":\"HS256\"}";
    char *t = sign(h, claims("\"rooms\":[\"lobby\",\"team-*\",\"dm:*\"]"), JWKS_ALG_HS256, NULL, "k", 1);
    assert_int_equal(verify(&p, t, &id, &why), 0);
    free(t);
    assert_int_equal(id.has_rooms, 1);
    assert_true(auth_rooms_allow(id.rooms, 1, "lobby"));
    assert_true(auth_rooms_allow(id.rooms, 1, "team-a"));
    assert_true(auth_rooms_allow(id.rooms, 1, "team-"));
    assert_true(auth_rooms_allow(id.rooms, 1, "dm:amy:bob"));
    assert_false(auth_rooms_allow(id.rooms, 1, "lobby2"));
    assert_false(auth_rooms_allow(id.rooms, 1, "lobb"));
    assert_false(auth_rooms_allow(id.rooms, 1, "team"));
    assert_false(auth_rooms_allow(id.rooms, 1, "other"));
    /* absent: no restriction; empty: no room */
    t = sign(h, claims(NULL), JWKS_ALG_HS256, NULL, "k", 1);
    assert_int_equal(verify(&p, t, &id, &why), 0);
    free(t);
    assert_int_equal(id.has_rooms, 0);
    assert_true(auth_rooms_allow(id.rooms, id.has_rooms, "anything"));
    t = sign(h, claims("\"rooms\":[]"), JWKS_ALG_HS256, NULL, "k", 1);
    assert_int_equal(verify(&p, t, &id, &why), 0);
    free(t);
    assert_int_equal(id.has_rooms, 1);
    assert_false(auth_rooms_allow(id.rooms, 1, "lobby"));
    t = sign(h, claims("\"rooms\":[\"*\"]"), JWKS_ALG_HS256, NULL, "k", 1);
    assert_int_equal(verify(&p, t, &id, &why), 0);
    free(t);
    assert_true(auth_rooms_allow(id.rooms, 1, "lobby"));
    /* malformed claims refuse the token */
    expect_refused(&p, sign(h, claims("\"rooms\":\"lobby\""), JWKS_ALG_HS256, NULL, "k", 1), "rooms claim is not an array");
    expect_refused(&p, sign(h, claims("\"rooms\":[1]"), JWKS_ALG_HS256, NULL, "k", 1), "rooms claim has an invalid pattern");
    expect_refused(&p, sign(h, claims("\"rooms\":[\"a\\nb\"]"), JWKS_ALG_HS256, NULL, "k", 1),
                   "rooms claim has an invalid pattern");
    expect_refused(&p, sign(h, claims("\"rooms\":[\"a*b\"]"), JWKS_ALG_HS256, NULL, "k", 1),
                   "rooms claim has an invalid pattern");
    expect_refused(&p, sign(h, claims("\"rooms\":[\"\"]"), JWKS_ALG_HS256, NULL, "k", 1), "rooms claim has an invalid pattern");
    char big[5000];
    size_t n = (size_t)snprintf(big, sizeof big, "\"rooms\":[");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s\"room-%04d\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "]");
    expect_refused(&p, sign(h, claims(big), JWKS_ALG_HS256, NULL, "k", 1), "rooms claim too long");
}

static void test_b64url(void **state)
{
    (void)state;
    unsigned char out[16];
    assert_int_equal(b64url_decode("", 0, out), 0);
    assert_int_equal(b64url_decode("YQ", 2, out), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(b64url_decode("YWI", 3, out), 2);
    assert_int_equal(b64url_decode("YR", 2, out), -1);   /* non-zero leftover bits */
    assert_int_equal(b64url_decode("YQ==", 4, out), -1); /* padding */
    assert_int_equal(b64url_decode("Y+/A", 4, out), -1); /* base64, not base64url */
    assert_int_equal(b64url_decode("YWJjZ", 5, out), -1);
    unsigned algs = 0;
    assert_int_equal(jwks_algs_parse("HS256, RS256,EdDSA", &algs), 0);
    assert_int_equal(algs, JWKS_ALG_HS256 | JWKS_ALG_RS256 | JWKS_ALG_EDDSA);
    assert_int_equal(jwks_algs_parse("HS256,none", &algs), -1);
    assert_int_equal(jwks_algs_parse("", &algs), -1);
    assert_int_equal(jwks_algs_parse("eddsa", &algs), -1);
}

static int conf_try(struct conf *c, int argc, char **argv)
{
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    int rc = conf_load(c, argc, argv);
    fclose(stderr);
    stderr = saved;
    return rc;
}

/* --jwt-algs decides; its default follows --jwks-file and the secret. */
static void test_conf_jwt_flags(void **state)
{
    (void)state;
    struct conf c;
    unsetenv("CHATD_JWT_SECRET");
    char *only_jwks[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwks-file=/x.json" };
    assert_int_equal(conf_try(&c, 4, only_jwks), 0);
    assert_int_equal(c.jwt_algs, JWKS_ALG_ASYMMETRIC); /* no secret: no HS256 */
    char *none[] = { "chatd", "--role=gateway", "--kafka=h:1" };
    assert_int_equal(conf_try(&c, 3, none), -1); /* neither a secret nor keys */
    char *hs_no_secret[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwks-file=/x.json", "--jwt-algs=HS256,EdDSA" };
    assert_int_equal(conf_try(&c, 5, hs_no_secret), -1);
    setenv("CHATD_JWT_SECRET", "s", 1);
    assert_int_equal(conf_try(&c, 3, none), 0);
    assert_int_equal(c.jwt_algs, JWKS_ALG_HS256);
    assert_int_equal(conf_try(&c, 4, only_jwks), 0);
    assert_int_equal(c.jwt_algs, JWKS_ALG_ASYMMETRIC | JWKS_ALG_HS256);
    char *ed[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwks-file=/x.json", "--jwt-algs=EdDSA",
                   "--jwt-issuer=https://i", "--jwt-audience=a" };
    assert_int_equal(conf_try(&c, 7, ed), 0);
    assert_int_equal(c.jwt_algs, JWKS_ALG_EDDSA);
    assert_string_equal(c.jwt_issuer, "https://i");
    assert_string_equal(c.jwt_audience, "a");
    char *rs_no_file[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwt-algs=HS256,RS256" };
    assert_int_equal(conf_try(&c, 4, rs_no_file), -1);
    char *bogus[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwt-algs=HS256,none" };
    assert_int_equal(conf_try(&c, 4, bogus), -1);
    char *empty[] = { "chatd", "--role=gateway", "--kafka=h:1", "--jwt-algs=," };
    assert_int_equal(conf_try(&c, 4, empty), -1);
    unsetenv("CHATD_JWT_SECRET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),        cmocka_unit_test(test_jwks_parse),
        cmocka_unit_test(test_jwks_refused),  cmocka_unit_test(test_verify_algs),
        cmocka_unit_test(test_verify_iss_aud), cmocka_unit_test(test_rooms_claim),
        cmocka_unit_test(test_conf_jwt_flags),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
