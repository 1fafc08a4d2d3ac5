#include "net/jwks.h"

#include <cJSON.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <stdlib.h>
#include <string.h>

#include "lib/b64.h"

struct jwks_key {
    char kid[JWKS_KID_MAX + 1];
    unsigned alg;
    EVP_PKEY *pkey;
};

struct jwks {
    size_t n;
    struct jwks_key keys[];
};

static const struct {
    const char *name;
    unsigned bit;
} jwks_algs[] = {
    { "HS256", JWKS_ALG_HS256 },
    { "RS256", JWKS_ALG_RS256 },
    { "ES256", JWKS_ALG_ES256 },
    { "EdDSA", JWKS_ALG_EDDSA },
};

unsigned jwks_alg_from_name(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof jwks_algs / sizeof jwks_algs[0]; i++)
        if (strlen(jwks_algs[i].name) == n && !memcmp(jwks_algs[i].name, s, n))
            return jwks_algs[i].bit;
    return 0;
}

const char *jwks_alg_name(unsigned alg)
{
    for (size_t i = 0; i < sizeof jwks_algs / sizeof jwks_algs[0]; i++)
        if (jwks_algs[i].bit == alg)
            return jwks_algs[i].name;
    return "?";
}

int jwks_algs_parse(const char *list, unsigned *mask)
{
    unsigned m = 0;
    for (const char *p = list; *p;) {
        p += strspn(p, " ,");
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t > 0 && p[t - 1] == ' ')
            t--;
        if (t) {
            unsigned bit = jwks_alg_from_name(p, t);
            if (!bit)
                return -1;
            m |= bit;
        }
        p += n;
    }
    if (!m)
        return -1;
    *mask = m;
    return 0;
}

/* The base64url member name of o, decoded into out (cap bytes). Returns the
 * length, -1 if absent, -2 if malformed or longer than cap. */
static long jwks_member_bytes(const cJSON *o, const char *name, unsigned char *out, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v)
        return -1;
    if (!cJSON_IsString(v))
        return -2;
    size_t n = strlen(v->valuestring);
    if (n == 0 || n / 4 * 3 + 3 > cap)
        return -2;
    long len = b64url_decode(v->valuestring, n, out);
    return len <= 0 ? -2 : len;
}

static EVP_PKEY *jwks_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    if (!pkey)
        return NULL;
    /* fromdata takes a public point as given; make sure it is on the curve
     * (an invalid point is the classic ECDSA key-substitution trap). */
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    int ok = ctx && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return pkey;
}

