#!/bin/bash
# Kafka readiness probe: this broker answers, and it is in the in-sync
# replica set of every partition it holds a replica of. A restarted broker
# stays unready until it has caught up, so a rolling update (one pod at a
# time, waiting for Ready) and the PDB (unready pods count as disrupted) do
# not take the next broker while partitions are under-replicated, which
# would leave acks=all sends one replica short of min.insync.replicas.
# Only partitions listed by --under-replicated-partitions are read.
#   kafka-ready.sh                check this broker (id = pod ordinal)
#   kafka-ready.sh --parse ID     read `kafka-topics.sh --describe` output
#                                 on stdin (make k8s-check tests the rule)
set -euo pipefail
lagging() {
  awk -v id="$1" -F '\t' '
    {
      r = ""; s = ""
      for (i = 1; i <= NF; i++) {
        f = $i; sub(/^ +/, "", f)
        if (f ~ /^Replicas: /) r = substr(f, 11)
        if (f ~ /^Isr: /) s = substr(f, 6)
      }
      if (index("," r ",", "," id ",") && !index("," s ",", "," id ",")) { print; bad = 1 }
    }
    END { exit bad }'
}
if [ "${1:-}" = --parse ]; then
  lagging "$2"
  exit
fi
# KAFKA_TOPICS / KAFKA_READY_BOOTSTRAP: for tests/deploy/test_k8s_kafka.py.
out=$(KAFKA_HEAP_OPTS="-Xmx128m" KAFKA_JMX_OPTS="" LOG_DIR=/tmp \
      timeout 25 "${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}" \
      --bootstrap-server "${KAFKA_READY_BOOTSTRAP:-localhost:9092}" \
      --describe --under-replicated-partitions)
lagging "${HOSTNAME##*-}" <<<"$out"
