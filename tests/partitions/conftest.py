"""Partition suite (issue 21): one network of namespaces, one three-node
Kafka and one PostgreSQL per session (tests/partitions/hosts.py); a fresh
chatd cluster (2 gateways, 2 classifiers, its own Redis) per test. Every
fault is healed after each test, and everything the session made (processes,
namespaces) is removed also when a test fails; namespaces left by a killed
run are removed when the next one starts (netns.remove_stale)."""
import concurrent.futures
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "faults"))

import checker  # noqa: E402
import hosts  # noqa: E402
import netns  # noqa: E402


class Net:
    pass


@pytest.fixture(scope="session")
def net():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    n = Net()
    n.workdir = tempfile.mkdtemp(prefix="chatd-partitions-")
    os.chmod(n.workdir, 0o755)
    n.topo = netns.Topology()
    n.kafka = n.pg = None
    try:
        n.topo.create()
        n.topo.enter("client")
        # PostgreSQL is made while Kafka's three JVMs start: in a thread
        # (started here, so in the client host too), not Kafka, whose nodes
        # die with the thread that started them (PR_SET_PDEATHSIG)
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pg = pool.submit(hosts.NetPostgres, n.topo, n.workdir)
        pool.shutdown(wait=False)
        try:
            n.kafka = hosts.NetKafka(n.topo, os.path.join(n.workdir, "kafka"))
            n.kafka.up(timeout=180)
        finally:
            if pg.exception() is None:   # waits for it
                n.pg = pg.result()
        n.pg = pg.result()               # raises what it raised
        yield n
    finally:
        if n.kafka:
            # SIGKILL: its data is thrown away, and three nodes stopping
            # at once took 12 s of controlled shutdown
            n.kafka.down(grace=0)
        if n.pg:
            n.pg.close()
        n.topo.destroy()
        if os.environ.get("CHATD_TEST_KEEP") != "1":
            shutil.rmtree(n.workdir, ignore_errors=True)


_CLUSTERS = []


@pytest.fixture
def make_cluster(net, request):
    """Factory: make_cluster(**Cluster kwargs) -> a started NetCluster."""
    mine = []
    net.topo.heal()

    def make(**kw):
        name = request.node.name.replace("[", "_").replace("]", "")
        c = hosts.NetCluster(net.topo, net.workdir, net.pg, f"{name}-{len(mine)}", net.kafka,
                             **kw)
        mine.append(c)
        _CLUSTERS.append(c)
        try:
            c.start()
        except Exception as e:
            pytest.fail(f"cluster did not start: {e}", pytrace=False)
        return c

    yield make
    net.topo.heal()
    problems = []
    for c in mine:
        try:
            problems += c.stop()
        finally:
            c.kill_all()
            _CLUSTERS.remove(c)
    if problems:
        pytest.fail("server process problem:\n" + "\n\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _CLUSTERS:
        rep.sections.append(("chatd logs (tails)", "\n".join(c.tails() for c in _CLUSTERS)))


def pytest_terminal_summary(terminalreporter):
    if checker.COUNTS:
        terminalreporter.section("partition counts")
        for line in checker.COUNTS:
            terminalreporter.write_line(line)
