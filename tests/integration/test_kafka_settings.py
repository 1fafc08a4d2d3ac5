"""The producer settings each role starts with (docs/ARCHITECTURE.md, client
settings): a gateway lingers to batch client messages into one request, a
classifier, whose records are already one per gateway per batch, does not.
The embedded broker's workarounds (one produce request in flight, a 2 ms
fetch wait) are for the embedded broker only: on Apache Kafka chatd keeps
librdkafka's 5 in flight and waits up to 500 ms on an empty fetch."""
import re

import kafkamode
from chatlib import producer_linger


def test_producer_linger_per_role(cluster):
    roles = {p.name.split("~")[0]: producer_linger(p) for p, _ in cluster.procs if p.name != "broker"}
    assert roles == {"classifier0": "0", "classifier1": "0", "gateway0": "2", "gateway1": "2"}, roles


def _logged(proc, event, key):
    with open(proc.logpath, "rb") as f:
        found = re.findall(rb"event=" + event.encode() + rb" .*" + key.encode() + rb"=(\S+)", f.read())
    assert found, f"{proc.name}: no {event} line with {key} in {proc.logpath}"
    return sorted({x.decode() for x in found})


def test_broker_workarounds_only_on_the_embedded_broker(cluster):
    in_flight, fetch_wait = ("5", "500") if kafkamode.REAL else ("1", "2")
    procs = [p for p, _ in cluster.procs if p.name != "broker"]
    for p in procs:
        assert _logged(p, "kafka_producer_ready", "max_in_flight") == [in_flight], p.name
        assert _logged(p, "kafka_consumer_ready", "fetch_wait_ms") == [fetch_wait], p.name
