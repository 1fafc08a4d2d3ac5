/* fuzz_conf: the configuration-to-allocator path (issue 16). conf/conf.c
 * parses a fuzzed command line; whatever configuration it accepts must size
 * every structure it sizes within that structure's allocator:
 *
 *   --max-header-bytes -> one request buffer, a slot of the request slab
 *                         (net/http.c, lib/slab.h): allocated and written
 *                         end to end here, through a slab of that size;
 *   --send-queue       -> half of it pages every reply: it must hold the
 *                         largest message (--max-text, every byte escaped).
 *
 * Input: arguments separated by NUL or newline, after an implicit "chatd".
 * Refused configurations are fine (conf prints why on stderr); an accepted
 * one that breaks an allocator aborts. The slab runs as malloc under ASan
 * (lib/slab.h), but refuses an oversized object the same way in both builds,
 * so a configuration the real slab could not serve fails here too. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "lib/slab.h"
#include "net/http.h"
#include "net/proto.h"

#define CHECK(cond) do { if (!(cond)) fuzz_fail(#cond, __LINE__); } while (0)
static void fuzz_fail(const char *what, int line)
{
    fprintf(stderr, "fuzz_conf: check failed at line %d: %s\n", line, what);
    abort();
}

#define MAX_ARGS 32

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("CHATD_JWT_SECRET", "fuzz-secret", 1);
    if (!freopen("/dev/null", "w", stdout)) /* --help */
        return 0;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    buf[size] = 0;
    char *argv[MAX_ARGS + 1] = { "chatd" };
    int argc = 1;
    char *p = buf;
    while (argc < MAX_ARGS && p <= buf + size) {
        argv[argc++] = p;
        size_t n = strcspn(p, "\n");
        if (p[n] == '\n')
            p[n] = 0;
        p += strlen(p) + 1;
    }
    static struct conf c;
    int rc = conf_load(&c, argc, argv);
    if (rc == 0) {
        /* The request buffer: allocated from a slab of exactly its size
         * (what net/http.c does) and written end to end. */
        size_t req = c.max_header + (SLAB_MAX_OBJECT - http_max_header_limit());
        CHECK(slab_fits(req));
        /* One listed slab, resized while it holds nothing (a stack slab
         * would stay on slab.c's list after return). */
        static struct slab s = SLAB_INIT_SIZE("fuzz_req", 0);
        CHECK(s.objects == 0);
        s.size = req;
        s.slot = 0;
        char *a = slab_alloc(&s), *b = slab_alloc(&s);
        CHECK(a != NULL && b != NULL);
        memset(a, 0xa5, req);
        memset(b, 0x5a, req);
        CHECK((unsigned char)a[req - 1] == 0xa5);
        slab_free(&s, a);
        slab_free(&s, b);
        slab_trim();
        CHECK(c.max_url <= c.max_header);
        /* A reply page (half the output bound) holds the largest message. */
        CHECK(c.send_queue / 2 >= proto_msg_bound(c.max_text));
        CHECK(c.send_queue / 2 >= (size_t)c.max_rooms_per_user * PROTO_ROOMS_ENTRY_MAX);
    }
    free(buf);
    return 0;
}
