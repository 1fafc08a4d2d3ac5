"""A fatal Kafka client error ends the process (issue 23, item 8; issue 21,
P5): librdkafka declares the instance unusable and only a restart helps, so
chatd drains for at most 3 s and exits 3 for its supervisor to restart it
(until then /healthz answers 503). The error is fabricated with librdkafka's
rd_kafka_test_fatal_error (POST /faults/kafka-fatal, only with
--fault-injection). Here a --role=all process (gateway and classifier);
tests/faults/test_f17_kafka_fatal.py shows that a classifier's partitions
move at once and nothing acked is lost."""
import time

import pytest

from chatlib import free_port, http_request


@pytest.fixture(scope="module")
def inst(start_all_instance):
    admin = free_port()
    i = start_all_instance("fatal1", [f"--admin-listen=127.0.0.1:{admin}", "--fault-injection"])
    i.admin = admin
    return i


def test_fatal_kafka_error_exits_for_a_restart(inst):
    for port in (inst.port, inst.admin):
        assert http_request(port, "GET", "/healthz")[0] == 200
    inst.proc.stopping, inst.proc.expect_clean_exit = True, False  # the exit is the point
    st, _, body = http_request(inst.port, "POST", "/faults/kafka-fatal")
    assert st == 200, (st, body)
    deadline = time.time() + 10
    while inst.proc.alive():
        assert time.time() < deadline, "still running 10 s after a fatal Kafka error"
        time.sleep(0.05)
    assert inst.proc.p.returncode == 3, inst.proc.p.returncode
    log = open(inst.proc.logpath).read()
    assert "event=kafka_fatal " in log and "event=kafka_fatal_exit " in log
    assert "event=exit rc=3 reason=kafka_fatal" in log
