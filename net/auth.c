#include "net/auth.h"

#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"

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

/* exp may be written as an integer or a float; libjwt's int getter would
 * refuse the latter, so read the raw JSON value. */
static int auth_get_exp(jwt_t *jwt, int64_t *exp)
{
    char *raw = jwt_get_grants_json(jwt, "exp");
    if (!raw)
        return -1;
    char *end;
    double d = strtod(raw, &end);
    int ok = end != raw && *end == 0 && d > 0 && d < 1e13;
    free(raw);
    if (!ok)
        return -1;
    *exp = (int64_t)d;
    return 0;
}

static const char auth_why_signature[] = "malformed or badly signed";

int auth_verify(const char *secret, const char *token, int64_t now_s, struct auth_identity *id,
                const char **why)
{
    jwt_t *jwt = NULL;
    memset(id, 0, sizeof *id);
    *why = "missing token";
    if (!token || !*token)
        return ERR_UNAUTHORIZED;
    *why = auth_why_signature;
    if (jwt_decode(&jwt, token, (const unsigned char *)secret, (int)strlen(secret)) != 0 || !jwt)
        return ERR_UNAUTHORIZED;
    int rc = ERR_UNAUTHORIZED;
    const char *sub, *name;
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        *why = "not HS256";
        goto out;
    }
    if (auth_get_exp(jwt, &id->exp) < 0) {
        *why = "no numeric exp";
        goto out;
    }
    if (id->exp <= now_s) {
        *why = "expired";
        goto out;
    }
    sub = jwt_get_grant(jwt, "sub");
    if (!sub || !auth_user_valid(sub, strlen(sub))) {
        *why = "bad sub";
        goto out;
    }
    strcpy(id->user, sub);
    name = jwt_get_grant(jwt, "name");
    if (name)
        snprintf(id->name, sizeof id->name, "%s", name);
    rc = 0;
    *why = NULL;
out:
    jwt_free(jwt);
    return rc;
}

int auth_verify_rotating(const char *secret, const char *previous, const char *token, int64_t now_s,
                         struct auth_identity *id, const char **why)
{
    int rc = auth_verify(secret, token, now_s, id, why);
    /* Only a signature failure is worth a second try: an expired or
     * malformed token fails the same way with any key. */
    if (rc && *why == auth_why_signature && previous && previous[0])
        rc = auth_verify(previous, token, now_s, id, why);
    return rc;
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
