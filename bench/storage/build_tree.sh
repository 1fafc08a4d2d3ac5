#!/usr/bin/env bash
# bench/storage/build_tree.sh REV OUT
# This tree's bench/storage/storage.c built against the objects (store/,
# migrations, ...) of tree REV, from `git archive REV`: the "before" of a
# storage run (docs/PERFORMANCE.md, Storage). OUT: the binary to write,
# then run with bench/storage/run.sh OUT ...
set -euo pipefail
rev=$1
out=$(readlink -f "$2")
top=$(git rev-parse --show-toplevel)
src=$(mktemp -d /tmp/chatd-tree-XXXXXX)
trap 'rm -rf "$src"' EXIT
git -C "$top" archive "$rev" | tar -x -C "$src"
# The tree's own Makefile builds its objects (chatd needs them all); the
# link uses its flags (--eval is read before the Makefile: its variables
# are expanded in the recipe only).
make -C "$src" -j2 --no-print-directory build/chatd >/dev/null
make -C "$src" --no-print-directory \
    --eval "bench-tree-storage: ; \$(CC) \$(CPPFLAGS) \$(CFLAGS) \$(LDFLAGS) -o $out $top/bench/storage/storage.c \$(OBJS) \$(LDLIBS)" \
    bench-tree-storage >/dev/null
echo "$out: bench/storage/storage.c against $(git -C "$top" rev-parse --short "$rev")"
