"""k8s/base's Kafka scripts against a real 3-node Kafka (scripts/kafka.py,
the version of scripts/kafka/pom.xml, which k8s/ runs):

- ensure-topics.sh (the chatd pods' init container) creates both topics
  with the brokers' default replication, raises a count, refuses to shrink;
- kafka-ready.sh (Kafka's readiness probe) reports a broker unready while it
  is out of the ISR of a partition it replicates (killed, then restarted
  and catching up) and ready once it is back in every ISR, on the real
  `kafka-topics.sh --describe` output.

`make k8s-kafka-test`. In the pods the scripts run the image's
/opt/kafka/bin/kafka-topics.sh; here KAFKA_TOPICS points at a wrapper
running the same class (org.apache.kafka.tools.TopicCommand) from the jars.
"""
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import kafka as kafkapy  # noqa: E402  (scripts/kafka.py)

ENSURE = os.path.join(REPO, "k8s", "base", "ensure-topics.sh")
READY = os.path.join(REPO, "k8s", "base", "kafka-ready.sh")


@pytest.fixture(scope="module")
def kcluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("k8s-kafka")
    c = kafkapy.KafkaCluster(str(d / "cluster"), nodes=3, die_with_parent=True)
    c.up(timeout=180)
    wrapper = d / "kafka-topics.sh"
    libs = kafkapy.libs_dir(c.version)
    wrapper.write_text("#!/bin/sh\nexec java -Xmx128m -XX:-UsePerfData -cp '%s/*' "
                       "org.apache.kafka.tools.TopicCommand \"$@\"\n" % libs)
    wrapper.chmod(0o755)
    c.topics_cmd = str(wrapper)
    yield c
    c.down()


def run(script, cluster, *args, env=None, timeout=240):
    e = dict(os.environ, KAFKA_TOPICS=cluster.topics_cmd, **(env or {}))
    return subprocess.run(["bash", script, *args], env=e, capture_output=True, text=True, timeout=timeout)


def describe(cluster, topic):
    out = subprocess.run([cluster.topics_cmd, "--bootstrap-server", cluster.bootstrap, "--describe",
                          "--topic", topic], capture_output=True, text=True, timeout=120, check=True).stdout
    head = out.splitlines()[0]
    parts = dict(f.strip().split(": ", 1) for f in head.split("\t") if ": " in f)
    return int(parts["PartitionCount"]), int(parts["ReplicationFactor"])


def ensure(cluster, send, receive):
    return run(ENSURE, cluster, env={"CHATD_KAFKA": cluster.bootstrap, "CHATD_SEND_PARTITIONS": str(send),
                                     "CHATD_RECEIVE_PARTITIONS": str(receive)})


def ready(cluster, node_id, via):
    """kafka-ready.sh as broker node_id would run it (HOSTNAME kafka-N)."""
    return run(READY, cluster, env={"HOSTNAME": f"kafka-{node_id}",
                                    "KAFKA_READY_BOOTSTRAP": f"127.0.0.1:{cluster.ports[via]}"}, timeout=60)


def test_ensure_topics_creates_raises_and_refuses_to_shrink(kcluster):
    r = ensure(kcluster, 3, 2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert describe(kcluster, "chat-send") == (3, 3)     # the brokers' default replication
    assert describe(kcluster, "chat-receive") == (2, 3)
    r = ensure(kcluster, 3, 4)
    assert r.returncode == 0, r.stdout + r.stderr
    assert describe(kcluster, "chat-receive") == (4, 3)
    r = ensure(kcluster, 3, 3)
    assert r.returncode == 1 and "cannot shrink" in r.stderr, r.stdout + r.stderr
    assert describe(kcluster, "chat-receive") == (4, 3)


def test_kafka_ready_follows_the_isr(kcluster):
    if describe_missing(kcluster):
        assert ensure(kcluster, 3, 4).returncode == 0
    for node_id in (1, 2, 3):
        r = ready(kcluster, node_id, via=0)
        assert r.returncode == 0, f"node {node_id}: {r.stdout}{r.stderr}"
    kcluster.kill(2)  # node id 3
    # The controller fences it (broker.session.timeout.ms, 9 s) and drops it
    # from every ISR: node 3 is then out of sync, the others are not.
    deadline = time.monotonic() + 90
    while True:
        r = ready(kcluster, 3, via=0)
        if r.returncode == 1:
            break
        assert time.monotonic() < deadline, "node 3 still counted in sync 90 s after it was killed"
        time.sleep(2)
    assert "Isr:" in r.stdout and "Replicas:" in r.stdout, r.stdout
    assert ready(kcluster, 1, via=0).returncode == 0
    kcluster.start(2, wait=True, timeout=180)
    deadline = time.monotonic() + 120
    while ready(kcluster, 3, via=2).returncode != 0:
        assert time.monotonic() < deadline, "restarted node 3 never back in every ISR"
        time.sleep(2)


def describe_missing(cluster):
    try:
        describe(cluster, "chat-receive")
        return False
    except (subprocess.CalledProcessError, IndexError):
        return True
