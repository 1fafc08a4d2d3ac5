"""Browser test fixtures: a fresh cluster (broker, 2 classifiers, 2 gateways,
its own Redis, PostgreSQL and database) from the fault suite's harness
(tests/faults/harness.py, which builds on tests/integration/chatlib.py), so
the test can SIGKILL and restart a gateway like the fault tests do. With
CHATD_TEST_KAFKA=real the cluster runs on the session's Apache Kafka
(tests/integration/kafkamode.py) instead of its own embedded broker.
"""
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def browser_workdir():
    d = tempfile.mkdtemp(prefix="chatd-browser-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("CHATD_TEST_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def browser_kafka(browser_workdir):
    if not harness.kafkamode.REAL:
        yield None
        return
    yield harness.kafkamode.acquire(os.path.join(browser_workdir, "kafka"))
    harness.kafkamode.release()


@pytest.fixture
def browser_cluster(browser_workdir, browser_kafka, request):
    d = tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=browser_workdir)  # one per test
    os.chmod(d, 0o755)
    pg = harness.Postgres(d)
    # A name of its own per test: on real Kafka it names the cluster's topics and group.
    c = harness.Cluster(d, pg, "browser-" + request.node.name[5:40], kafka=browser_kafka)
    try:
        c.start()
    except Exception as e:
        c.stop()
        pg.close()
        pytest.fail(f"cluster did not start: {e}", pytrace=False)
    yield c
    problems = c.stop()
    pg.close()
    if problems:
        pytest.fail("server process problem:\n" + "\n\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    c = item.funcargs.get("browser_cluster") if hasattr(item, "funcargs") else None
    if rep.failed and c is not None:
        rep.sections.append(("chatd logs (tails)", c.tails()))
