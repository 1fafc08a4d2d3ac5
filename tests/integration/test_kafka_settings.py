"""The producer settings each role starts with (docs/ARCHITECTURE.md, client
settings): a gateway lingers to batch client messages into one request, a
classifier, whose records are already one per gateway per batch, does not."""
from chatlib import producer_linger


def test_producer_linger_per_role(cluster):
    roles = {p.name.split("~")[0]: producer_linger(p) for p, _ in cluster.procs if p.name != "broker"}
    assert roles == {"classifier0": "0", "classifier1": "0", "gateway0": "2", "gateway1": "2"}, roles
