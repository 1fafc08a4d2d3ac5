#!/usr/bin/env python3
"""A real Apache Kafka (KRaft) on loopback, for chatd's tests and development.

    scripts/kafka.py fetch [--version V]          jars into build/kafka/V/libs (Maven)
    scripts/kafka.py up DIR [--nodes 1|3] [--version V] [--port P]
    scripts/kafka.py down DIR
    scripts/kafka.py status DIR
    scripts/kafka.py kill DIR NODE [--signal KILL]  /  start DIR NODE

No tarball: scripts/kafka/pom.xml pins the broker (org.apache.kafka:kafka_2.13)
and Maven copies it with its runtime dependencies into the build tree; every
node is `java -cp 'libs/*' kafka.Kafka DIR/nodeN/server.properties`, a
combined broker + controller with a static voter set. Three nodes are the
production shape: replication 3, min.insync.replicas 2, no unclean leader
election. Topics are never auto-created: chatd creates its own
(--kafka-create-topics) or is told what to run.

Everything a cluster is lives in DIR (cluster.json, nodeN/{server.properties,
data,server.log,pid}); `down` stops exactly the pids recorded there, and only
while their command line still names DIR. The tests import KafkaCluster.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
POM = os.path.join(REPO, "scripts", "kafka", "pom.xml")
# The version the tests, the README and k8s/ use (docs/DEPLOY.md, "Kafka versions").
DEFAULT_VERSION = os.environ.get("CHATD_KAFKA_VERSION", "4.1.1")
# Two cores run everything here: a small heap, and few internal partitions.
HEAP = os.environ.get("CHATD_KAFKA_HEAP", "384m")


def libs_dir(version):
    return os.path.join(REPO, "build", "kafka", version, "libs")


def fetch(version=DEFAULT_VERSION):
    """Resolves the pinned broker with Maven (once) and returns its libs dir."""
    libs = libs_dir(version)
    if os.path.exists(os.path.join(libs, f"kafka_2.13-{version}.jar")):
        return libs
    tmp = libs + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mvn", "-B", "-q", "-f", POM, f"-Dkafka.version={version}",
           "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    if int(version.split(".")[0]) < 4:
        cmd.insert(4, "-Dkafka.legacy")  # 3.x brings its own SLF4J binding (reload4j)
    print(f"kafka: fetching {version} with Maven into {libs}", file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.rename(tmp, libs)
    return libs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_id():
    while True:  # Kafka's own Uuid.randomUuid() avoids a leading '-' too
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s


def metadata_brokers(port, timeout=2.0):
    """Node ids a broker reports as registered (Metadata v4, no topics), or
    None when it does not answer yet."""
    body = struct.pack(">i", 0) + b"\x00"             # topics: [], no auto-creation
    client = b"chatd-kafka-probe"
    req = struct.pack(">hhih", 3, 4, 1, len(client)) + client + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(req)) + req)
            hdr = _recv(s, 4)
            data = _recv(s, struct.unpack(">i", hdr)[0])
    except OSError:
        return None
    o = 8                                              # correlation id, throttle
    n = struct.unpack_from(">i", data, o)[0]
    o += 4
    ids = []
    for _ in range(n):
        node, hl = struct.unpack_from(">ih", data, o)
        o += 6 + hl + 4                                # host, port
        rl = struct.unpack_from(">h", data, o)[0]
        o += 2 + max(rl, 0)                            # rack
        ids.append(node)
    return sorted(ids)


def _recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf


def _die_with_parent():
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


LOG4J2 = """status = warn
appender.f.type = File
appender.f.name = f
appender.f.fileName = {log}
appender.f.layout.type = PatternLayout
appender.f.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.f.ref = f
logger.req.name = kafka.request.logger
logger.req.level = WARN
"""

LOG4J1 = """log4j.rootLogger=INFO, f
log4j.appender.f=org.apache.log4j.FileAppender
log4j.appender.f.File={log}
log4j.appender.f.layout=org.apache.log4j.PatternLayout
log4j.appender.f.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
"""


class KafkaCluster:
    """A KRaft cluster of 1 or 3 combined nodes under dir (see module doc)."""

    def __init__(self, dir, nodes=1, version=DEFAULT_VERSION, port=0, heap=HEAP,
                 die_with_parent=False, group_delay_ms=None):
        """die_with_parent: nodes get SIGKILL when this process dies (tests:
        a killed test run leaves no broker behind); not for `kafka.py up`.
        group_delay_ms: the brokers' group.initial.rebalance.delay.ms (None:
        Kafka's 3 s, as production). Tests pass 1000: each test's cluster has
        a group of its own and its classifiers are ready only once the first
        join is over, so the delay (6 s measured: the second classifier's
        join extends it by another 3) was waited out at every cluster start.
        Not 0: the first classifier would then take every partition and
        hand half over in a second, cooperative round a moment later; 1 s
        still lets both classifiers, started together, join one balanced
        first assignment, as with Kafka's default."""
        self.dir = os.path.abspath(dir)
        self.die_with_parent = die_with_parent
        state = os.path.join(self.dir, "cluster.json")
        if os.path.exists(state):
            with open(state) as f:
                self.state = json.load(f)
        else:
            ports = [port + 2 * i if port else free_port() for i in range(nodes)]
            ctl = [port + 2 * i + 1 if port else free_port() for i in range(nodes)]
            self.state = {"version": version, "nodes": nodes, "ports": ports,
                          "controller_ports": ctl, "cluster_id": _cluster_id(), "heap": heap,
                          "group_delay_ms": group_delay_ms}
        self._procs = {}     # node -> Popen, for the nodes this object started
        self._expected = {}  # node -> 1 while it should be running (start .. kill/down)
        self.version = self.state["version"]
        self.nodes = self.state["nodes"]
        self.ports = self.state["ports"]

    @property
    def bootstrap(self):
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_dir(self, i):
        return os.path.join(self.dir, f"node{i}")

    def log_path(self, i):
        return os.path.join(self.node_dir(i), "server.log")

    def _props(self, i):
        n = self.nodes
        voters = ",".join(f"{k + 1}@127.0.0.1:{p}"
                          for k, p in enumerate(self.state["controller_ports"]))
        isr = min(2, n)
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={i + 1}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.ports[i]},"
            f"CONTROLLER://127.0.0.1:{self.state['controller_ports'][i]}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.ports[i]}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.node_dir(i)}/data",
            # chatd's topics: replication from the cluster, never auto-created.
            f"default.replication.factor={n}",
            f"min.insync.replicas={isr}",
            "unclean.leader.election.enable=false",
            # chatd's classifiers use a 2 s session (the fault tests 3 s);
            # Kafka's default floor of 6 s would refuse both.
            "group.min.session.timeout.ms=1000",
        ] + ([f"group.initial.rebalance.delay.ms={self.state['group_delay_ms']}"]
             if self.state.get("group_delay_ms") is not None else []) + [
            "auto.create.topics.enable=false",
            f"offsets.topic.replication.factor={n}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={n}",
            f"transaction.state.log.min.isr={isr}",
            "transaction.state.log.num.partitions=4",
            # Small segments: tests write little, and a node restarts faster.
            "log.segment.bytes=16777216",
            "num.network.threads=2",
            "num.io.threads=4",
            "num.recovery.threads.per.data.dir=1",
            "",
        ])

    def _java(self, main, *args):
        libs = libs_dir(self.version)
        return ["java", f"-Xmx{self.state['heap']}", "-Xms64m", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-XX:-UsePerfData",
                "-Djava.awt.headless=true", "-cp", os.path.join(libs, "*"), main, *args]

    def up(self, timeout=120):
        """Fetches, formats (first time) and starts every node; waits until
        every broker sees all of them."""
        fetch(self.version)
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "cluster.json"), "w") as f:
            json.dump(self.state, f)
        for i in range(self.nodes):
            d = self.node_dir(i)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "server.properties"), "w") as f:
                f.write(self._props(i))
            with open(os.path.join(d, "log4j2.properties"), "w") as f:
                f.write(LOG4J2.format(log=self.log_path(i)))
            with open(os.path.join(d, "log4j.properties"), "w") as f:
                f.write(LOG4J1.format(log=self.log_path(i)))
        fmt = []
        for i in range(self.nodes):
            d = self.node_dir(i)
            if os.path.exists(os.path.join(d, "data", "meta.properties")):
                continue
            out = open(os.path.join(d, "format.log"), "w")
            fmt.append((i, out, subprocess.Popen(
                self._java("kafka.tools.StorageTool", "format", "-t", self.state["cluster_id"],
                           "-c", os.path.join(d, "server.properties")),
                stdout=out, stderr=subprocess.STDOUT)))
        for i, out, p in fmt:
            rc = p.wait(timeout=120)
            out.close()
            if rc != 0:
                with open(out.name) as f:
                    raise RuntimeError(f"kafka node{i}: format failed:\n{f.read()}")
        for i in range(self.nodes):
            if not self.alive(i):
                self.start(i, wait=False)
        self.wait_ready(timeout)
        return self

    def pid(self, i):
        """The node's pid if it runs and is ours: started by this object, or
        (another process, e.g. `kafka.py down`) named in its pid file with a
        command line that names our dir."""
        p = self._procs.get(i)
        if p is not None:
            return p.pid if p.poll() is None else None
        try:
            with open(os.path.join(self.node_dir(i), "pid")) as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError):
            return None
        if os.path.join(self.node_dir(i), "server.properties").encode() not in cmd:
            return None
        try:  # a zombie (killed, not yet reaped by its parent) is not alive
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    os.waitpid(pid, os.WNOHANG)
                    return None
        except (OSError, ChildProcessError):
            pass
        return pid

    def alive(self, i):
        return self.pid(i) is not None

    def start(self, i, wait=True, timeout=120):
        d = self.node_dir(i)
        log = open(os.path.join(d, "stdout.log"), "a")
        cmd = self._java("kafka.Kafka", os.path.join(d, "server.properties"))
        cmd[1:1] = [f"-Dlog4j2.configurationFile={d}/log4j2.properties",
                    f"-Dlog4j.configuration=file:{d}/log4j.properties",
                    f"-Dkafka.logs.dir={d}"]
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=d,
                             preexec_fn=_die_with_parent if self.die_with_parent else None)
        log.close()
        self._procs[i] = p
        self._expected[i] = 1
        with open(os.path.join(d, "pid"), "w") as f:
            f.write(str(p.pid))
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout=120):
        """Every running node answers and reports every running node registered."""
        deadline = time.monotonic() + timeout
        while True:
            want = [i + 1 for i in range(self.nodes) if self.alive(i)]
            seen = [metadata_brokers(self.ports[i - 1]) for i in want]
            if want and all(s == want for s in seen):
                return
            for i, p in self._procs.items():
                if p.poll() is not None and self._expected.get(i):
                    raise RuntimeError(f"kafka node{i} exited with {p.returncode}; see {self.log_path(i)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka not ready after {timeout}s (want {want}, saw {seen}); "
                                   f"see {self.dir}/node*/server.log")
            time.sleep(0.25)

    def kill(self, i, sig=signal.SIGKILL, wait=15):
        self._expected[i] = 0
        pid = self.pid(i)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while self.alive(i) and time.monotonic() < deadline:
            time.sleep(0.1)

    def down(self, grace=20):
        """SIGTERM to every node at once (controlled shutdown), SIGKILL after grace."""
        self._expected = {}
        pids = [(i, self.pid(i)) for i in range(self.nodes)]
        for _, pid in pids:
            if pid:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(self.alive(i) for i in range(self.nodes)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for i in range(self.nodes):
            self.kill(i, signal.SIGKILL)

    def tool(self, main, *args, timeout=120):
        """Runs one of Kafka's CLI classes against this cluster; returns stdout."""
        r = subprocess.run(self._java(main, *args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{main} {' '.join(args)} failed:\n{r.stdout}")
        return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["fetch", "up", "down", "status", "kill", "start"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("node", nargs="?", type=int, help="node index (0-based) for kill/start")
    ap.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    ap.add_argument("--version", default=DEFAULT_VERSION)
    ap.add_argument("--port", type=int, default=0, help="first broker port (then +2 per node); 0: free ports")
    ap.add_argument("--signal", default="KILL")
    a = ap.parse_args()
    if a.cmd == "fetch":
        print(fetch(a.version))
        return 0
    if not a.dir:
        ap.error("DIR is required")
    if a.cmd != "up" and not os.path.exists(os.path.join(a.dir, "cluster.json")):
        print(f"kafka: no cluster in {a.dir}", file=sys.stderr)
        return 0 if a.cmd == "down" else 1
    c = KafkaCluster(a.dir, a.nodes, a.version, a.port)
    if a.cmd == "up":
        c.up()
        with open(os.path.join(c.dir, "bootstrap"), "w") as f:
            f.write(c.bootstrap + "\n")
        print(c.bootstrap)
    elif a.cmd == "down":
        c.down()
    elif a.cmd == "status":
        for i in range(c.nodes):
            pid = c.pid(i)
            print(f"node{i} port={c.ports[i]} pid={pid or '-'} "
                  f"brokers={metadata_brokers(c.ports[i]) if pid else '-'}")
    elif a.cmd == "kill":
        c.kill(a.node, getattr(signal, "SIG" + a.signal))
    elif a.cmd == "start":
        c.start(a.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
