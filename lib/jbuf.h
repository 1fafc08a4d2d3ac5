/* jbuf: a growable byte buffer with a tiny JSON writer.
 *
 * Hand-written on purpose: cJSON builds a tree with one malloc per node and
 * then prints it; every reply and every fanned-out frame is written here
 * straight into one buffer instead. Parsing stays with cJSON.
 *
 * The buffer owns its memory (jbuf_free). An allocation failure latches
 * `failed`: writes become no-ops and the caller checks once at the end.
 * The writer is deliberately dumb: the caller writes commas and keys in
 * order; jbuf_key() adds the separating comma for every key after the first
 * in an object (it tracks that through `need_comma`).
 */
#ifndef CHATD_JBUF_H
#define CHATD_JBUF_H

#include <stddef.h>
#include <stdint.h>

struct jbuf {
    char *p;
    size_t len, cap;
    int failed;
    int need_comma;
};

void jbuf_init(struct jbuf *b, size_t cap_hint);
void jbuf_free(struct jbuf *b);
void jbuf_reset(struct jbuf *b);
/* Hands the NUL-terminated buffer to the caller (who frees it); b is reset. */
char *jbuf_take(struct jbuf *b, size_t *len);

void jbuf_raw(struct jbuf *b, const char *s, size_t n);
void jbuf_rawz(struct jbuf *b, const char *s);
void jbuf_obj_open(struct jbuf *b);   /* "{" */
void jbuf_obj_close(struct jbuf *b);  /* "}" */
void jbuf_arr_open(struct jbuf *b);   /* "[" */
void jbuf_arr_close(struct jbuf *b);  /* "]" */
void jbuf_key(struct jbuf *b, const char *key);       /* [,]"key": */
void jbuf_str(struct jbuf *b, const char *s, size_t n); /* escaped JSON string */
void jbuf_strz(struct jbuf *b, const char *s);
void jbuf_int(struct jbuf *b, int64_t v);
void jbuf_bool(struct jbuf *b, int v);
/* Array element separator: call before every element; writes ',' only
 * after a previous element. */
void jbuf_comma(struct jbuf *b);

/* Convenience: "key":"value" / "key":int. */
void jbuf_kv_str(struct jbuf *b, const char *key, const char *s, size_t n);
void jbuf_kv_strz(struct jbuf *b, const char *key, const char *s);
void jbuf_kv_int(struct jbuf *b, const char *key, int64_t v);

#endif
