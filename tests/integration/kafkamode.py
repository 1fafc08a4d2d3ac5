"""Which Kafka a test session runs chatd on.

CHATD_TEST_KAFKA=embedded (default): librdkafka's mock cluster, in a
`chatd --role=broker` process (or in-process for --role=all).
CHATD_TEST_KAFKA=real: Apache Kafka in KRaft mode (scripts/kafka.py), one
cluster per session, CHATD_TEST_KAFKA_NODES nodes (1 or 3), version
CHATD_KAFKA_VERSION (scripts/kafka.py's default otherwise). Its topics are
not auto-created: chatd creates them (--kafka-create-topics), and every
standalone instance or fault-test cluster gets topics and a group of its own,
so clusters sharing the broker never see each other's records.
"""
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import kafka as kafkactl  # noqa: E402  (scripts/kafka.py)

MODE = os.environ.get("CHATD_TEST_KAFKA", "embedded")
if MODE not in ("embedded", "real"):
    raise RuntimeError(f"CHATD_TEST_KAFKA={MODE!r}: expected 'embedded' or 'real'")
REAL = MODE == "real"
NODES = int(os.environ.get("CHATD_TEST_KAFKA_NODES", "1"))


_shared = {"cluster": None, "users": 0}


def acquire(dir):
    """The session's Kafka, started in dir by the first caller (fetching the
    jars if needed): one pytest run of several suites shares one broker."""
    if _shared["cluster"] is None:
        _shared["cluster"] = kafkactl.KafkaCluster(dir, nodes=NODES, die_with_parent=True,
                                                     group_delay_ms=1000).up()
    _shared["users"] += 1
    return _shared["cluster"]


def release():
    """The last user stops it."""
    _shared["users"] -= 1
    if _shared["users"] == 0:
        _shared["cluster"].down()
        _shared["cluster"] = None


def chatd_args(k, prefix=None):
    """chatd flags for real Kafka k; prefix: topics and group of their own."""
    args = [f"--kafka={k.bootstrap}", "--kafka-create-topics"]
    if prefix:
        args += [f"--topic-send={prefix}-send", f"--topic-receive={prefix}-receive",
                 f"--group={prefix}-classifier"]
    return args
