/* log: one line per event on stderr, logfmt style, for a container platform.
 *
 *   ts=2026-11-26T01:02:03.456Z level=info role=gateway gw=3 event=conn_open peer=10.0.0.7 user=alice
 *
 * The process-wide fields (role, gateway id) are set once by log_init. Every
 * call names an event (a short snake_case word) and adds key=value context
 * through a printf format. Values that may hold spaces or quotes must be
 * passed through log_q() so one event stays one parseable line.
 * Single-threaded by design: call from the loop thread (librdkafka's log
 * callback is routed to the loop, see kafka/).
 */
#ifndef CHATD_LOG_H
#define CHATD_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(enum log_level min, const char *role, int gateway_id);
/* Returns 0 and sets *out, or -1 if s is not debug|info|warn|error. */
int log_level_parse(const char *s, enum log_level *out);
int log_enabled(enum log_level lvl);

void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quotes a value for logfmt into a small rotating static buffer (8 slots of
 * 256 bytes, truncated with "..."): valid until 8 more calls. */
const char *log_q(const char *s, size_t len);

#define log_debug(ev, ...) do { if (log_enabled(LOG_LVL_DEBUG)) log_event(LOG_LVL_DEBUG, ev, __VA_ARGS__); } while (0)
#define log_info(ev, ...)  log_event(LOG_LVL_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_event(LOG_LVL_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_LVL_ERROR, ev, __VA_ARGS__)

/* Assertions stay on in production: a broken invariant logs once and aborts. */
#define CHATD_ASSERT(cond) \
    do { if (!(cond)) log_assert_fail(#cond, __FILE__, __LINE__); } while (0)
void log_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

#endif
