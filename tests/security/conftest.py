"""Security suite: one cluster (broker, 1 classifier, 2 gateways, its own
Redis and database) for the session, started with tight limits so that
every attack reaches one. Every test is an attack; after each one the
`after_attack` check (autouse) requires that

- every process answers /healthz and none died or wrote a sanitizer report,
- a fresh pair of clients still sees send -> delivery within
  max(LATENCY_FLOOR_S, LATENCY_FACTOR x the latency measured at start),
- each gateway's VmRSS comes back within RSS_TOLERANCE of its baseline,
- every message stored before the attack is still there, byte for byte.

The measurements are printed in the terminal summary (docs/SECURITY.md
quotes them).
"""
import os
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "faults"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import chatlib  # noqa: E402
import harness  # noqa: E402
import seclib  # noqa: E402

from secconf import API_KEY, LIMITS, PREVIOUS_SECRET, token  # noqa: E402

GW_ARGS = [f"--rate={LIMITS['rate']}", f"--rate-burst={LIMITS['rate_burst']}",
           f"--max-conns-per-user={LIMITS['max_conns_per_user']}",
           f"--request-timeout-ms={LIMITS['request_timeout_ms']}",
           f"--max-header-bytes={LIMITS['max_header']}", f"--max-url-bytes={LIMITS['max_url']}",
           f"--max-frame={LIMITS['max_frame']}", f"--max-text={LIMITS['max_text']}",
           f"--heartbeat={LIMITS['heartbeat']}", f"--pong-timeout={LIMITS['pong_timeout']}",
           f"--max-http-conns={LIMITS['max_http_conns']}", f"--origins={LIMITS['origins']}",
           f"--send-queue={LIMITS['send_queue']}",
           f"--max-rooms-per-user={LIMITS['max_rooms_per_user']}"]

LATENCY_FLOOR_S = 3.0
LATENCY_FACTOR = 10.0
# "Back to baseline" means within this much of it: every chatd process trims glibc's
# heap every 5 s, but allocator caches remain; under ASan the gateways run
# with a small quarantine (GW_ENV) and ASan's own allocator caches more.
RSS_TOLERANCE_KB = (64 if harness.SANITIZED else 6) * 1024
GW_ENV = {"CHATD_JWT_SECRET_PREVIOUS": PREVIOUS_SECRET, "CHATD_API_KEY": API_KEY,
          "ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") +
                           ":quarantine_size_mb=4:thread_local_quarantine_size_kb=64").lstrip(":")}
RSS_WAIT_S = 20

RESULTS = []   # one line per attack, for the summary


class SecCluster:
    def __init__(self, c):
        self.c = c
        self.gw_ports = c.gw_ports
        self.ports = c.ports
        self.baseline_latency = None
        self.baseline_rss = {}

    def query(self, sql, args=()):
        return self.c.query(sql, args)

    def pid(self, name):
        return self.c.procs[name].pid

    def rss(self, name):
        return seclib.rss_kb(self.pid(name))

    def token(self, user, **kw):
        return token(user, **kw)


_CLUSTER = []


