#!/usr/bin/env bash
# bench/storage/run.sh BENCH_BINARY [rows] [batch] [rooms] [days] [resend_window_days]
# A throwaway PostgreSQL 15 cluster in a temp dir (default settings: fsync
# on, synchronous_commit on), the storage bench against it, then the
# cluster removed. Run as root: the server runs as the postgres user.
# make bench-storage runs it, and so does make bench (bench/run.py's storage
# step, which reads what it prints); SIGTERM to its process group stops the
# bench and the EXIT trap still removes the cluster.
set -euo pipefail
bin=$(readlink -f "$1"); shift
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
dir=$(mktemp -d /tmp/chatd-bench-storage-XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Set before the cluster exists: a stop at any point (even during its start) removes it.
trap 'as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log"; echo "run.sh: initdb failed" >&2; exit 1; }
as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null ||
    { tail -20 "$dir/pg.log"; echo "run.sh: PostgreSQL did not start" >&2; exit 1; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$bin" "host=127.0.0.1 port=$port user=postgres dbname=postgres" "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
