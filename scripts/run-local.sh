#!/usr/bin/env bash
# make run: a local redis-server and PostgreSQL under .run/ on loopback, then
# chatd --role=all with the embedded Kafka broker and dev tokens on
# http://127.0.0.1:8080. Ctrl-C stops everything this script started.
# make cluster (second argument "cluster"): the same stores, then a broker,
# two classifiers and two gateways (http://127.0.0.1:8080 and :8081); with
# KAFKA=real, Apache Kafka (3 KRaft nodes, scripts/kafka.py) instead of the broker.
set -euo pipefail

CHATD=${1:-build/chatd}
MODE=${2:-all}
ROOT=$(pwd)/.run
HERE=$(cd "$(dirname "$0")" && pwd)
REDIS_PORT=${REDIS_PORT:-16379}
PG_PORT=${PG_PORT:-15432}
LISTEN=${CHATD_LISTEN:-127.0.0.1:8080}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
mkdir -p "$ROOT"

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pids=()
PGROOT=$ROOT
cleanup() {
  trap - INT TERM EXIT
  echo "run: stopping" >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/pg" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup INT TERM EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$ROOT" --save '' --appendonly no \
  --logfile "$ROOT/redis.log" &
pids+=($!)

# PostgreSQL's files live in $PGROOT: .run/ itself, unless this clone sits
# under a directory the postgres user cannot enter (root's 0700 home): then
# a directory of this clone's own in /var/tmp.
PGROOT=$ROOT
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$ROOT"
  if ! runuser -u postgres -- test -w "$ROOT"; then
    PGROOT=/var/tmp/chatd-run-$(printf %s "$ROOT" | sha256sum | cut -c1-16)
    mkdir -p "$PGROOT"
    chown postgres "$PGROOT"
    chmod 0700 "$PGROOT"
    echo "run: the postgres user cannot reach $ROOT; PostgreSQL data in $PGROOT/pg" >&2
  fi
fi
if [ ! -s "$PGROOT/pg/PG_VERSION" ]; then
  mkdir -p "$PGROOT/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres "$PGROOT/pg"
  as_pg "$PGBIN/initdb" -D "$PGROOT/pg" -A trust -U postgres >/dev/null
fi
as_pg "$PGBIN/pg_ctl" -D "$PGROOT/pg" -l "$PGROOT/pg.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PGROOT" start >/dev/null
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='chatd'" | grep -q 1 ||
  as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE chatd"

export CHATD_JWT_SECRET=${CHATD_JWT_SECRET:-dev-secret-change-me}
export CHATD_REDIS="redis://127.0.0.1:$REDIS_PORT/0"
export CHATD_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=chatd"

if [ "$MODE" = cluster ] && [ "${KAFKA:-embedded}" = real ]; then
  # Apache Kafka (scripts/kafka.py) in .run/kafka, stopped with the rest;
  # the first classifier creates chatd's topics, the others wait for them.
  KDIR="$ROOT/kafka"
  kafka_down() { /usr/bin/python3 "$HERE/kafka.py" down "$KDIR" || true; }
  trap 'cleanup; kafka_down' INT TERM EXIT
  CHATD_KAFKA=$(/usr/bin/python3 "$HERE/kafka.py" up "$KDIR" --nodes "${KAFKA_NODES:-3}" \
                ${KAFKA_VERSION:+--version "$KAFKA_VERSION"})
  export CHATD_KAFKA
  "$CHATD" --role=classifier --listen=127.0.0.1:9101 --kafka-create-topics & pids+=($!)
  "$CHATD" --role=classifier --listen=127.0.0.1:9102 --kafka-create-topics & pids+=($!)
  "$CHATD" --role=gateway --gateway-id=0 --listen=127.0.0.1:8080 --dev-tokens --kafka-create-topics & pids+=($!)
  "$CHATD" --role=gateway --gateway-id=1 --listen=127.0.0.1:8081 --dev-tokens --kafka-create-topics & pids+=($!)
  echo "run: gateways on http://127.0.0.1:8080 and http://127.0.0.1:8081, classifiers :9101 :9102," \
       "Apache Kafka $CHATD_KAFKA (logs in $KDIR; redis :$REDIS_PORT, postgres :$PG_PORT; Ctrl-C stops)" >&2
  wait -n "${pids[@]}" || true
  echo "run: a chatd process exited; stopping the cluster" >&2
  exit 1
fi

if [ "$MODE" = cluster ]; then
  # Several processes on one machine: they find the broker through this file.
  B="$ROOT/bootstrap"
  rm -f "$B"
  export CHATD_KAFKA_BOOTSTRAP_FILE="$B"
  "$CHATD" --role=broker --listen=127.0.0.1:9100 & pids+=($!)
  "$CHATD" --role=classifier --listen=127.0.0.1:9101 & pids+=($!)
  "$CHATD" --role=classifier --listen=127.0.0.1:9102 & pids+=($!)
  "$CHATD" --role=gateway --gateway-id=0 --listen=127.0.0.1:8080 --dev-tokens & pids+=($!)
  "$CHATD" --role=gateway --gateway-id=1 --listen=127.0.0.1:8081 --dev-tokens & pids+=($!)
  echo "run: gateways on http://127.0.0.1:8080 and http://127.0.0.1:8081, classifiers :9101 :9102," \
       "broker :9100 (redis :$REDIS_PORT, postgres :$PG_PORT; Ctrl-C stops)" >&2
  wait -n "${pids[@]}" || true
  echo "run: a chatd process exited; stopping the cluster" >&2
  exit 1
fi

echo "run: chatd on http://$LISTEN (redis :$REDIS_PORT, postgres :$PG_PORT, logs below; Ctrl-C stops)" >&2
"$CHATD" --role=all --listen="$LISTEN" --kafka=embedded --dev-tokens &
pids+=($!)
wait "${pids[-1]}"
