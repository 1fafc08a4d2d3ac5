#include "net/auth.h"

#include <cJSON.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/b64.h"
#include "lib/err.h"

/* proto.h's PROTO_ROOM_MAX, without the dependency (fuzz_auth links auth.c alone). */
#define PROTO_ROOM_MAX_AUTH 128

int auth_user_valid(const char *s, size_t len)
{
    if (len < 1 || len > AUTH_USER_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static const char auth_why_signature[] = "malformed or badly signed";

/* A JSON number claim (exp, nbf): an integer or a float, as JWT libraries
 * write either. */
static int auth_num_claim(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0 && v->valuedouble < 1e13))
        return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int auth_pattern_valid(const char *s, size_t len)
{
    if (len > 0 && s[len - 1] == '*')
        len--; /* "team-*"; "*" alone = any room */
    if (len > PROTO_ROOM_MAX_AUTH)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return len > 0 || s[0] == '*';
}

/* The rooms claim, packed into id->rooms as "p1\np2\n". */
static const char *auth_rooms_claim(const cJSON *v, struct auth_identity *id)
{
    if (!v)
        return NULL;
    if (!cJSON_IsArray(v))
        return "rooms claim is not an array";
    size_t at = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e) || !auth_pattern_valid(e->valuestring, strlen(e->valuestring)))
            return "rooms claim has an invalid pattern";
        size_t n = strlen(e->valuestring);
        if (at + n + 2 > sizeof id->rooms)
            return "rooms claim too long";
        memcpy(id->rooms + at, e->valuestring, n);
        at += n;
        id->rooms[at++] = '\n';
    }
    id->rooms[at] = 0;
    id->has_rooms = 1;
    return NULL;
}

int auth_rooms_allow(const char *rooms, int has_rooms, const char *room)
{
    if (!has_rooms)
        return 1;
    size_t rl = strlen(room);
    for (const char *p = rooms; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > 0 && p[n - 1] == '*' ? rl >= n - 1 && !memcmp(p, room, n - 1)
                                     : n == rl && !memcmp(p, room, n))
            return 1;
        p += n + (p[n] == '\n');
    }
    return 0;
}

static int auth_aud_match(const cJSON *aud, const char *want)
{
    if (cJSON_IsString(aud))
        return !strcmp(aud->valuestring, want);
    const cJSON *e;
    if (cJSON_IsArray(aud))
        cJSON_ArrayForEach(e, aud) if (cJSON_IsString(e) && !strcmp(e->valuestring, want)) return 1;
    return 0;
}

/* The claims, once the signature held. Returns the reason of a refusal. */
static const char *auth_check_claims(const struct auth_policy *p, const cJSON *c, int64_t now_s,
                                     struct auth_identity *id)
{
    int64_t nbf;
    if (!cJSON_IsObject(c))
        return "payload is not a JSON object";
    if (auth_num_claim(cJSON_GetObjectItemCaseSensitive(c, "exp"), &id->exp) < 0)
        return "no numeric exp";
    if (id->exp <= now_s)
        return "expired";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "nbf");
    if (v && (auth_num_claim(v, &nbf) < 0 || nbf > now_s + 60))
        return "not yet valid (nbf)";
    v = cJSON_GetObjectItemCaseSensitive(c, "sub");
    if (!cJSON_IsString(v) || !auth_user_valid(v->valuestring, strlen(v->valuestring)))
        return "bad sub";
    if (!strcmp(v->valuestring, AUTH_SYSTEM_USER))
        return "sub is reserved (the server API's system sender)";
    strcpy(id->user, v->valuestring);
    v = cJSON_GetObjectItemCaseSensitive(c, "name");
    if (cJSON_IsString(v))
        snprintf(id->name, sizeof id->name, "%s", v->valuestring);
    v = cJSON_GetObjectItemCaseSensitive(c, "iss");
    if (p->issuer && p->issuer[0] && (!cJSON_IsString(v) || strcmp(v->valuestring, p->issuer)))
        return "wrong iss";
    if (p->audience && p->audience[0] &&
        !auth_aud_match(cJSON_GetObjectItemCaseSensitive(c, "aud"), p->audience))
        return "wrong aud";
    return auth_rooms_claim(cJSON_GetObjectItemCaseSensitive(c, "rooms"), id);
}

static int auth_hs256_ok(const char *secret, const char *msg, size_t len, const unsigned char *sig,
                         size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mlen = 0;
    if (!secret || !secret[0] || siglen != 32)
        return 0;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)msg, len, mac, &mlen))
        return 0;
    return mlen == 32 && CRYPTO_memcmp(mac, sig, 32) == 0;
}

/* 1 if the JSON text holds a NUL, raw or as \u0000: cJSON would cut the
 * string there, so "ali\u0000ce" would become the user "ali" (jansson, under
 * libjwt, refused such tokens; so does chatd). */
static int auth_json_has_nul(const unsigned char *s, size_t n)
{
    if (memchr(s, 0, n))
        return 1;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4))
            return 1;
        i++; /* the escaped character: "\\" does not start an escape */
    }
    return 0;
}

/* 1 if s[0..n) is UTF-8 (RFC 3629: shortest forms, no surrogates, at most
 * U+10FFFF), as jansson required under libjwt: a `name` in any other
 * encoding would reach PostgreSQL and the logs. */
