#include "lib/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

static enum log_level log_min = LOG_LVL_INFO;
static char log_role[16] = "chatd";
static int log_gw = -1;

static const char *const log_names[] = { "debug", "info", "warn", "error" };

void log_init(enum log_level min, const char *role, int gateway_id)
{
    log_min = min;
    snprintf(log_role, sizeof log_role, "%s", role);
    log_gw = gateway_id;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, log_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

int log_enabled(enum log_level lvl) { return lvl >= log_min; }

void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    if (lvl < log_min)
        return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ level=%s role=%s gw=%d event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), log_names[lvl], log_role, log_gw, event);
    if (fmt && *fmt && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write per line so lines from concurrent processes never interleave. */
    fwrite(line, 1, (size_t)n, stderr);
}

const char *log_q(const char *s, size_t len)
{
    static char slots[8][256];
    static unsigned next;
    char *out = slots[next++ % 8];
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; s && i < len; i++) {
        if (o > sizeof slots[0] - 8) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            out[o++] = '?';
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    out[o] = 0;
    return out;
}

void log_assert_fail(const char *cond, const char *file, int line)
{
    log_event(LOG_LVL_ERROR, "assert_failed", "cond=%s file=%s line=%d", log_q(cond, strlen(cond)),
              file, line);
    abort();
}
