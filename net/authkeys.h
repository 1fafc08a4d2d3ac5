/* authkeys: the process's token policy, from the configuration (accepted
 * algorithms, the HS256 secrets, iss and aud) and the JWKS file.
 *
 * The file is read at start (a missing or invalid file then stops the
 * process) and again when it changes (stat polled every second, so an
 * editor's or a Kubernetes ConfigMap's rename over it counts) and on
 * SIGHUP. A reload that fails (unreadable, invalid JSON, a malformed key)
 * is logged and keeps the keys in use: rotating keys never locks everybody
 * out, and open connections are never touched (a token is checked once, at
 * the upgrade; its exp still closes the connection). Key material is never
 * logged, only counts. Process-wide, like the metrics: one gateway per
 * process.
 */
#ifndef CHATD_AUTHKEYS_H
#define CHATD_AUTHKEYS_H

#include <stdint.h>
#include <uv.h>

#include "conf/conf.h"
#include "net/auth.h"

/* 0, or -1 (logged) if --jwks-file is set and cannot be loaded. */
int authkeys_start(uv_loop_t *loop, const struct conf *c);
/* Reads the JWKS file again now. 0 if the new keys are in use. */
int authkeys_reload(void);
/* auth_verify_policy with the current policy and keys. */
int authkeys_verify(const char *token, int64_t now_s, struct auth_identity *id, const char **why);
void authkeys_stop(void);

#endif
