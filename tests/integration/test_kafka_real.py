"""chatd on Apache Kafka (CHATD_TEST_KAFKA=real only; skipped on the embedded
broker). Topics are not auto-created there: chatd refuses to start with the
command to run, or creates / grows them with --kafka-create-topics. And what
chatd's Kafka clients are configured for is what the broker saw: batches of
an idempotent producer (a producer id and sequences in the log segments),
a classic group on the cooperative-sticky assignor, offsets (chatd's, in
PostgreSQL) that reach the end of the log."""
import glob
import os
import re
import subprocess
import time

import pytest

import kafkamode
from chatlib import arun, uid

CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(kafkamode.REPO, "build", "chatd")


def chatd_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env["CHATD_JWT_SECRET"] = "kafka-real-test-secret-" + "r" * 16
    return env

pytestmark = pytest.mark.skipif(not kafkamode.REAL, reason="real Kafka only (CHATD_TEST_KAFKA=real)")

# Topics are checked before PostgreSQL: an unreachable one ends the run right after.
NO_PG = ["--pg=host=127.0.0.1 port=1 dbname=x", "--migrate-wait=0", "--listen=127.0.0.1:0"]


def run_gateway(kafka, prefix, *args):
    r = subprocess.run([CHATD_BIN, "--role=gateway", f"--kafka={kafka.bootstrap}",
                        f"--topic-send={prefix}-send", f"--topic-receive={prefix}-receive"]
                       + NO_PG + list(args), env=chatd_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    return r.returncode, r.stdout


def describe(kafka, topic):
    return kafka.tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", kafka.bootstrap,
                      "--describe", "--topic", topic)


def partition_count(kafka, topic):
    return int(re.search(r"PartitionCount:\s*(\d+)", describe(kafka, topic)).group(1))


def test_missing_topics_refused_with_the_fix(kafka):
    p = uid("nt")
    rc, out = run_gateway(kafka, p, "--gateway-id=0")
    assert rc != 0, out
    for t in (f"{p}-send", f"{p}-receive"):
        assert f"event=kafka_topic_missing topic={t} " in out, out
    assert f"--create --topic {p}-send --partitions 12" in out, out
    assert f"--create --topic {p}-receive --partitions 16" in out, out
    assert "--kafka-create-topics" in out, out
    listed = kafka.tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                        kafka.bootstrap, "--list").split()
    assert f"{p}-send" not in listed and f"{p}-receive" not in listed, listed


def test_created_then_grown_for_a_new_gateway(kafka):
    p = uid("gr")
    rc, out = run_gateway(kafka, p, "--gateway-id=0", "--kafka-create-topics",
                          "--send-partitions=3", "--receive-partitions=2")
    assert f"event=kafka_topic_ok topic={p}-receive min_partitions=1" in out, out
    assert partition_count(kafka, f"{p}-send") == 3
    assert partition_count(kafka, f"{p}-receive") == 2
    assert f"ReplicationFactor: {kafka.nodes}" in describe(kafka, f"{p}-send")
    # Gateway 4 (a StatefulSet scaled up) has no partition: refused with the fix...
    rc, out = run_gateway(kafka, p, "--gateway-id=4")
    assert rc != 0
    assert f"event=kafka_topic_too_small topic={p}-receive partitions=2 needed=5" in out, out
    assert f"--alter --topic {p}-receive --partitions 5" in out, out
    assert partition_count(kafka, f"{p}-receive") == 2
    # ...or grows the topic when allowed; chat-send (keyed by room) never grows.
    rc, out = run_gateway(kafka, p, "--gateway-id=4", "--kafka-create-topics")
    assert f"event=kafka_topic_grow topic={p}-receive partitions=2 to=5" in out, out
    assert partition_count(kafka, f"{p}-receive") == 5
    assert partition_count(kafka, f"{p}-send") == 3


def _batches(kafka, topic):
    """(producerId, baseSequence) of every batch of topic in node 0's log segments."""
    files = sorted(glob.glob(os.path.join(kafka.node_dir(0), "data", f"{topic}-*", "*.log")))
    assert files, f"no segments of {topic}"
    try:  # Kafka 4.4 moved it from core to tools
        out = kafka.tool("org.apache.kafka.tools.DumpLogSegments", "--files", ",".join(files))
    except RuntimeError as e:
        if "ClassNotFoundException" not in str(e):
            raise
        out = kafka.tool("kafka.tools.DumpLogSegments", "--files", ",".join(files))
    return [(int(m.group(2)), int(m.group(1)))
            for m in re.finditer(r"baseSequence: (-?\d+).*?producerId: (-?\d+)", out)]


def _group_tool(kafka, *args):
    return kafka.tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                      "--bootstrap-server", kafka.bootstrap, "--group", "chatd-classifier",
                      "--describe", *args)


def test_broker_sees_idempotence_cooperative_sticky_and_commits(cluster, kafka):
    room = uid("kr")

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        b = await cluster.client(uid("b"), gw=1)
        await a.join(room)
        await b.join(room)
        await a.send_many(room, [f"m{i}" for i in range(20)])
        await b.wait_seqs(room, range(1, 21))
        await a.close()
        await b.close()
    arun(body())
    # Idempotent producers: every batch carries a producer id and a sequence
    # (a plain producer writes -1 for both), gateways' and classifiers' alike.
    for topic in ("chat-send", "chat-receive"):
        batches = _batches(kafka, topic)
        assert batches, topic
        bad = [b for b in batches if b[0] < 0 or b[1] < 0]
        assert not bad, f"{topic}: batches without idempotence: {bad[:5]} of {len(batches)}"
    # The classifiers' group: classic protocol, cooperative-sticky, stable.
    state = _group_tool(kafka, "--state")
    assert re.search(r"chatd-classifier\s+\S+\s+\(\d+\)\s+cooperative-sticky\s+Stable\s+2", state), state
    # Offsets: chatd's own, beside the fence in PostgreSQL (migrations/009),
    # at the log end once the classifiers caught up (a quiet partition's
    # within a second). Kafka's committed offsets trail by up to a minute
    # (auto.commit.interval.ms, docs/RELIABILITY.md P2d): not waited for.
    deadline = time.monotonic() + 30
    while True:
        rows = [line.split() for line in _group_tool(kafka).splitlines()
                if line.startswith("chatd-classifier ") and " chat-send " in line]
        ends = {int(r[2]): int(r[4]) for r in rows if r[4].isdigit()}
        ours = dict(cluster.pg.query("SELECT partition, next_offset FROM partition_owners "
                                     "WHERE topic = 'chat-send' AND next_offset IS NOT NULL"))
        if ours and all(ends.get(p) == o for p, o in ours.items()) and sum(ours.values()) >= 20:
            break
        assert time.monotonic() < deadline, f"offsets not at the log end: {ours} vs {ends}"
        time.sleep(1)
