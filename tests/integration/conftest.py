"""Session fixtures: redis + PostgreSQL + a chatd cluster (embedded-Kafka
broker, 2 classifiers, 2 gateways), plus a factory for standalone
`--role=all` instances. Every process is checked after every test: an
unexpected exit or a sanitizer report fails the run.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psycopg2
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import chatlib  # noqa: E402
import kafkamode  # noqa: E402
from chatlib import Proc, free_port, start_redis, uid, wait_ready  # noqa: E402

# Shared with the tests through itconf (a module of its own: `from conftest
# import` picks whichever conftest.py pytest loaded last when several folders
# run in one session).
from itconf import API_KEY, API_KEY_PREVIOUS, CHATD_BIN, JWT_SECRET, KAFKA_TEST_OPTS, PG_BIN, READY_TIMEOUT, REPO, chatd_env  # noqa: E402,F401


def start_chatd(name, args, logdir, env=None):
    if not os.access(CHATD_BIN, os.X_OK):
        pytest.fail(f"chatd binary not found at {CHATD_BIN} (set CHATD_BIN or run make)")
    return Proc(name, [CHATD_BIN] + list(args), logdir, env=env or chatd_env(),
                sanitized=True, expect_clean_exit=True)


# --------------------------------------------------------------------------
# reporting

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and chatlib.REGISTRY:
        tails = []
        for p in chatlib.REGISTRY:
            if p.sanitized:
                tails.append(f"--- {p.name} ({p.logpath}) ---\n{p.tail(25)}")
        if tails:
            rep.sections.append(("chatd logs (tails)", "\n".join(tails)))


@pytest.fixture(autouse=True)
def _process_guard():
    """After each test: no process of ours died, no sanitizer report."""
    yield
    problems = chatlib.check_registry()
    if problems:
        pytest.fail("server process problem:\n" + "\n\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------
# backends

@pytest.fixture(scope="session")
def workdir():
    d = tempfile.mkdtemp(prefix="chatd-it-")
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("CHATD_TEST_KEEP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(workdir):
    """Real Apache Kafka when CHATD_TEST_KAFKA=real (kafkamode.py), else None."""
    if not kafkamode.REAL:
        yield None
        return
    yield kafkamode.acquire(os.path.join(workdir, "kafka"))
    kafkamode.release()


class PG(chatlib.PGClient):
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port


@pytest.fixture(scope="session")
def redis_server(workdir):
    proc = start_redis(workdir)
    yield proc
    proc.stop(timeout=10)


@pytest.fixture(scope="session")
def pg(workdir):
    datadir = os.path.join(workdir, "pgdata")
    os.makedirs(datadir, mode=0o700)
    shutil.chown(datadir, "postgres", "postgres")
    r = subprocess.run([f"{PG_BIN}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8", "--locale=C"],
                       user="postgres", group="postgres", extra_groups=[],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{r.stdout.decode(errors='replace')}")
    port = free_port()
    proc = Proc("postgres", [f"{PG_BIN}/postgres", "-D", datadir, "-k", datadir,
                             "-c", "listen_addresses=127.0.0.1", "-p", str(port), "-F",
                             "-c", "fsync=off", "-c", "max_connections=200"],
                workdir, user="postgres")
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg2.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             connect_timeout=2).close()
            break
        except psycopg2.OperationalError:
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start\n{proc.tail()}")
            time.sleep(0.1)
    yield PG(proc, port)
    proc.stop(sig=signal.SIGINT, timeout=20)


# --------------------------------------------------------------------------
# the cluster

class Cluster:
    secret = JWT_SECRET

    def __init__(self, workdir, redis_proc, pg):
        self.workdir = workdir
        self.redis = redis_proc
        self.pg = pg
        self.procs = []
        self.gw_ports = []
        self.api_ports = []          # each gateway's --api-listen (roles/api.h)
        self.cl_ports = []
        self.broker_port = None
        self.retired = []
        self.kafka = None            # real Kafka (kafkamode) or None: the embedded broker

    def token(self, user, **kw):
        return chatlib.make_token(user, JWT_SECRET, **kw)

    async def client(self, user, gw=0, via="header", **kw):
        return await chatlib.Client.connect(self.gw_ports[gw], self.token(user, **kw), via=via)

    def brokers(self):
        """The Kafka bootstrap address (for kcat): the real one, or the
        embedded broker's from its bootstrap file."""
        if self.kafka:
            return self.kafka.bootstrap
        with open(os.path.join(self.workdir, "bootstrap")) as f:
            return f.read().strip()

    def all_ports(self):
        return [p for p in [self.broker_port] + self.cl_ports + self.gw_ports if p]

    def proc(self, name):
        return [p for p, _ in self.procs if p.name.split("~")[0] == name][-1]

    def restart(self, name):
        """Starts a stopped process again with the same arguments and port."""
        i, (old, port) = [(i, x) for i, x in enumerate(self.procs)
                          if x[0].name.split("~")[0] == name][-1]
        assert not old.alive(), f"{name} still running"
        gen = old.name.count("~") + 1
        new = Proc(f"{name}~{gen}", old.argv, old.logdir, env=old.env, sanitized=True,
                   expect_clean_exit=True)
        self.procs[i] = (new, port)
        self.retired.append(old)
        wait_ready(new, port, READY_TIMEOUT)
        return new


