"""Fault-injection suite: one fresh cluster (broker, 2 classifiers, 2 gateways,
its own Redis and database) per test; PostgreSQL shared by the session.
After each test every process of the test's cluster is checked (unexpected
exit, sanitizer report) and the cluster is stopped (exit 0 expected).
"""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import checker  # noqa: E402
import harness  # noqa: E402

_CLUSTERS = []


@pytest.fixture(scope="session")
def fault_workdir():
    d = tempfile.mkdtemp(prefix="chatd-faults-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("CHATD_TEST_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_pg(fault_workdir):
    pg = harness.Postgres(fault_workdir)
    yield pg
    pg.close()


@pytest.fixture(scope="session")
def fault_kafka(fault_workdir):
    """Real Apache Kafka for the session when CHATD_TEST_KAFKA=real, else None
    (each cluster then runs its own embedded broker)."""
    if not harness.kafkamode.REAL:
        yield None
        return
    yield harness.kafkamode.acquire(os.path.join(fault_workdir, "kafka"))
    harness.kafkamode.release()


@pytest.fixture
def make_cluster(fault_workdir, fault_pg, fault_kafka, request):
    """Factory: make_cluster(**Cluster kwargs, pg=another PostgreSQL) -> a
    started Cluster."""
    mine = []

    def make(**kw):
        name = request.node.name.replace("[", "_").replace("]", "")
        kw.setdefault("kafka", fault_kafka)
        pg = kw.pop("pg", fault_pg)  # e.g. a harness.PostgresPair
        c = harness.Cluster(fault_workdir, pg, f"{name}-{len(mine)}", **kw)
        mine.append(c)
        _CLUSTERS.append(c)
        try:
            c.start()
        except Exception as e:
            pytest.fail(f"cluster did not start: {e}", pytrace=False)
        return c

    yield make
    problems = []
    for c in mine:
        problems += c.stop()
        _CLUSTERS.remove(c)
    if problems:
        pytest.fail("server process problem:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _fault_guard():
    yield
    problems = [p for c in _CLUSTERS for p in c.check()]
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
        terminalreporter.section("fault counts")
        for line in checker.COUNTS:
            terminalreporter.write_line(line)
