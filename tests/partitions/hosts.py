"""The services of the partition tests, each on its host of a netns.Topology:
a three-node KRaft Kafka (scripts/kafka.py's KafkaCluster, one node per
Kafka host), PostgreSQL (harness.Postgres), Redis, and a chatd cluster
(harness.Cluster: 2 gateways, 2 classifiers) whose processes run in their
hosts and reach Kafka, Redis and PostgreSQL at those hosts' addresses.
Servers listen on fixed ports of their own address; the test process (in
the client host) finds a chatd port's address in chatlib.ADDR."""
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "faults"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import psycopg2  # noqa: E402
import redis as redislib  # noqa: E402

import chatlib  # noqa: E402
import harness  # noqa: E402
import kafka as kafkascript  # noqa: E402
from chatlib import Proc, wait_ready  # noqa: E402

KAFKA_HOSTS = ("k1", "k2", "k3")
KAFKA_PORT, KAFKA_CTL_PORT = 9092, 9093
PG_PORT, REDIS_PORT = 5432, 6379


class NetKafka(kafkascript.KafkaCluster):
    """KafkaCluster with node i on host KAFKA_HOSTS[i] (same ports on each)."""

    def __init__(self, topo, dir):
        self.topo = topo
        super().__init__(dir, nodes=3, die_with_parent=True, group_delay_ms=1000)
        self.state["ports"] = [KAFKA_PORT] * 3
        self.state["controller_ports"] = [KAFKA_CTL_PORT] * 3
        self.ports = self.state["ports"]
        self.addrs = [topo.addr(h) for h in KAFKA_HOSTS]

    @property
    def bootstrap(self):
        return ",".join(f"{a}:{KAFKA_PORT}" for a in self.addrs)

    def _props(self, i):
        voters = ",".join(f"{k + 1}@{a}:{KAFKA_CTL_PORT}" for k, a in enumerate(self.addrs))
        out = []
        for line in super()._props(i).splitlines():
            if line.startswith("controller.quorum.voters="):
                line = f"controller.quorum.voters={voters}"
            out.append(line.replace("127.0.0.1", self.addrs[i]))
        return "\n".join(out) + "\n"

    def start(self, i, wait=True, timeout=120):
        d = self.node_dir(i)
        log = open(os.path.join(d, "stdout.log"), "a")
        cmd = self._java("kafka.Kafka", os.path.join(d, "server.properties"))
        cmd[1:1] = [f"-Dlog4j2.configurationFile={d}/log4j2.properties",
                    f"-Dlog4j.configuration=file:{d}/log4j.properties",
                    f"-Dkafka.logs.dir={d}"]
        p = subprocess.Popen(self.topo.exec_argv(KAFKA_HOSTS[i], cmd), stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=d,
                             preexec_fn=kafkascript._die_with_parent)
        log.close()
        self._procs[i] = p
        self._expected[i] = 1
        with open(os.path.join(d, "pid"), "w") as f:
            f.write(str(p.pid))
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout=120):
        """Every running node reports every running node registered (the
        metadata probe of scripts/kafka.py, over the network)."""
        deadline = time.monotonic() + timeout
        while True:
            want = [i + 1 for i in range(self.nodes) if self.alive(i)]
            seen = [self._brokers(i - 1) for i in want]
            if want and all(s == want for s in seen):
                return
            for i, p in self._procs.items():
                if p.poll() is not None and self._expected.get(i):
                    raise RuntimeError(f"kafka node{i} exited with {p.returncode}; "
                                       f"see {self.log_path(i)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka not ready after {timeout}s (want {want}, saw {seen})")
            time.sleep(0.25)

    def coordinator(self, group):
        """Index of the node coordinating `group` (FindCoordinator v0 to
        node 0), or None while the group has none yet."""
        import socket
        import struct
        g = group.encode()
        client = b"chatd-kafka-probe"
        req = struct.pack(">hhih", 10, 0, 1, len(client)) + client + struct.pack(">h", len(g)) + g
        try:
            with socket.create_connection((self.addrs[0], KAFKA_PORT), timeout=2) as s:
                s.sendall(struct.pack(">i", len(req)) + req)
                hdr = kafkascript._recv(s, 4)
                data = kafkascript._recv(s, struct.unpack(">i", hdr)[0])
        except OSError:
            return None
        err, node = struct.unpack_from(">hi", data, 4)
        return node - 1 if err == 0 else None

    def _brokers(self, i):
        import socket
        import struct
        body = struct.pack(">i", 0) + b"\x00"
        client = b"chatd-kafka-probe"
        req = struct.pack(">hhih", 3, 4, 1, len(client)) + client + body
        try:
            with socket.create_connection((self.addrs[i], KAFKA_PORT), timeout=2) as s:
                s.sendall(struct.pack(">i", len(req)) + req)
                hdr = kafkascript._recv(s, 4)
                data = kafkascript._recv(s, struct.unpack(">i", hdr)[0])
        except OSError:
            return None
        o = 8
        n = struct.unpack_from(">i", data, o)[0]
        o += 4
        ids = []
        for _ in range(n):
            node, hl = struct.unpack_from(">ih", data, o)
            o += 6 + hl + 4
            rl = struct.unpack_from(">h", data, o)[0]
            o += 2 + max(rl, 0)
            ids.append(node)
        return sorted(ids)


