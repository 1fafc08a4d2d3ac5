"""A fatal Kafka client error fails /healthz (issue 23, item 8): librdkafka
declares the instance unusable, readiness goes 503 for good, and only a
restart helps, so the liveness probe must see it. The error is fabricated
with librdkafka's rd_kafka_test_fatal_error (POST /faults/kafka-fatal, only
with --fault-injection)."""
import time

import pytest

from chatlib import free_port, http_request


@pytest.fixture(scope="module")
def inst(start_all_instance):
    admin = free_port()
    i = start_all_instance("fatal1", [f"--admin-listen=127.0.0.1:{admin}", "--fault-injection"])
    i.admin = admin
    return i


def test_fatal_kafka_error_fails_liveness(inst):
    for port in (inst.port, inst.admin):
        assert http_request(port, "GET", "/healthz")[0] == 200
    st, _, body = http_request(inst.port, "POST", "/faults/kafka-fatal")
    assert st == 200, (st, body)
    deadline = time.time() + 10
    while http_request(inst.admin, "GET", "/healthz")[0] != 503:
        assert time.time() < deadline, "/healthz still 200 10 s after a fatal Kafka error"
        time.sleep(0.1)
    st, _, body = http_request(inst.port, "GET", "/healthz")
    assert (st, body) == (503, b"kafka client failed\n"), (st, body)
    assert http_request(inst.admin, "GET", "/readyz")[0] == 503
    assert "event=kafka_fatal" in open(inst.proc.logpath).read()
