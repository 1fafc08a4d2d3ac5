/* err: chatd's error codes. 0 is success, every error is a negative int.
 *
 * One table gives each code its protocol name (the `code` of an error reply
 * in PROTOCOL.md) and a human message. Internal codes map to the protocol
 * code a client should see: a timeout or a lost backend is "unavailable".
 */
#ifndef CHATD_ERR_H
#define CHATD_ERR_H

enum chatd_err {
    ERR_OK = 0,
    ERR_BAD_REQUEST = -1,  /* malformed input from a peer */
    ERR_NOT_MEMBER = -2,
    ERR_TOO_LARGE = -3,
    ERR_RATE_LIMITED = -4,
    ERR_FORBIDDEN = -5,
    ERR_UNAVAILABLE = -6,  /* a backend is down or refused the work: retry */
    ERR_INTERNAL = -7,
    ERR_NOMEM = -8,
    ERR_TIMEOUT = -9,      /* a backend call passed its deadline */
    ERR_NOT_FOUND = -10,
    ERR_UNAUTHORIZED = -11,
    ERR_CANCELLED = -12,   /* the request was cancelled (shutdown, peer gone) */
    ERR_IN_DOUBT = -13,    /* sent, then no answer: the backend may have done it */
    ERR_LAST = -14
};

/* Protocol code: "bad_request", "not_member", ..., "unavailable", "internal". */
const char *err_code(int err);
/* Human-readable message for logs and error replies. */
const char *err_str(int err);

#endif
