/* fuzz_auth: auth_verify and auth_verify_rotating (net/auth.h), the
 * JWT/claims check.
 *
 * Every input is used twice:
 *   raw:        the input is the token (bearer string as a client sends it);
 *   structured: the input is the JSON payload of a token built here,
 *               header.payload.signature, so the claim checks behind the
 *               signature are reached. It is signed three ways: HS256 with
 *               the right secret (may pass), HS256 with a wrong secret and
 *               alg "none" with no signature (both must be refused).
 * Whatever passes must carry a valid user id and an exp in the future.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "net/auth.h"

#define FUZZ_SECRET "fuzz-secret-0123456789abcdef"
#define FUZZ_NOW 1700000000

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_auth: invariant failed at line %d: %s\n", line, what);
    abort();
}

/* Unpadded base64url of in[0..n) into out (4 * ceil(n / 3) + 1 bytes). */
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

static int verify(const char *token, struct auth_identity *id)
{
    const char *why = NULL;
    int rc = auth_verify(FUZZ_SECRET, token, FUZZ_NOW, id, &why);
    CHECK(rc == 0 || rc == ERR_UNAUTHORIZED);
    CHECK(rc == 0 ? why == NULL : why != NULL);
    if (rc == 0) {
        CHECK(auth_user_valid(id->user, strlen(id->user)));
        CHECK(id->exp > FUZZ_NOW);
        CHECK(strlen(id->name) <= AUTH_NAME_MAX);
        /* the rooms claim, packed: patterns each ended by a newline */
        size_t rl = strlen(id->rooms);
        CHECK(id->has_rooms || rl == 0);
        CHECK(rl == 0 || id->rooms[rl - 1] == '\n');
        CHECK(auth_rooms_allow(id->rooms, id->has_rooms, "lobby") == 0 ||
              auth_rooms_allow(id->rooms, id->has_rooms, "lobby") == 1);
    }
    return rc;
}

/* header.payload.signature; key NULL: no signature (alg none). */
static char *make_token(const char *header, const uint8_t *payload, size_t plen, const char *key)
{
    size_t hlen = strlen(header);
    size_t cap = 4 * ((hlen + plen) / 3 + 2) + 2 * 4 * (EVP_MAX_MD_SIZE / 3 + 2) + 8;
    char *t = malloc(cap);
    CHECK(t != NULL);
    size_t n = b64url(t, (const unsigned char *)header, hlen);
    t[n++] = '.';
    n += b64url(t + n, payload, plen);
    size_t signed_len = n;
    t[n++] = '.';
    t[n] = 0;
    if (key) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned mlen = 0;
        CHECK(HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)t, signed_len, mac,
                   &mlen) != NULL);
        b64url(t + n, mac, mlen);
    }
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct auth_identity id;

    /* raw */
    char *tok = malloc(size + 1);
    CHECK(tok != NULL);
    memcpy(tok, data, size);
    tok[size] = 0;
    verify(tok, &id);
    free(tok);

    /* structured */
    tok = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", data, size, FUZZ_SECRET);
    int rc = verify(tok, &id);
    /* Rotation: the same token under (wrong current, right previous) gives
     * the same answer; under two wrong secrets it is refused. */
    struct auth_identity id2;
    const char *why = NULL;
    CHECK(auth_verify_rotating("not-the-secret", FUZZ_SECRET, tok, FUZZ_NOW, &id2, &why) == rc);
    CHECK(rc != 0 || !strcmp(id.user, id2.user));
    CHECK(auth_verify_rotating("not-the-secret", "nor-this", tok, FUZZ_NOW, &id2, &why) == ERR_UNAUTHORIZED);
    free(tok);
    tok = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", data, size, "not-the-secret");
    CHECK(verify(tok, &id) == ERR_UNAUTHORIZED);
    free(tok);
    tok = make_token("{\"alg\":\"none\"}", data, size, NULL);
    CHECK(verify(tok, &id) == ERR_UNAUTHORIZED);
    free(tok);
    return 0;
}
