"""--admin-listen (docs/DEPLOY.md, "Ports"): a second listener for
Prometheus and the kubelet. With it, /metrics leaves the client port, and
the probes keep answering while the client port is flooded."""
import socket
import time

import pytest

from chatlib import free_port, http_request, read_metrics, metric_sum, uid, arun

MAX_HTTP_CONNS = 8
ADMIN_MAX_CONNS = 64  # CHATD_ADMIN_MAX_CONNS in chatd.c


@pytest.fixture(scope="module")
def inst(start_all_instance):
    admin = free_port()
    i = start_all_instance("admin1", [f"--admin-listen=127.0.0.1:{admin}",
                                      f"--max-http-conns={MAX_HTTP_CONNS}"])
    i.admin = admin
    return i


def test_metrics_only_on_the_admin_port(inst):
    st, hdrs, body = http_request(inst.admin, "GET", "/metrics")
    assert st == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4"), (st, hdrs)
    assert b"\nchatd_up 1\n" in b"\n" + body, body[:300]
    st, _, body = http_request(inst.port, "GET", "/metrics")
    assert st == 404 and b'"not_found"' in body, (st, body)
    assert "metrics=admin" in open(inst.proc.logpath).read()


def test_probes_on_both_ports(inst):
    for port in (inst.port, inst.admin):
        assert http_request(port, "GET", "/healthz")[0] == 200
        st, _, body = http_request(port, "GET", "/readyz")
        assert (st, body) == (200, b"ready\n"), (port, st, body)


def test_admin_port_serves_nothing_else(inst):
    for path in ("/", "/ws", "/api/rooms/x/messages", "/api/dev/token", "/app.js"):
        st, _, body = http_request(inst.admin, "GET", path)
        assert st == 404 and b'"not_found"' in body, (path, st, body)
    st, _, _ = http_request(inst.port, "GET", "/")
    assert st == 200  # the page is still on the client port


def test_admin_metrics_count_client_traffic(inst):
    before = metric_sum(read_metrics(inst.admin), "chatd_messages_out_total")
    room, ua, ub = uid("adm"), uid("a"), uid("b")

    async def body():
        a, b = await inst.client(ua), await inst.client(ub)
        assert await a.join(room) == 0 and await b.join(room) == 0
        await a.send(room, "through the client port")
        await b.wait_seqs(room, [1])
        await a.close()
        await b.close()
    arun(body())
    after = metric_sum(read_metrics(inst.admin), "chatd_messages_out_total")
    assert after >= before + 2, (before, after)  # the msg to a and to b


def _idle_sockets(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def _status(port):
    try:
        return http_request(port, "GET", "/healthz", timeout=3)[0]
    except OSError as e:  # refused with 503 and closed before the request was read
        return repr(e)


def test_probes_answer_while_the_client_port_is_full(inst):
    """The kubelet's liveness probe must not fail (and restart a healthy
    gateway) because clients filled --max-http-conns."""
    flood = _idle_sockets(inst.port, MAX_HTTP_CONNS + 4)
    try:
        time.sleep(0.3)
        assert _status(inst.port) != 200  # the client port is full ...
        assert _status(inst.admin) == 200  # ... the admin port is not
        st, _, _ = http_request(inst.admin, "GET", "/readyz")
        assert st == 200
    finally:
        for s in flood:
            s.close()


def test_admin_port_has_its_own_small_cap(inst):
    flood = _idle_sockets(inst.admin, ADMIN_MAX_CONNS + 4)
    try:
        time.sleep(0.3)
        assert _status(inst.admin) != 200
        assert _status(inst.port) == 200
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 10
    while _status(inst.admin) != 200:
        assert time.monotonic() < deadline, "admin port did not recover after the flood"
        time.sleep(0.1)