@pytest.fixture(scope="session")
def cluster(workdir, redis_server, pg, kafka):
    c = Cluster(workdir, redis_server, pg)
    c.kafka = kafka
    bootstrap = os.path.join(workdir, "bootstrap")
    conninfo = pg.conninfo()
    if kafka:
        common = kafkamode.chatd_args(kafka) + ["--send-partitions=8", "--receive-partitions=8"]
    else:
        c.broker_port = free_port()
        broker = start_chatd("broker", ["--role=broker", f"--listen=127.0.0.1:{c.broker_port}",
                                        f"--kafka-bootstrap-file={bootstrap}",
                                        "--send-partitions=8", "--receive-partitions=8",
                                        "--log-level=info"], workdir)
        c.procs.append((broker, c.broker_port))
        common = ["--kafka=embedded", f"--kafka-bootstrap-file={bootstrap}"]
    common += [f"--redis={redis_server.url}", f"--pg={conninfo}", "--log-level=info"]
    for i in range(2):
        port = free_port()
        p = start_chatd(f"classifier{i}", ["--role=classifier", f"--listen=127.0.0.1:{port}"]
                        + common + KAFKA_TEST_OPTS, workdir)
        c.cl_ports.append(port)
        c.procs.append((p, port))
    api_env = chatd_env({"CHATD_API_KEY": API_KEY, "CHATD_API_KEY_PREVIOUS": API_KEY_PREVIOUS})
    for i in range(2):
        port, api_port = free_port(), free_port()
        p = start_chatd(f"gateway{i}", ["--role=gateway", f"--gateway-id={i}",
                                        f"--listen=127.0.0.1:{port}", "--dev-tokens",
                                        f"--api-listen=127.0.0.1:{api_port}",
                                        "--rate=1000", "--rate-burst=1000"] + common, workdir,
                        env=api_env)
        c.gw_ports.append(port)
        c.api_ports.append(api_port)
        c.procs.append((p, port))
    try:
        for p, port in c.procs:
            wait_ready(p, port, READY_TIMEOUT)
    except Exception as e:
        _stop_cluster(c)
        pytest.fail(str(e), pytrace=False)
    if kafka:
        _wait_group_settled(c, 8)
    yield c
    problems = _stop_cluster(c)
    if problems:
        pytest.fail("cluster teardown:\n" + "\n\n".join(problems), pytrace=False)


def _owned_partitions(logpath):
    """A classifier's chat-send partitions, replayed from its log's
    kafka_assigned / kafka_revoked lines (cooperative: increments)."""
    owned = set()
    with open(logpath, errors="replace") as f:
        for line in f:
            m = re.search(r"event=kafka_(assigned|revoked) .*topic=\S*send partitions=([0-9,]*)", line)
            if m:
                parts = {int(x) for x in m.group(2).split(",") if x}
                owned = owned | parts if m.group(1) == "assigned" else owned - parts
    return owned


