"""bench/run.py's judgements, without a cluster: when a ladder step holds,
how the stores are started, which settings the report lists, how many
chatbench processes a shape gets (issue 19: make the bench measure what
users see)."""
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import run as B  # noqa: E402


def report(**kw):
    rep = dict(sent=1000, acked=1000, missing=0, extra=0, sent_per_s=1000.0,
               latency_ms=dict(p99=10.0), errors={})
    rep.update(kw)
    return rep


def test_held_needs_every_message_acked_and_delivered_once():
    assert B.point_ok(report(), 1000, 10) is None
    # One unacked message in 1,000 (the old 0.1 % allowance) does not hold.
    assert B.point_ok(report(acked=999), 1000, 10) == "unacked 1"
    # The same message under two seqs does not hold.
    assert B.point_ok(report(extra=2), 1000, 10) == "extra 2"


def test_held_uses_chatbenchs_verdict_and_lists_every_failure():
    why = B.point_ok(report(held=False, not_held="unacked 3, extra 1", acked=997, extra=1,
                            latency_ms=dict(p99=61.0)), 1000, 10)
    assert why == "delivery: unacked 3, extra 1; p99 61.0 ms > 50 ms"
    assert B.point_ok(report(held=True, sent=0, acked=0, sent_per_s=0.0), 1000, 10) == \
        "nothing sent; sent 0/s of 1000/s"


def test_postgres_runs_with_fsync_unless_asked():
    args = B.pg_server_args("/d", 5432)
    assert "fsync=off" not in args and "-F" not in args
    assert "fsync=off" in B.pg_server_args("/d", 5432, fsync=False)


def test_settings_list_every_non_default():
    stores = SimpleNamespace(settings=lambda: ["PostgreSQL max_connections=200 (default 100)"])
    st = B.Cluster.settings(SimpleNamespace(kafka_opts=["linger.ms=0"], gateway_args=[], classifier_args=[],
                                            stores=stores, kafka=None, send_partitions=B.BENCH_SEND_PARTITIONS,
                                            base_gateway_args=B.BENCH_GATEWAY_ARGS))
    text = "\n".join(st)
    assert f"chat-send partitions: {B.BENCH_SEND_PARTITIONS} (chatd's default 12)" in text
    for a in ("--rate=1000000", "--rate-burst=1000000", "--max-conns=19000"):
        assert f"gateways: {a} (default " in text
    assert "linger.ms=0" in text and "max_connections=200" in text


def test_settings_of_a_defaults_cluster_on_real_kafka():
    """The every-member shape's cluster (defaults=True) on real Kafka lists
    the broker it ran on, and no chatd setting of its own."""
    stores = SimpleNamespace(settings=lambda: ["PostgreSQL max_connections=200 (default 100)"])
    kafka = SimpleNamespace(version="4.1.1", nodes=1, state={"heap": "384m"})
    assert B.bench_overrides(None, False) == (B.BENCH_SEND_PARTITIONS, B.BENCH_GATEWAY_ARGS)
    assert B.bench_overrides(kafka, False) == (None, B.BENCH_GATEWAY_ARGS)  # chatd's 12 on real Kafka
    cluster = SimpleNamespace(kafka_opts=[], gateway_args=[], classifier_args=[], stores=stores, kafka=kafka)
    cluster.send_partitions, cluster.base_gateway_args = B.bench_overrides(kafka, True)
    text = "\n".join(B.Cluster.settings(cluster))
    assert "Apache Kafka 4.1.1" in text and "1 KRaft node" in text and "replication 1" in text
    assert "chat-send partitions" not in text and "--rate" not in text and "--max-conns" not in text


def test_rooms_of_1000_get_two_chatbench_processes():
    bench = B.Bench("build", "/tmp", B.config(True))
    for clients, size, procs in ((1000, 1000, 2), (4000, 1000, 2), (1000, 10, 1), (4000, 10, 2)):
        args = bench.load_args("ws://x", clients, size, 100, "r")
        assert args[args.index("--procs") + 1] == procs, (clients, size)