static int auth_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 4;
        if (k == 4 || i + k >= n)
            return 0;
        unsigned cp = k == 0 ? c : k == 1 ? c & 0x1f : k == 2 ? c & 0x0f : c & 0x07;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* 1 if two members of object o share a name: cJSON would use the first,
 * other parsers the last; a token means one thing or is refused. */
static int auth_dup_keys(const cJSON *o)
{
    for (const cJSON *a = o ? o->child : NULL; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && !strcmp(a->string, b->string))
                return 1;
    return 0;
}

/* Decodes part s[0..n) of a token into a fresh buffer (caller frees). */
static unsigned char *auth_part(const char *s, size_t n, long *len)
{
    unsigned char *b = malloc(n / 4 * 3 + 4);
    if (b && (*len = b64url_decode(s, n, b)) < 0) {
        free(b);
        return NULL;
    }
    return b;
}

int auth_verify_policy(const struct auth_policy *p, const char *token, int64_t now_s,
                       struct auth_identity *id, const char **why)
{
    memset(id, 0, sizeof *id);
    *why = "missing token";
    if (!token || !*token)
        return ERR_UNAUTHORIZED;
    *why = auth_why_signature;
    size_t tlen = strnlen(token, AUTH_TOKEN_MAX + 1);
    const char *d1 = memchr(token, '.', tlen);
    const char *d2 = d1 ? memchr(d1 + 1, '.', tlen - (size_t)(d1 + 1 - token)) : NULL;
    if (tlen > AUTH_TOKEN_MAX || !d1 || !d2 || memchr(d2 + 1, '.', tlen - (size_t)(d2 + 1 - token)))
        return ERR_UNAUTHORIZED;
    long hl = 0, pl = 0, sl = 0;
    unsigned char *hb = auth_part(token, (size_t)(d1 - token), &hl);
    unsigned char *pb = auth_part(d1 + 1, (size_t)(d2 - d1 - 1), &pl);
    unsigned char *sb = auth_part(d2 + 1, tlen - (size_t)(d2 + 1 - token), &sl);
    cJSON *h = hb && pb && !auth_json_has_nul(hb, (size_t)hl) && !auth_json_has_nul(pb, (size_t)pl)
                   ? cJSON_ParseWithLength((const char *)hb, (size_t)hl)
                   : NULL;
    cJSON *c = NULL;
    int rc = ERR_UNAUTHORIZED;
    if (!cJSON_IsObject(h) || !pb || !sb)
        goto out;
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(h, "alg");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(h, "kid");
    unsigned a = cJSON_IsString(alg) ? jwks_alg_from_name(alg->valuestring, strlen(alg->valuestring)) : 0;
    if (!a || !(a & p->algs)) {
        *why = "alg not accepted";
        goto out;
    }
    if (cJSON_GetObjectItemCaseSensitive(h, "crit")) {
        *why = "crit header";
        goto out;
    }
    size_t signed_len = (size_t)(d2 - token);
    if (a == JWKS_ALG_HS256) {
        /* The secret only, whatever kid says: never key material of the
         * JWKS (the RS256 -> HS256 confusion). */
        if (!auth_hs256_ok(p->secret, token, signed_len, sb, (size_t)sl) &&
            !auth_hs256_ok(p->previous, token, signed_len, sb, (size_t)sl))
            goto out;
    } else {
        if (!cJSON_IsString(kid) || !jwks_key_alg(p->jwks, kid->valuestring)) {
            *why = "unknown kid";
            goto out;
        }
        if (jwks_key_alg(p->jwks, kid->valuestring) != a) {
            *why = "kid is a key for another alg";
            goto out;
        }
        if (!jwks_verify(p->jwks, kid->valuestring, a, (const unsigned char *)token, signed_len, sb,
                         (size_t)sl))
            goto out;
    }
    c = cJSON_ParseWithLength((const char *)pb, (size_t)pl);
    if (!auth_utf8_valid(pb, (size_t)pl) || auth_dup_keys(c) || auth_dup_keys(h)) {
        *why = "claims not UTF-8 or with a duplicate name";
        goto out;
    }
    *why = auth_check_claims(p, c, now_s, id);
    if (*why) {
        memset(id, 0, sizeof *id);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(h);
    cJSON_Delete(c);
    free(hb);
    free(pb);
    free(sb);
    return rc;
}

int auth_verify(const char *secret, const char *token, int64_t now_s, struct auth_identity *id,
                const char **why)
{
    struct auth_policy p = { .algs = JWKS_ALG_HS256, .secret = secret };
    return auth_verify_policy(&p, token, now_s, id, why);
}

int auth_verify_rotating(const char *secret, const char *previous, const char *token, int64_t now_s,
                         struct auth_identity *id, const char **why)
{
    struct auth_policy p = { .algs = JWKS_ALG_HS256, .secret = secret, .previous = previous };
    return auth_verify_policy(&p, token, now_s, id, why);
}

char *auth_issue(const char *secret, const char *user, int64_t now_s, int64_t ttl_s)
{
    jwt_t *jwt = NULL;
    char *tok = NULL;
    if (jwt_new(&jwt) != 0)
        return NULL;
    if (jwt_add_grant(jwt, "sub", user) == 0 && jwt_add_grant_int(jwt, "iat", (long)now_s) == 0 &&
        jwt_add_grant_int(jwt, "exp", (long)(now_s + ttl_s)) == 0 &&
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) == 0)
        tok = jwt_encode_str(jwt);
    jwt_free(jwt);
    return tok;
}