class NetPostgres(harness.Postgres):
    """harness.Postgres on the pg host, listening on its address only."""

    def __init__(self, topo, workdir):
        self.topo = topo
        self.addr = topo.addr("pg")
        self.workdir = workdir
        self.datadir = os.path.join(workdir, "pgdata")
        os.makedirs(self.datadir, mode=0o700)
        shutil.chown(self.datadir, "postgres", "postgres")
        r = subprocess.run([f"{harness.PG_BIN}/initdb", "-D", self.datadir, "-A", "trust", "-U",
                            "postgres", "--no-sync", "-E", "UTF8", "--locale=C"],
                           user="postgres", group="postgres", extra_groups=[],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout.decode(errors='replace')}")
        with open(os.path.join(self.datadir, "pg_hba.conf"), "a") as f:
            f.write(f"host all all {topo.addr('pg').rsplit('.', 1)[0]}.0/24 trust\n")
        self.port = PG_PORT
        self.argv = topo.exec_argv("pg", [
            "setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups",
            f"{harness.PG_BIN}/postgres", "-D", self.datadir, "-k", self.datadir,
            "-c", f"listen_addresses={self.addr}", "-p", str(PG_PORT), "-F",
            "-c", "fsync=off", "-c", "max_connections=300"])
        self.proc = None
        self.start()

    def start(self, timeout=30):
        self.proc = Proc("postgres", self.argv, self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.conninfo(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if not self.proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start\n{self.proc.tail()}")
                time.sleep(0.1)

    def conninfo(self, db="postgres"):
        return f"host={self.addr} port={self.port} user=postgres dbname={db}"


def start_redis(topo, logdir):
    addr = topo.addr("redis")
    proc = Proc("redis", topo.exec_argv("redis", [
        "redis-server", "--port", str(REDIS_PORT), "--bind", addr, "--protected-mode", "no",
        "--save", "", "--appendonly", "no"]), logdir)
    deadline = time.monotonic() + 15
    while True:
        try:
            if redislib.Redis(host=addr, port=REDIS_PORT, socket_timeout=1).ping():
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"redis did not start\n{proc.tail()}")
        time.sleep(0.05)
    proc.port = REDIS_PORT
    proc.url = f"redis://{addr}:{REDIS_PORT}"
    return proc


def went_fatal(proc):
    """True once chatd logged its exit on a fatal Kafka error (chatd.c)."""
    try:
        with open(proc.logpath, "rb") as f:
            return b"event=kafka_fatal_exit " in f.read()
    except OSError:
        return False


class NetCluster(harness.Cluster):
    """harness.Cluster with gateway i on host gw<i>, classifier i on cl<i>,
    its own Redis on the redis host, a database of the session's PostgreSQL
    and topics + group of its own on the session's Kafka."""

    _base = [8000]

    def __init__(self, topo, workdir, pg, name, kafka, **kw):
        self.topo = topo
        super().__init__(workdir, pg, name, kafka=kafka, **kw)
        NetCluster._base[0] += 10        # fresh ports per cluster (no TIME_WAIT doubt)
        self.base = NetCluster._base[0]

    def start(self):
        self.redis = start_redis(self.topo, self.dir)
        kargs = harness.kafkamode.chatd_args(self.kafka, prefix=self.kafka_prefix) + [
            f"--send-partitions={harness.SEND_PARTITIONS}"]
        common = kargs + [f"--redis={self.redis.url}", f"--pg={self.conninfo}",
                          "--log-level=info", "--receive-partitions=8",
                          f"--drain={self.drain}"] + self.kafka_opts
        self.hosts = {}
        for i in range(self.n_cl):
            n, h = f"classifier{i}", f"cl{i}"
            self._place(n, h, self.base + 5 + i)
            self._chatd(n, self.topo.exec_argv(h, [harness.CHATD_BIN, "--role=classifier",
                        f"--listen={self.topo.addr(h)}:{self.ports[n]}"] + common + self.cl_args))
        for i in range(self.n_gw):
            n, h = f"gateway{i}", f"gw{i}"
            self._place(n, h, self.base + i)
            self.gw_ports.append(self.ports[n])
            env = harness.chatd_env(self.gw_env) if self.gw_env else None
            self._chatd(n, self.topo.exec_argv(h, [
                harness.CHATD_BIN, "--role=gateway", f"--gateway-id={i}",
                f"--listen={self.topo.addr(h)}:{self.ports[n]}", "--dev-tokens",
                f"--gateway-ttl={harness.GW_TTL}", "--rate=100000", "--rate-burst=100000"]
                + common + self.gw_args), env=env)
        for n, p in self.procs.items():
            wait_ready(p, self.ports[n], harness.ready_timeout(p.argv))
        return self

    def _place(self, name, host, port):
        self.ports[name] = port
        self.hosts[name] = host
        chatlib.ADDR[port] = self.topo.addr(host)

    def _chatd(self, name, argv, env=None):
        # argv already starts with `ip netns exec HOST`; the binary is in it.
        p = Proc(name, argv, self.dir, env=env or harness.chatd_env(), sanitized=True,
                 expect_clean_exit=True)
        self.procs[name] = p
        return p

    def redis_client(self):
        return redislib.Redis(host=self.topo.addr("redis"), port=REDIS_PORT, socket_timeout=5,
                              decode_responses=True)

    def stop(self):
        # A process that went fatal on Kafka after the test's supervisor
        # stopped (common.supervise) exits 3 by itself, or on this SIGTERM:
        # what a supervisor restarts, not a problem of the test.
        for p in self.procs.values():
            if not p.stopping and went_fatal(p):
                p.stopping, p.expect_clean_exit = True, False
                print(f"{p.name}: Kafka client fatal (exits 3) after the test's supervisor stopped")
        problems = super().stop()
        return problems

    def kill_all(self):
        """SIGKILL whatever is still running (a test that failed midway)."""
        for p in list(self.procs.values()) + ([self.redis] if self.redis else []):
            if p.alive():
                p.expect_clean_exit = False
                p.stop(signal.SIGKILL, 10)
