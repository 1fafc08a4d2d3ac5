/* apireq: the server API's request parsing (roles/api.h), as pure
 * functions so the fuzzer reaches them: the path into percent-decoded
 * segments, the body into a JSON object, string members checked.
 *
 * Strict on purpose: a body is one JSON object of at most
 * APIREQ_MEMBERS_MAX members, each key once (cJSON reads a repeated key as
 * its first, other parsers, say a proxy that checked the body, as its last),
 * with no string cJSON would cut at a NUL ("a\u0000b" read as "a").
 */
#ifndef CHATD_APIREQ_H
#define CHATD_APIREQ_H

#include <cJSON.h>
#include <stddef.h>

#define APIREQ_SEGS 6          /* path segments at most */
#define APIREQ_SEG_MAX 128     /* bytes of a decoded segment (a room id) */
#define APIREQ_MEMBERS_MAX 32

/* Splits an absolute path ("/v1/rooms/x") into percent-decoded segments.
 * 0, or -1 when malformed: no leading '/', a bad or NUL escape, more than
 * APIREQ_SEGS segments or one longer than APIREQ_SEG_MAX. */
int apireq_split(const char *path, char seg[APIREQ_SEGS][APIREQ_SEG_MAX + 1], int *n);
/* The body as a JSON object (an empty body is {} when optional; the caller
 * deletes it), or NULL with *why set. */
cJSON *apireq_body(const char *body, size_t len, int optional, const char **why);
/* String member key: 1 set, 0 absent or null, -1 not a UTF-8 string of
 * 1..max bytes. */
int apireq_str(const cJSON *o, const char *key, size_t max, const char **out);

#endif