def _wait_group_settled(c, n_parts, timeout=30):
    """On real Kafka a classifier is ready once it holds partitions, but a
    pair started together rebalances for seconds more (issue 18), and rooms
    on a moving partition wait meanwhile: tests of other things start once
    every partition has exactly one owner and each classifier has some, for
    a second. Not a failure if it never settles: the tests then say what
    they see."""
    logs = [p.logpath for p, _ in c.procs if p.name.startswith("classifier")]
    deadline, stable_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        owned = [_owned_partitions(lp) for lp in logs]
        settled = (all(owned) and sum(len(o) for o in owned) == n_parts
                   and set().union(*owned) == set(range(n_parts)))
        if not settled:
            stable_since = None
        elif stable_since is None:
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return
        time.sleep(0.1)


def _stop_cluster(c):
    # Gateways and classifiers first (they flush to the broker), then the broker.
    others = [p for p, _ in c.procs if p.name != "broker" and p.alive()]
    for p in others:
        p.send_signal(signal.SIGTERM)
    for p in others:
        if p.p.returncode is None:
            p.wait_exit(25)
    for p, _ in c.procs:
        if p.name == "broker":
            p.stop(timeout=25)
    return [x for x in (p.check() for p in [p for p, _ in c.procs] + c.retired) if x]


# --------------------------------------------------------------------------
# standalone --role=all instances

class Instance:
    def __init__(self, proc, port, redis_proc, conninfo, dbname, workdir):
        self.proc = proc
        self.port = port
        self.redis = redis_proc
        self.conninfo = conninfo
        self.dbname = dbname
        self.workdir = workdir

    def token(self, user, **kw):
        return chatlib.make_token(user, JWT_SECRET, **kw)

    async def client(self, user, **kw):
        return await chatlib.Client.connect(self.port, self.token(user), **kw)


@pytest.fixture(scope="module")
def start_all_instance(workdir, pg, kafka):
    """Factory: a --role=all chatd with its own redis and a fresh database,
    embedded in-process Kafka (real Kafka: topics of its own). Stopped at the
    end of the module that started it: an idle instance on the embedded
    broker still polls every 2 ms (~6 % of a core), and a session-long one
    slowed every later suite of the run."""
    started = []
    leftovers = []

    def start(name, extra_args=(), redis_args=(), redis_password=None, redis_user=None,
              redis_url=None, ready=True, env=None):
        """redis_args/redis_password/redis_user: the instance's redis-server; redis_url
        (given the redis process) replaces the plain redis://127.0.0.1:PORT;
        ready=False returns without waiting for /readyz; env: extra environment."""
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        r = start_redis(d, name=f"{name}-redis", args=redis_args, password=redis_password,
                        username=redis_user)
        leftovers.append(r)
        dbname = "chatd_" + uid("db").replace("-", "_")
        conninfo = pg.create_db(dbname)
        port = free_port()
        url = redis_url(r) if redis_url else r.url
        kargs = kafkamode.chatd_args(kafka, prefix=name) if kafka else ["--kafka=embedded"]
        p = start_chatd(name, ["--role=all", f"--listen=127.0.0.1:{port}"] + kargs + [
                               f"--redis={url}", f"--pg={conninfo}", "--log-level=info"]
                        + KAFKA_TEST_OPTS + list(extra_args), d,
                        env=chatd_env(env) if env else None)
        inst = Instance(p, port, r, conninfo, dbname, d)
        started.append(inst)
        leftovers.remove(r)
        try:
            if ready:
                wait_ready(p, port, READY_TIMEOUT)
        except Exception as e:
            pytest.fail(str(e), pytrace=False)
        return inst

    yield start
    for r in leftovers:
        r.stop(timeout=10)
    problems = []
    for inst in started:
        inst.proc.stop(timeout=25)
        inst.redis.stop(timeout=10)
        x = inst.proc.check()
        if x:
            problems.append(x)
    if problems:
        pytest.fail("standalone instance teardown:\n" + "\n\n".join(problems), pytrace=False)
