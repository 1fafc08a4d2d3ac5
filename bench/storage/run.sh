#!/usr/bin/env bash
# bench/storage/run.sh BENCH_BINARY [rows] [batch] [rooms] [days] [resend_window_days]
# A throwaway PostgreSQL 15 cluster in a temp dir (default settings: fsync
# on, synchronous_commit on), the storage bench against it, then the
# cluster removed. Run as root: the server runs as the postgres user.
# make bench-storage runs it, and so does make bench (bench/run.py's storage
# step, which reads what it prints); SIGTERM to its process group stops the
# bench and the EXIT trap still removes the cluster.
#
# A large history, and a cache smaller than its indexes (issue 24's case):
#   STORAGE_PRELOAD=N   the first N of the rows are written by SQL
#                       (bench_storage --load-sql: minutes for tens of
#                       millions; the server has max_wal_size=8GB for it),
#                       the rest with chatd's statements (--from N).
#   STORAGE_CACHE_DIV=D or STORAGE_CACHE_MB=M (with STORAGE_PRELOAD):
#                       between the two, the server is stopped, its files
#                       dropped from the page cache, and started again, with
#                       its default settings, in a memory cgroup capped at
#                       messages' indexes / D (or M MiB) plus STORAGE_PG_MB
#                       (64) for its processes' own memory: the cap holds
#                       its shared buffers, the page cache of its files and
#                       its processes. cgroup v1 (memory.limit_in_bytes) or
#                       v2 (memory.max); root only.
#   STORAGE_KEEP=1      stop after the preload and keep the cluster (its
#                       directory is printed); STORAGE_LOADED=DIR then
#                       measures on it (and removes it): two trees' loads
#                       can run at once, their measurements one after the
#                       other.
# Run it under `nice -n 19 ionice -c3` on a shared machine.
set -euo pipefail
bin=$(readlink -f "$1"); shift
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
preload=${STORAGE_PRELOAD:-0}
cache_div=${STORAGE_CACHE_DIV:-}
cache_mb=${STORAGE_CACHE_MB:-}
pg_mb=${STORAGE_PG_MB:-64}
cg= cg_limit=
die() { echo "run.sh: $*" >&2; [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true; exit 2; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ -n "$cache_div$cache_mb" ]; then
    [ "$preload" -gt 0 ] || die "STORAGE_CACHE_DIV/STORAGE_CACHE_MB need STORAGE_PRELOAD (the cap is set after the load)"
    [ "$(id -u)" = 0 ] || die "a memory cap needs root (a cgroup, the page cache dropped)"
    if [ -w /sys/fs/cgroup/memory/cgroup.procs ] && [ -e /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
        cg=/sys/fs/cgroup/memory/chatd-bench-storage-$$ cg_limit=memory.limit_in_bytes
    elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        grep -qw memory /sys/fs/cgroup/cgroup.subtree_control ||
            echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
            die "cgroup v2: cannot enable the memory controller for children of /sys/fs/cgroup"
        cg=/sys/fs/cgroup/chatd-bench-storage-$$ cg_limit=memory.max
    else
        die "no writable memory cgroup (v1: /sys/fs/cgroup/memory, v2: memory in /sys/fs/cgroup/cgroup.controllers)"
    fi
    mkdir "$cg" 2>/dev/null || die "cannot create $cg"
fi

loaded=${STORAGE_LOADED:-}
if [ -n "$loaded" ]; then
    [ "$preload" -gt 0 ] && [ -f "$loaded/load.out" ] || die "STORAGE_LOADED=$loaded: no preloaded cluster there (or no STORAGE_PRELOAD)"
    dir=$loaded
else
    dir=$(mktemp -d /tmp/chatd-bench-storage-XXXXXX)
fi
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
conninfo="host=127.0.0.1 port=$port user=postgres dbname=postgres"
start_pg() {
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $*" start >/dev/null ||
        { tail -20 "$dir/pg.log"; echo "run.sh: PostgreSQL did not start" >&2; exit 1; }
}
init_pg() {
    as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log"; echo "run.sh: initdb failed" >&2; exit 1; }
}
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; }
cleanup() {
    stop_pg 2>/dev/null || true
    rm -rf "$dir"
    [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
if [ "$preload" -gt 0 ]; then
    if [ -z "$loaded" ]; then
        init_pg
        start_pg -c max_wal_size=8GB -c checkpoint_timeout=30min
        echo "preload: $preload rows by SQL, $(date -u +%H:%M:%S)"
        "$bin" --load-sql "$preload" "$conninfo" "$@" | tee "$dir/load.out"
        echo "preload done $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg), data dir $(du -sh "$dir/data" | cut -f1)"
        stop_pg
        if [ "${STORAGE_KEEP:-0}" = 1 ]; then
            trap - EXIT
            [ -z "$cg" ] || rmdir "$cg"
            echo "kept: STORAGE_LOADED=$dir"
            exit 0
        fi
    fi
    if [ -n "$cg" ]; then
        # The load's pages are in the page cache, charged to whoever read
        # them first: a capped server would find them there. Drop them.
        sync
        find "$dir/data" -type f -exec dd if={} iflag=nocache count=0 status=none \;
        resident=$(find "$dir/data" -type f -exec fincore -b -n -o RES {} + | awk '{s += $1} END {print int(s / 1048576)}')
        index_bytes=$(sed -n 's/^index_bytes=\([0-9]*\).*/\1/p' "$dir/load.out")
        if [ -n "$cache_mb" ]; then
            cache=$((cache_mb * 1048576))
        else
            cache=$((index_bytes / cache_div))
        fi
        limit=$((cache + pg_mb * 1048576))
        echo "$limit" >"$cg/$cg_limit"
        echo "cap: $cg/$cg_limit = $((limit / 1048576)) MiB (cache $((cache / 1048576)) MiB: indexes $((index_bytes / 1048576)) MiB${cache_div:+ / $cache_div}, + $pg_mb MiB for the server's processes); page cache of the data dir after the drop: $resident MiB"
        (echo "$BASHPID" >"$cg/cgroup.procs" && start_pg)
    else
        start_pg
    fi
    echo "measure: $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bin" --from "$preload" "$conninfo" "$@"
    if [ -n "$cg" ]; then
        if [ "$cg_limit" = memory.limit_in_bytes ]; then
            echo "cgroup: peak $(($(cat "$cg/memory.max_usage_in_bytes") / 1048576)) MiB;" \
                "$(grep -E '^(rss|cache|shmem|mapped_file) ' "$cg/memory.stat" | awk '{printf "%s %d MiB, ", $1, $2 / 1048576}')" \
                "$(grep oom_kill "$cg/memory.oom_control" | tr '\n' ' ')"
        else
            echo "cgroup: peak $(($(cat "$cg/memory.peak" 2>/dev/null || echo 0) / 1048576)) MiB;" \
                "$(grep -E '^(anon|file|shmem) ' "$cg/memory.stat" | awk '{printf "%s %d MiB, ", $1, $2 / 1048576}')" \
                "$(grep oom_kill "$cg/memory.events" | tr '\n' ' ')"
        fi
        ! grep -E 'terminated by signal|out of memory' "$dir/pg.log" || die "the server ran out of memory: raise STORAGE_PG_MB"
    fi
else
    init_pg
    start_pg
    "$bin" "$conninfo" "$@"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
