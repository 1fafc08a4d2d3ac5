#!/bin/bash
# Init container of every chatd pod (apache/kafka image): chat-send and
# chat-receive exist with at least chatd-config's partition counts before
# chatd starts. Creates a missing topic (the brokers' default replication),
# raises a count chatd-config raised, refuses to shrink. Retries until Kafka
# answers, so chatd waits for its topics, and a lost topic is created again
# by the next chatd pod that starts. Pods starting together may race on a
# create or an alter: the loser exits non-zero and its next attempt finds
# the work done.
# Env: CHATD_KAFKA (the bootstrap address), CHATD_SEND_PARTITIONS, CHATD_RECEIVE_PARTITIONS.
set -euo pipefail
BOOTSTRAP=${BOOTSTRAP:-$CHATD_KAFKA}
t=${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}  # KAFKA_TOPICS: for the tests
# Empty when the topic does not exist (the describe fails: not an error here).
count() {
  { "$t" --bootstrap-server "$BOOTSTRAP" --describe --topic "$1" 2>/dev/null || true; } \
    | sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -n1
}
ensure() {
  local topic=$1 want=$2 have
  have=$(count "$topic")
  if [ -z "$have" ]; then
    "$t" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$topic" --partitions "$want"
  elif [ "$have" -lt "$want" ]; then
    "$t" --bootstrap-server "$BOOTSTRAP" --alter --topic "$topic" --partitions "$want"
  elif [ "$have" -gt "$want" ]; then
    echo "ensure-topics: $topic has $have partitions, chatd-config says $want: partitions cannot shrink" >&2
    exit 1
  fi
  echo "ensure-topics: $topic partitions=$(count "$topic") want=$want"
}
for i in $(seq 1 60); do
  if "$t" --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1; then
    ensure chat-send "$CHATD_SEND_PARTITIONS"
    ensure chat-receive "$CHATD_RECEIVE_PARTITIONS"
    exit 0
  fi
  echo "ensure-topics: Kafka at $BOOTSTRAP not answering (attempt $i)" >&2
  sleep 5
done
exit 1
