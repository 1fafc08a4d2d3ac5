"""Observing and breaking a three-node real Kafka (scripts/kafka.py) from the
fault tests: partition leaders and ISRs, the active KRaft controller,
committed group offsets, and a node's life. Leaders and ISRs come from two
sources: kcat's metadata (fast, polled) and Kafka's own TopicCommand
describe (a JVM, seconds: used to confirm what was polled)."""
import json
import subprocess
import time


def metadata(k, topic):
    """{partition: (leader, [replicas], [isr])} as a broker reports it (kcat -L)."""
    r = subprocess.run(["kcat", "-L", "-J", "-m", "5", "-b", k.bootstrap, "-t", topic],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"kcat -L {topic}: {r.stderr.strip()}")
    out = {}
    for t in json.loads(r.stdout)["topics"]:
        for p in t.get("partitions", []):
            out[p["partition"]] = (p["leader"], [x["id"] for x in p["replicas"]],
                                   [x["id"] for x in p["isrs"]])
    return out


def describe(k, topic):
    """{partition: (leader, [isr])} from Kafka's TopicCommand --describe."""
    text = k.tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", k.bootstrap,
                  "--describe", "--topic", topic)
    out = {}
    for line in text.splitlines():
        f = dict(x.split(": ", 1) for x in line.strip().split("\t") if ": " in x)
        if "Partition" in f and "Isr" in f:
            isr = [int(x) for x in f["Isr"].split(",") if x]
            out[int(f["Partition"])] = (int(f["Leader"]), isr)
    if not out:
        raise RuntimeError(f"TopicCommand describe {topic}: nothing parsed:\n{text}")
    return out


def controller(k):
    """Node id of the active KRaft controller (MetadataQuorumCommand)."""
    text = k.tool("org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server",
                  k.bootstrap, "describe", "--status")
    for line in text.splitlines():
        if line.startswith("LeaderId:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no LeaderId in:\n{text}")


def group_offsets(k, group):
    """{(topic, partition): committed offset} (ConsumerGroupCommand --describe;
    partitions without a commit are left out)."""
    text = k.tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                  "--bootstrap-server", k.bootstrap, "--describe", "--group", group)
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0] == group and f[2].isdigit() and f[3].isdigit():
            out[(f[1], int(f[2]))] = int(f[3])
    return out


def wait_meta(k, topic, cond, timeout, what, step=0.5, empty_ok=False):
    """Polls metadata(k, topic) until cond(meta) holds; returns (meta, seconds).
    empty_ok: a topic that does not exist (yet) counts as holding."""
    t0 = time.monotonic()
    last = None
    while True:
        try:
            last = metadata(k, topic)
            if (not last and empty_ok) or (last and cond(last)):
                return last, time.monotonic() - t0
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
            last = e
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s; last metadata {last}")
        time.sleep(step)


def node_index(node_id):
    """KafkaCluster nodes are indexed from 0; Kafka's node ids from 1."""
    return node_id - 1


def heal(k, timeout=180):
    """Every node running and registered (a test that failed midway leaves
    the next one a whole cluster)."""
    dead = [i for i in range(k.nodes) if not k.alive(i)]
    for i in dead:
        k.start(i, wait=False)
    k.wait_ready(timeout)
    return dead
