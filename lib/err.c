#include "lib/err.h"

static const struct {
    const char *code;
    const char *msg;
} err_table[] = {
    [0] = { "ok", "success" },
    [1] = { "bad_request", "malformed request" },
    [2] = { "not_member", "not a member of this room" },
    [3] = { "too_large", "too large" },
    [4] = { "rate_limited", "too many requests, slow down" },
    [5] = { "forbidden", "not allowed" },
    [6] = { "unavailable", "a backend is unavailable, try again" },
    [7] = { "internal", "internal error" },
    [8] = { "unavailable", "out of memory, try again" },
    [9] = { "unavailable", "a backend timed out, try again" },
    [10] = { "not_found", "not found" },
    [11] = { "unauthorized", "missing or invalid token" },
    [12] = { "unavailable", "request cancelled" },
    [13] = { "unavailable", "no answer from a backend that may have done it, try again" },
};

static int err_index(int err)
{
    if (err > 0 || err <= ERR_LAST)
        return 7;
    return -err;
}

const char *err_code(int err) { return err_table[err_index(err)].code; }
const char *err_str(int err) { return err_table[err_index(err)].msg; }