static EVP_PKEY *jwks_rsa(const cJSON *o, const char **why)
{
    unsigned char n[1025], e[16];
    long nl = jwks_member_bytes(o, "n", n, sizeof n), el = jwks_member_bytes(o, "e", e, sizeof e);
    *why = "RSA key without a valid n and e";
    if (nl < 0 || el < 0)
        return NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bn && be && BN_num_bits(bn) >= 2048 && BN_num_bits(bn) <= 8192 && BN_is_odd(be) &&
        BN_num_bits(be) >= 2 && BN_num_bits(be) <= 64 && bld &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pkey = jwks_fromdata("RSA", bld);
    else if (bn && BN_num_bits(bn) < 2048)
        *why = "RSA key shorter than 2048 bits";
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

static EVP_PKEY *jwks_ec(const cJSON *o, const char **why)
{
    unsigned char x[40], y[40], pub[65];
    long xl = jwks_member_bytes(o, "x", x, sizeof x), yl = jwks_member_bytes(o, "y", y, sizeof y);
    *why = "EC key without a valid P-256 point";
    if (xl != 32 || yl != 32)
        return NULL;
    pub[0] = 4; /* uncompressed */
    memcpy(pub + 1, x, 32);
    memcpy(pub + 33, y, 32);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub))
        pkey = jwks_fromdata("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

static EVP_PKEY *jwks_okp(const cJSON *o, const char **why)
{
    unsigned char x[40];
    *why = "OKP key without a valid Ed25519 x";
    if (jwks_member_bytes(o, "x", x, sizeof x) != 32)
        return NULL;
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
}

static const char *const jwks_private_members[] = { "d", "p", "q", "dp", "dq", "qi", "oth", "k" };

/* One key: 1 loaded into *key, 0 skipped, -1 refused (*why). */
static int jwks_parse_key(const cJSON *o, struct jwks_key *key, const char **why)
{
    *why = "a key is not an object";
    if (!cJSON_IsObject(o))
        return -1;
    for (size_t i = 0; i < sizeof jwks_private_members / sizeof jwks_private_members[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(o, jwks_private_members[i])) {
            *why = "private or symmetric key material in the set";
            return -1;
        }
    const cJSON *kty = cJSON_GetObjectItemCaseSensitive(o, "kty");
    const cJSON *crv = cJSON_GetObjectItemCaseSensitive(o, "crv");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(o, "kid");
    const cJSON *use = cJSON_GetObjectItemCaseSensitive(o, "use");
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(o, "alg");
    *why = "kty, crv, kid, use and alg must be strings";
    if (!cJSON_IsString(kty) || (crv && !cJSON_IsString(crv)) || (kid && !cJSON_IsString(kid)) ||
        (use && !cJSON_IsString(use)) || (alg && !cJSON_IsString(alg)))
        return -1;
    if (!kid || (use && strcmp(use->valuestring, "sig")))
        return 0;
    unsigned want;
    if (!strcmp(kty->valuestring, "RSA"))
        want = JWKS_ALG_RS256;
    else if (!strcmp(kty->valuestring, "EC") && crv && !strcmp(crv->valuestring, "P-256"))
        want = JWKS_ALG_ES256;
    else if (!strcmp(kty->valuestring, "OKP") && crv && !strcmp(crv->valuestring, "Ed25519"))
        want = JWKS_ALG_EDDSA;
    else
        return 0;
    if (alg) {
        unsigned a = jwks_alg_from_name(alg->valuestring, strlen(alg->valuestring));
        if (a == JWKS_ALG_HS256 || (a && a != want)) {
            *why = "a key's alg does not fit its kty";
            return -1;
        }
        if (!a)
            return 0; /* RS384, PS256, ES256K...: not for us */
    }
    size_t kl = strlen(kid->valuestring);
    *why = "kid empty or longer than 128 bytes";
    if (kl == 0 || kl > JWKS_KID_MAX)
        return -1;
    EVP_PKEY *pkey = want == JWKS_ALG_RS256   ? jwks_rsa(o, why)
                     : want == JWKS_ALG_ES256 ? jwks_ec(o, why)
                                              : jwks_okp(o, why);
    if (!pkey)
        return -1;
    memcpy(key->kid, kid->valuestring, kl + 1);
    key->alg = want;
    key->pkey = pkey;
    return 1;
}

int jwks_parse(const char *json, size_t len, jwks_t **out, int *skipped, const char **why)
{
    *out = NULL;
    if (skipped)
        *skipped = 0;
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(root, "keys");
    *why = "not a JSON object with a \"keys\" array";
    if (!cJSON_IsObject(root) || !cJSON_IsArray(keys)) {
        cJSON_Delete(root);
        return -1;
    }
    int n = cJSON_GetArraySize(keys);
    *why = "more than 64 keys";
    if (n > JWKS_KEYS_MAX) {
        cJSON_Delete(root);
        return -1;
    }
    jwks_t *k = calloc(1, sizeof *k + (size_t)n * sizeof k->keys[0]);
    *why = "out of memory";
    if (!k) {
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *o;
    int rc = 0;
    cJSON_ArrayForEach(o, keys) {
        struct jwks_key *key = &k->keys[k->n];
        int r = jwks_parse_key(o, key, why);
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r == 0) {
            if (skipped)
                (*skipped)++;
            continue;
        }
        k->n++;
        for (size_t i = 0; i + 1 < k->n; i++)
            if (!strcmp(k->keys[i].kid, key->kid)) {
                *why = "two keys with the same kid";
                rc = -1;
            }
        if (rc)
            break;
    }
    cJSON_Delete(root);
    if (rc) {
        jwks_free(k);
        return -1;
    }
    *why = NULL;
    *out = k;
    return 0;
}

void jwks_free(jwks_t *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++)
        EVP_PKEY_free(k->keys[i].pkey);
    free(k);
}

size_t jwks_count(const jwks_t *k) { return k ? k->n : 0; }

static const struct jwks_key *jwks_find(const jwks_t *k, const char *kid)
{
    for (size_t i = 0; k && kid && i < k->n; i++)
        if (!strcmp(k->keys[i].kid, kid))
            return &k->keys[i];
    return NULL;
}

unsigned jwks_key_alg(const jwks_t *k, const char *kid)
{
    const struct jwks_key *key = jwks_find(k, kid);
    return key ? key->alg : 0;
}

/* JWS ES256 signatures are r || s (32 bytes each); OpenSSL wants DER. */
static int jwks_es256_der(const unsigned char *sig, unsigned char **der)
{
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *ss = BN_bin2bn(sig + 32, 32, NULL);
    int len = -1;
    if (s && r && ss && ECDSA_SIG_set0(s, r, ss) == 1) {
        r = ss = NULL; /* owned by s */
        len = i2d_ECDSA_SIG(s, der);
    }
    BN_free(r);
    BN_free(ss);
    ECDSA_SIG_free(s);
    return len;
}

int jwks_verify(const jwks_t *k, const char *kid, unsigned alg, const unsigned char *msg, size_t len,
                const unsigned char *sig, size_t siglen)
{
    const struct jwks_key *key = jwks_find(k, kid);
    if (!key || key->alg != alg)
        return 0;
    unsigned char *der = NULL;
    const EVP_MD *md = EVP_sha256();
    if (alg == JWKS_ALG_RS256) {
        if (siglen != (size_t)EVP_PKEY_get_size(key->pkey))
            return 0;
    } else if (alg == JWKS_ALG_ES256) {
        if (siglen != 64)
            return 0;
        int dl = jwks_es256_der(sig, &der);
        if (dl <= 0)
            return 0;
        sig = der;
        siglen = (size_t)dl;
    } else if (alg == JWKS_ALG_EDDSA) {
        if (siglen != 64)
            return 0;
        md = NULL; /* Ed25519 hashes itself */
    } else {
        return 0;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, key->pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return ok;
}