@pytest.fixture(scope="session")
def sec_workdir():
    d = tempfile.mkdtemp(prefix="chatd-sec-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("CHATD_TEST_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


async def _seed(sc):
    """A room with stored messages the attacks must leave untouched."""
    a = await chatlib.Client.connect(sc.gw_ports[0], token("canary-a"))
    try:
        await a.join("canary")
        for i in range(10):
            await a.send("canary", f"canary {i} \"quoted\" 'single' \\ ünïcödé 🙂 <b>x</b>")
    finally:
        await a.close()


@pytest.fixture(scope="session")
def sec(sec_workdir):
    pg = harness.Postgres(sec_workdir)
    admin = chatlib.free_port()  # gateway 0 has an admin listener (the amplification checks)
    api = chatlib.free_port()    # gateway 1 the server API (test_sec_api.py)
    c = harness.Cluster(sec_workdir, pg, "sec", gw_args=GW_ARGS, n_gw=2, n_cl=1,
                        gw_env=GW_ENV,
                        gw_args_by_id={0: [f"--admin-listen=127.0.0.1:{admin}"],
                                       1: [f"--max-conns={LIMITS['max_conns_gw1']}",
                                           f"--api-listen=127.0.0.1:{api}"]})
    try:
        c.start()
    except Exception as e:
        problems = c.stop()
        pg.close()
        pytest.fail(f"security cluster did not start: {e}\n" + "\n".join(problems), pytrace=False)
    sc = SecCluster(c)
    sc.admin_port = admin
    sc.api_port = api
    _CLUSTER.append(sc)
    try:
        seclib.arun(_seed(sc))
        # Warm-up, then the baselines the attacks are compared with.
        seclib.arun(seclib.probe_latency(sc, token))
        sc.baseline_latency = seclib.arun(seclib.probe_latency(sc, token, sends=5))
        time.sleep(1)
        sc.baseline_rss = {n: sc.rss(n) for n in ("gateway0", "gateway1")}
        RESULTS.append(f"baseline: latency {sc.baseline_latency * 1000:.0f} ms, RSS "
                       + ", ".join(f"{n} {v // 1024} MiB" for n, v in sc.baseline_rss.items())
                       + (" (ASan build)" if harness.SANITIZED else ""))
        yield sc
    finally:
        _CLUSTER.remove(sc)
        problems = c.stop()
        pg.close()
        if problems:
            pytest.fail("security cluster teardown:\n" + "\n\n".join(problems), pytrace=False)


def _wait_rss(sc, name, deadline):
    limit = sc.baseline_rss[name] + RSS_TOLERANCE_KB
    while True:
        now = sc.rss(name)
        if now <= limit or time.monotonic() > deadline:
            return now, limit


@pytest.fixture(autouse=True)
def after_attack(request):
    # `make integration` runs tests/integration, tests/faults and this folder
    # in one pytest whose rootdir is tests/integration; a conftest outside
    # the rootdir applies to every test, so this check limits itself to the
    # tests of this folder (and starts the cluster only for them).
    if not str(request.node.fspath).startswith(HERE + os.sep):
        yield
        return
    sec = request.getfixturevalue("sec")
    before = seclib.snapshot(sec)
    t0 = time.monotonic()
    peak = {}
    yield
    name = request.node.name
    problems = sec.c.check()
    assert not problems, "server process problem:\n" + "\n\n".join(problems)
    seclib.healthz_all(sec)
    for n in ("gateway0", "gateway1"):
        peak[n] = sec.rss(n)
    lat = seclib.arun(seclib.probe_latency(sec, token))
    bound = max(LATENCY_FLOOR_S, LATENCY_FACTOR * sec.baseline_latency)
    assert lat <= bound, f"{name}: delivery latency {lat:.3f}s after the attack (bound {bound:.3f}s)"
    deadline = time.monotonic() + RSS_WAIT_S
    rss = {}
    for n in ("gateway0", "gateway1"):
        now, limit = _wait_rss(sec, n, deadline)
        rss[n] = now
        assert now <= limit, (f"{name}: {n} RSS {now} KiB not back near its baseline "
                              f"{sec.baseline_rss[n]} KiB (+{RSS_TOLERANCE_KB} KiB) "
                              f"within {RSS_WAIT_S}s")
    after = seclib.snapshot(sec)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"{name}: stored messages changed or vanished: {changed[:10]}"
    problems = sec.c.check()
    assert not problems, "server process problem:\n" + "\n\n".join(problems)
    RESULTS.append(f"{name}: {time.monotonic() - t0:.1f}s, latency after {lat * 1000:.0f} ms, "
                   f"RSS gw0/gw1 {peak['gateway0'] // 1024}/{peak['gateway1'] // 1024} MiB after "
                   f"-> {rss['gateway0'] // 1024}/{rss['gateway1'] // 1024} MiB, "
                   f"{len(before)} stored messages unchanged")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _CLUSTER:
        rep.sections.append(("chatd logs (tails)", _CLUSTER[0].c.tails()))


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.section("security: after each attack")
        for line in RESULTS:
            terminalreporter.write_line(line)
