"""Fault-injection harness: PostgreSQL that can be stopped and started, a
multi-process chatd cluster that can be killed and restarted piece by piece,
and reconnecting clients that record everything they sent and received for
the checker (checker.py).

Used by the pytest suite (conftest.py) and by soak.py. Everything is bounded
in time and on 127.0.0.1 only. Process and WebSocket helpers come from
tests/integration/chatlib.py.
"""
import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import psycopg2  # noqa: E402
import redis as redislib  # noqa: E402
import websockets.exceptions  # noqa: E402

import chatlib  # noqa: E402
import kafkamode  # noqa: E402
from chatlib import Proc, free_port, start_redis, uid, wait_ready  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")
PG_BIN = "/usr/lib/postgresql/15/bin"
JWT_SECRET = "fault-test-secret-" + "f" * 24
READY_TIMEOUT = float(os.environ.get("CHATD_TEST_READY_TIMEOUT", "45"))
GW_TTL = 3
SEND_PARTITIONS = 8
KAFKA_TEST_OPTS = ["--kafka-opt=session.timeout.ms=3000",
                   "--kafka-opt=heartbeat.interval.ms=300"]


def ready_timeout(argv):
    """READY_TIMEOUT, stretched for a consumer with a longer session: the
    embedded broker (librdkafka's mock) holds each rebalance round for the
    session timeout less 1 s, and a member that joins after the first round
    takes up to three cooperative rounds before it owns partitions (seen in
    CI: 3 x 14 s with session.timeout.ms=15000, ready after 45 s)."""
    session_ms = 3000
    for a in argv:
        if a.startswith("--kafka-opt=session.timeout.ms="):
            session_ms = int(a.rsplit("=", 1)[1])
    return max(READY_TIMEOUT, 10 + 4 * session_ms / 1000)


def sanitized_build(path=CHATD_BIN):
    """True for an ASan build (slower; its allocator keeps freed memory)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = sanitized_build()


def has_flag(flag, path=CHATD_BIN):
    try:
        r = subprocess.run([path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return f"--{flag} ".encode() in r.stdout


def chatd_env(extra=None):
    env = dict(os.environ)
    env["CHATD_JWT_SECRET"] = JWT_SECRET
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    for k in list(env):
        if k.startswith("CHATD_") and k != "CHATD_JWT_SECRET":
            del env[k]
    if extra:
        env.update(extra)
    return env


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# PostgreSQL (one per session; a database per cluster; can be stopped)

class Postgres(chatlib.PGClient):
    def __init__(self, workdir, name="pgdata", standby_of=None):
        """standby_of: a running Postgres this one streams from, as a hot
        standby made with pg_basebackup -R (name: a data directory of its own)."""
        self.workdir = workdir
        self.logname = "postgres" if name == "pgdata" else name
        self.datadir = os.path.join(workdir, name)
        os.makedirs(self.datadir, mode=0o700)
        shutil.chown(self.datadir, "postgres", "postgres")
        if standby_of:
            argv = [f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(standby_of.port),
                    "-U", "postgres", "-D", self.datadir, "-R", "-X", "stream", "--no-sync"]
        else:
            argv = [f"{PG_BIN}/initdb", "-D", self.datadir, "-A", "trust", "-U",
                    "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]
        r = subprocess.run(argv, user="postgres", group="postgres", extra_groups=[],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{r.stdout.decode(errors='replace')}")
        self.port = free_port()
        self.argv = [f"{PG_BIN}/postgres", "-D", self.datadir, "-k", self.datadir,
                     "-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-F",
                     "-c", "fsync=off", "-c", "max_connections=300"]
        self.proc = None
        self.start()

    def start(self, timeout=30):
        self.proc = Proc(self.logname, self.argv, self.workdir, user="postgres")
        deadline = now() + timeout
        while True:
            try:
                psycopg2.connect(self.conninfo(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if not self.proc.alive() or now() > deadline:
                    raise RuntimeError(f"postgres did not start\n{self.proc.tail()}")
                time.sleep(0.1)

    def stop_fast(self):
        """pg_ctl stop -m fast, as the postgres user (a fault, not teardown)."""
        self.proc.stopping = True
        r = subprocess.run([f"{PG_BIN}/pg_ctl", "stop", "-D", self.datadir, "-m", "fast",
                            "-w", "-t", "30"], user="postgres", group="postgres",
                           extra_groups=[], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=40)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {r.stdout.decode(errors='replace')}")
        self.proc.wait_exit(10)

    def promote(self):
        """pg_ctl promote: this standby becomes a primary."""
        r = subprocess.run([f"{PG_BIN}/pg_ctl", "promote", "-D", self.datadir, "-w", "-t", "30"],
                           user="postgres", group="postgres", extra_groups=[],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=40)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed: {r.stdout.decode(errors='replace')}")

    def close(self):
        if self.proc:
            self.proc.stop(sig=signal.SIGINT, timeout=20)


class PostgresPair(chatlib.PGClient):
    """A primary and a streaming hot standby. conninfo() names both with
    target_session_attrs=read-write, as an operator would (docs/DEPLOY.md):
    libpq (chatd's and the test's psycopg2) finds whichever is the primary."""

    def __init__(self, workdir, name="pgha"):
        self.primary = self.standby = None
        try:
            self.primary = Postgres(workdir, f"{name}-a")
            self.standby = Postgres(workdir, f"{name}-b", standby_of=self.primary)
        except BaseException:
            self.close()
            raise

    def conninfo(self, db="postgres"):
        return (f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} "
                f"user=postgres dbname={db} target_session_attrs=read-write")

    def wait_replayed(self, timeout=30):
        """Until the standby has replayed everything the primary wrote so far."""
        lsn = self.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = now() + timeout
        while now() < deadline:
            if self.standby.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0]:
                return
            time.sleep(0.05)
        raise AssertionError(f"standby did not replay {lsn} within {timeout}s")

    def close(self):
        for p in (self.standby, self.primary):
            if p:
                p.close()


# --------------------------------------------------------------------------
# Redis with Sentinel: a master, a replica, three Sentinels (loopback)

SENTINEL_MASTER = "mymaster"


class SentinelRedis:
    """What Cluster runs instead of one Redis for redis_ha=True. Sentinels
    judge a master down after down_ms (1 s: a short test; production keeps
    Redis's 30 s or a few seconds, docs/DEPLOY.md)."""

    def __init__(self, logdir, down_ms=1000):
        self.logdir = logdir
        self.nodes = []          # Proc of each redis-server (master first)
        self.sentinels = []
        try:
            self._start(down_ms)
        except BaseException:
            self.stop(timeout=5)
            raise

    def _start(self, down_ms):
        a = start_redis(self.logdir, name="redis-a", args=["--dir", self.logdir,
                                                           "--dbfilename", "redis-a.rdb"])
        self.nodes.append(a)
        b = start_redis(self.logdir, name="redis-b",
                        args=["--dir", self.logdir, "--dbfilename", "redis-b.rdb",
                              "--replicaof", "127.0.0.1", str(a.port)])
        self.nodes.append(b)
        ports = []
        for i in range(3):
            port = free_port()
            conf = os.path.join(self.logdir, f"sentinel{i}.conf")
            with open(conf, "w") as f:  # Sentinel rewrites its file: one each
                f.write(f"port {port}\nbind 127.0.0.1\ndir {self.logdir}\n"
                        f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {a.port} 2\n"
                        f"sentinel down-after-milliseconds {SENTINEL_MASTER} {down_ms}\n"
                        f"sentinel failover-timeout {SENTINEL_MASTER} 4000\n"
                        f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n")
            p = Proc(f"sentinel{i}", ["redis-server", conf, "--sentinel"], self.logdir)
            p.port = port
            self.sentinels.append(p)
            ports.append(port)
        self.sentinel_list = ",".join(f"127.0.0.1:{p}" for p in ports)
        # A failover needs the replica synced and the Sentinels to know the
        # replica and each other (hello messages every 2 s).
        deadline = now() + 30
        while True:
            try:
                ok = redislib.Redis(host="127.0.0.1", port=b.port, socket_timeout=1).info(
                    "replication").get("master_link_status") == "up"
                for s in self.sentinels:
                    sc = self._sentinel(s.port)
                    ok = ok and len(sc.execute_command("SENTINEL", "REPLICAS", SENTINEL_MASTER)) == 1 \
                        and len(sc.execute_command("SENTINEL", "SENTINELS", SENTINEL_MASTER)) == 2
                if ok:
                    return
            except Exception:
                pass
            if now() > deadline:
                raise RuntimeError("Sentinels did not see the replica and each other within 30 s")
            time.sleep(0.1)

    @staticmethod
    def _sentinel(port):
        return redislib.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def chatd_args(self):
        # --redis still gives the credentials and db; its host:port is a
        # port nothing listens on, so only the Sentinels can lead chatd to Redis.
        return [f"--redis=redis://127.0.0.1:{free_port()}/0",
                f"--redis-sentinels={self.sentinel_list}",
                f"--redis-master-name={SENTINEL_MASTER}"]

    def master_port(self):
        """The master's port as the Sentinels' majority says."""
        votes = {}
        for s in self.sentinels:
            if s.alive():
                try:
                    _, port = self._sentinel(s.port).execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
                    votes[int(port)] = votes.get(int(port), 0) + 1
                except Exception:
                    pass
        return max(votes, key=votes.get) if votes else None

    @property
    def port(self):
        return self.master_port()

    def kill_master(self):
        port = self.master_port()
        node = next(n for n in self.nodes if n.port == port)
        node.stop(signal.SIGKILL, 10)
        return port

    def wait_failover(self, old_port, timeout=30):
        """Until the Sentinels name another master and it says ROLE master."""
        deadline = now() + timeout
        while now() < deadline:
            port = self.master_port()
            if port and port != old_port:
                try:
                    role = redislib.Redis(host="127.0.0.1", port=port, socket_timeout=1).execute_command("ROLE")
                    if role[0] in (b"master", "master"):
                        return port
                except Exception:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"no failover away from port {old_port} within {timeout}s")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        for p in self.sentinels + self.nodes:
            p.stop(sig, timeout)



# --------------------------------------------------------------------------
# the cluster: 1 broker, 2 classifiers, 2 gateways, its own Redis and database

class Cluster:
    def __init__(self, workdir, pg, name, gw_args=(), cl_args=(), broker_args=(),
                 gw_env=None, n_gw=2, n_cl=2, drain=8, gw_args_by_id=None, kafka=None,
                 receive_topic_partitions=None, kafka_opts=None, redis_ha=False):
        """kafka: a real Kafka (kafkamode) shared by the session; this cluster
        then uses topics and a group of its own, and has no broker process.
        kafka_opts: the --kafka-opt flags of every chatd process (None: the
        suite's KAFKA_TEST_OPTS; [] runs the settings chatd ships).
        receive_topic_partitions: (real Kafka) an operator created the
        receive topic with this many partitions before chatd started.
        redis_ha: Redis behind Sentinels (SentinelRedis) instead of one server."""
        self.redis_ha = redis_ha
        self.receive_topic_partitions = receive_topic_partitions
        self.name = name
        self.kafka = kafka
        prefix = re.sub(r"[^A-Za-z0-9._-]", "-", name)[-180:]
        self.topic_send = f"{prefix}-send" if kafka else "chat-send"
        self.topic_receive = f"{prefix}-receive" if kafka else "chat-receive"
        self.kafka_prefix = prefix
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.pg = pg
        self.dbname = "f_" + uid().replace("-", "_")
        self.conninfo = pg.create_db(self.dbname)
        self.gw_args, self.cl_args = list(gw_args), list(cl_args)
        self.broker_args = list(broker_args)
        self.gw_env = gw_env
        self.kafka_opts = KAFKA_TEST_OPTS if kafka_opts is None else list(kafka_opts)
        self.gw_args_by_id = gw_args_by_id or {}
        self.n_gw, self.n_cl, self.drain = n_gw, n_cl, drain
        self.procs = {}      # name -> Proc (current life)
        self.ports = {}      # name -> port
        self.retired = []    # earlier lives
        self.redis = None
        self.gw_ports = []

    # -- start / stop

    def _chatd(self, name, args, env=None):
        if not os.access(CHATD_BIN, os.X_OK):
            raise RuntimeError(f"chatd binary not found at {CHATD_BIN} (set CHATD_BIN or run make)")
        p = Proc(name, [CHATD_BIN] + list(args), self.dir, env=env or chatd_env(),
                 sanitized=True, expect_clean_exit=True)
        self.procs[name] = p
        return p

    def start(self):
        self.redis = SentinelRedis(self.dir) if self.redis_ha else start_redis(self.dir)
        redis_args = self.redis.chatd_args() if self.redis_ha else [f"--redis={self.redis.url}"]
        bootstrap = self.bootstrap_path()
        if self.kafka and self.receive_topic_partitions:
            self.kafka.tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                            self.kafka.bootstrap, "--create", "--topic", self.topic_receive,
                            "--partitions", str(self.receive_topic_partitions))
        if self.kafka:
            kargs = kafkamode.chatd_args(self.kafka, prefix=self.kafka_prefix) + [
                f"--send-partitions={SEND_PARTITIONS}"]
        else:
            self.ports["broker"] = free_port()
            self._chatd("broker", ["--role=broker", f"--listen=127.0.0.1:{self.ports['broker']}",
                                   f"--kafka-bootstrap-file={bootstrap}",
                                   f"--send-partitions={SEND_PARTITIONS}", "--receive-partitions=8",
                                   "--log-level=info"] + self.broker_args)
            kargs = ["--kafka=embedded", f"--kafka-bootstrap-file={bootstrap}"]
        common = kargs + redis_args + [f"--pg={self.conninfo}", "--log-level=info",
                  "--receive-partitions=8", f"--drain={self.drain}"] + self.kafka_opts
        for i in range(self.n_cl):
            n = f"classifier{i}"
            self.ports[n] = free_port()
            self._chatd(n, ["--role=classifier", f"--listen=127.0.0.1:{self.ports[n]}"]
                        + common + self.cl_args)
        for i in range(self.n_gw):
            n = f"gateway{i}"
            self.ports[n] = free_port()
            self.gw_ports.append(self.ports[n])
            env = chatd_env(self.gw_env) if self.gw_env else None
            self._chatd(n, ["--role=gateway", f"--gateway-id={i}",
                            f"--listen=127.0.0.1:{self.ports[n]}", "--dev-tokens",
                            f"--gateway-ttl={GW_TTL}", "--rate=100000", "--rate-burst=100000"]
                        + common + self.gw_args + list(self.gw_args_by_id.get(i, ())),
                        env=env)
        for n, p in self.procs.items():
            wait_ready(p, self.ports[n], ready_timeout(p.argv))
        return self

    def stop(self):
        """Stops everything (gateways and classifiers first, then the broker);
        returns the problems found (unclean exits, sanitizer reports)."""
        others = [p for n, p in self.procs.items() if n != "broker" and p.alive()]
        for p in others:
            p.send_signal(signal.SIGTERM)
        for p in others:
            if p.p.returncode is None:
                p.wait_exit(25)
        if "broker" in self.procs:
            self.procs["broker"].stop(timeout=25)
        for p in self.procs.values():
            p._close_log()
        if self.redis:
            self.redis.stop(timeout=10)
        return self.check()

    def check(self):
        return [x for x in (p.check() for p in list(self.procs.values()) + self.retired) if x]

    def tails(self, n=25):
        return "\n".join(f"--- {p.name} ({p.logpath}) ---\n{p.tail(n)}"
                         for p in list(self.procs.values()) + self.retired if p.sanitized)

    # -- faults

    def kill(self, name, sig=signal.SIGKILL, timeout=10):
        p = self.procs[name]
        p.expect_clean_exit = False
        p.stop(sig, timeout)
        return p

    def terminate(self, name):
        """SIGTERM; the caller waits for the exit."""
        p = self.procs[name]
        p.send_signal(signal.SIGTERM)
        return p

    def restart(self, name, wait=True):
        old = self.procs[name]
        assert not old.alive(), f"{name} still running"
        old._close_log()
        self.retired.append(old)
        gen = sum(1 for p in self.retired if p.name.split("~")[0] == name) + 1
        new = Proc(f"{name}~{gen}", old.argv, self.dir, env=old.env, sanitized=True,
                   expect_clean_exit=True)
        self.procs[name] = new
        if wait:
            wait_ready(new, self.ports[name], ready_timeout(new.argv))
        return new

    def add_gateway(self, i, wait=True):
        """Scale-out: gateway i joins the running cluster, with gateway 0's
        settings on a port of its own."""
        n = f"gateway{i}"
        self.ports[n] = free_port()
        argv = [a for a in self.procs["gateway0"].argv[1:]
                if not a.startswith(("--gateway-id=", "--listen="))]
        p = self._chatd(n, argv + [f"--gateway-id={i}", f"--listen=127.0.0.1:{self.ports[n]}"],
                        env=self.procs["gateway0"].env)
        if wait:
            wait_ready(p, self.ports[n], READY_TIMEOUT)
        self.gw_ports.append(self.ports[n])
        return p

    def wait_all_ready(self, timeout=READY_TIMEOUT):
        for n, p in self.procs.items():
            wait_ready(p, self.ports[n], timeout)

    def redis_restart_empty(self, down_s=0.0):
        """SIGKILL Redis, then start an empty one on the same port."""
        port = self.redis.port
        self.redis.stop(signal.SIGKILL, 10)
        if down_s:
            time.sleep(down_s)
        self.redis = start_redis(self.dir, name="redis", port=port)

    def redis_client(self):
        return redislib.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=5,
                              decode_responses=True)

    def broker_fault(self, path, body=None):
        st, _, data = chatlib.http_request(self.ports["broker"], "POST", path, body=body)
        return st, data

    def produce_send(self, msgs, ts=None):
        """msgs: [(room, user, cid, text)] -> chat-send records exactly as a
        gateway writes them (key = room, headers v=1 t=m), through kcat, in
        one producer session (so a classifier batch can hold thousands).
        ts: the gateway's receive time in ms (default: now).
        Returns the ids; raises if kcat failed (some may still be stored)."""
        import json
        import uuid
        lines, ids = [], []
        ts = int(time.time() * 1000) if ts is None else int(ts)
        for room, user, cid, text in msgs:
            mid = uuid.uuid4().hex
            ids.append(mid)
            val = json.dumps({"id": mid, "from": user, "cid": cid, "text": text, "ts": ts,
                              "gw": 0}, separators=(",", ":"))
            lines.append(f"{room}\t{val}")
        data = ("\n".join(lines) + "\n").encode()
        subprocess.run(["kcat", "-P", "-b", self.brokers(), "-t", self.topic_send, "-K", "\t",
                        "-H", "v=1", "-H", "t=m", "-X", "acks=all", "-z", "none"],
                       input=data, check=True, timeout=60, capture_output=True)
        return ids

    def stored_rows(self, rooms):
        """(room, seq, id, user, body) of every stored message of rooms."""
        return self.query("SELECT room, seq, id, user_id, body FROM messages "
                          "WHERE room = ANY(%s)", (list(rooms),))

    # -- observation

    def bootstrap_path(self):
        """The file the embedded broker writes its address to."""
        return os.path.join(self.dir, "bootstrap")

    def brokers(self):
        """The Kafka bootstrap address (for kcat): the embedded broker's or the real one."""
        if self.kafka:
            return self.kafka.bootstrap
        with open(self.bootstrap_path()) as f:
            return f.read().strip()

    def receive_offsets(self, partitions=(0, 1)):
        """End offset of each chat-receive partition (kcat -Q, latest), read
        from the embedded broker: how many records each gateway was sent."""
        args = ["kcat", "-b", self.brokers(), "-Q"]
        for p in partitions:
            args += ["-t", f"{self.topic_receive}:{p}:-1"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
        ends = {}
        for line in out.splitlines():
            # chat-receive [1] offset 3
            parts = line.split()
            if len(parts) == 4 and parts[0] == self.topic_receive and parts[2] == "offset":
                ends[int(parts[1].strip("[]"))] = int(parts[3])
        missing = set(partitions) - set(ends)
        assert not missing, f"kcat -Q gave no offset for partitions {missing}: {out!r}"
        return ends

    def metrics(self, name):
        return chatlib.read_metrics(self.ports[name])

    def metric(self, name, metric, **labels):
        return chatlib.metric_sum(self.metrics(name), metric, **labels)

    def rss_kb(self, name):
        with open(f"/proc/{self.procs[name].pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def query(self, sql, args=()):
        return self.pg.query(sql, args, db=self.dbname)

    def log_count(self, name, *needles):
        """Lines of every life of process `name` containing all needles."""
        n = 0
        for p in self.retired + [self.procs[name]]:
            if p.name.split("~")[0] != name:
                continue
            with open(p.logpath, "rb") as f:
                for line in f:
                    if all(x.encode() in line for x in needles):
                        n += 1
        return n

    def token(self, user):
        return chatlib.make_token(user, JWT_SECRET, exp_in=86400)


# --------------------------------------------------------------------------
# clients

STALL_MIN = 0.3          # a pause in a room's progress longer than this is a stall
REPLY_TIMEOUT = 25.0     # > message.timeout.ms (10 s): no reply by then is a hang
CONNECT_TIMEOUT = 10.0


class Disconnected(Exception):
    pass


def send_outcome(reply):
    """How a client records a send's reply (docs/PROTOCOL.md): an
    `unavailable` that does not say "stored":"no" may have been stored, and
    is recorded as "unavailable(maybe)"."""
    if not isinstance(reply, dict):
        return "closed"
    if reply.get("op") == "ack":
        return "ack"
    code = reply.get("code")
    if code == "unavailable" and reply.get("stored") != "no":
        return "unavailable(maybe)"
    return code or str(reply.get("op"))


def unavailable(outcome):
    return outcome.startswith("unavailable")


class SendRecord:
    __slots__ = ("user", "room", "cid", "text", "idx", "ordered", "outcomes", "acked",
                 "ack_id", "t_first", "t_ack", "gave_up")

    def __init__(self, user, room, cid, text, idx, ordered=True):
        self.user, self.room, self.cid, self.text, self.idx = user, room, cid, text, idx
        self.ordered = ordered
        self.outcomes = []
        self.acked = False
        self.ack_id = None
        self.t_first = now()
        self.t_ack = None
        self.gave_up = False

    @property
    def attempts(self):
        return len(self.outcomes)


class Run:
    """Everything one test (or the soak) records: clients, faults, hangs."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.clients = []
        self.faults = []        # [label, t_fault, t_restore]
        self.hangs = []         # descriptions of requests/handshakes that got no answer
        self.problems = []      # unexpected replies or client-side contract violations
        self.membership_checked = 0   # (client, room) pairs probe_membership asked
        self.membership_diff = []     # where a gateway's membership differed from PostgreSQL's
        self.t0 = now()

    def client(self, user=None, rooms=(), **kw):
        c = FClient(self, user or uid("u"), list(rooms), **kw)
        self.clients.append(c)
        return c

    def fault(self, label):
        f = [label, now(), None]
        self.faults.append(f)
        return f

    @staticmethod
    def restored(f):
        f[2] = now()

    def recovery(self):
        """Seconds from each fault until every client progressed again in every
        room (a stall that spans the fault, or a reconnect + sync after it);
        the largest over all faults, and the list per fault."""
        per = []
        for label, tf, tr in self.faults:
            tr = tr if tr is not None else tf
            worst = 0.0
            for c in self.clients:
                if not c.track_stalls:
                    continue
                for st in c.stalls.values():
                    for a, b in st:
                        if b >= tf and a <= tr + 0.3:
                            worst = max(worst, b - tf)
            for c in self.clients:
                for td, trec in c.recoveries:
                    if tf <= td <= tr + 1.0 and trec is not None:
                        worst = max(worst, trec - tf)
            per.append((label, worst))
        return max((w for _, w in per), default=0.0), per

    async def warm_up(self, timeout=30, extra=1.0):
        """Waits until traffic reaches every client in every room (the
        classifier group settles a few seconds after the processes are
        ready), then `extra` seconds of steady traffic."""
        await wait_for(lambda: all(c.contig[r] > 0 for c in self.clients for r in c.rooms),
                       timeout, "traffic delivered to every client in every room")
        await asyncio.sleep(extra)

    def stored_keys(self):
        rows = self.cluster.query("SELECT room, user_id, cid FROM messages")
        return {tuple(r) for r in rows}

    async def settle(self, timeout=60):
        """Waits (bounded) until every acked message is in PostgreSQL: an ack
        means Kafka has it; sequencing and storing follow. Returns the
        seconds waited; on timeout returns and lets the checker report."""
        t = now()
        want = {(s.room, s.user, s.cid) for c in self.clients for s in c.sends if s.acked}
        while True:
            have = await asyncio.to_thread(self.stored_keys)
            if want <= have or now() - t > timeout:
                return now() - t
            await asyncio.sleep(0.2)

    def stall_report(self, fault, limit=10):
        """The longest stalls around a fault: (seconds after the fault the client
        progressed again, user, room, port) — for diagnostics."""
        label, tf, tr = fault
        tr = tr if tr is not None else tf
        out = []
        for c in self.clients:
            for room, st in c.stalls.items():
                for a, b in st:
                    if b >= tf and a <= tr + 0.3:
                        out.append((round(b - tf, 2), round(a - tf, 2), c.user, room, c.port))
        return sorted(out, reverse=True)[:limit]

    async def converge(self, timeout=60, settle=60):
        """Acked messages stored; every client online, then `sync` of every
        room from its last seq; then membership as the gateways enforce it
        is compared with PostgreSQL's (probe_membership)."""
        await self.settle(settle)
        await asyncio.wait_for(asyncio.gather(*(c.catch_up() for c in self.clients)), timeout)
        await self.probe_membership("end: ")

    def pg_members(self, rooms):
        rows = self.cluster.query("SELECT room, user_id FROM members WHERE room = ANY(%s)",
                                  (list(rooms),))
        return {(r, u) for r, u in rows}

    async def probe_membership(self, label="", timeout=10, concurrency=200):
        """Membership as each client's gateway enforces it equals
        PostgreSQL's (issue 22). `presence` is refused with `not_member`
        exactly when the gateway's local index (what `send` and fan-out use)
        does not have the user in the room, and changes nothing; it is asked
        for each online client's rooms and one room of the run it is not in.
        A change reaches other gateways within a Kafka hop and a database
        round trip, so mismatches are asked again for `timeout` s. Adds to
        self.membership_checked and self.membership_diff (for checker.py);
        call it after any step (label names the step); returns the number
        of mismatches. A client's `probe_rooms` are asked too."""
        all_rooms = sorted({r for c in self.clients
                            for r in list(c.rooms) + list(getattr(c, "probe_rooms", ()))})
        sem = asyncio.Semaphore(concurrency)

        def pairs_of(c, i):
            others = [r for r in all_rooms if r not in c.rooms]
            mine = list(dict.fromkeys(list(c.rooms) + list(getattr(c, "probe_rooms", ()))))
            others = [r for r in others if r not in mine]
            return [(c, r) for r in mine] + ([(c, others[i % len(others)])] if others else [])

        async def local(c, room):
            async with sem:
                for _ in range(50):  # rate_limited: the user's requests in flight are capped
                    try:
                        r = await c.request("presence", wait_online=False, timeout=10, room=room)
                    except Disconnected:
                        return None
                    if r.get("code") != "rate_limited":
                        break
                    await asyncio.sleep(0.1)
            return not (r.get("op") == "error" and r.get("code") == "not_member")

        todo = [p for i, c in enumerate(self.clients) if not getattr(c, "excluded", False)
                for p in pairs_of(c, i)]
        deadline = now() + timeout
        answered = None
        while True:
            pg = await asyncio.to_thread(self.pg_members, all_rooms)
            got = await asyncio.gather(*(local(c, r) for c, r in todo))
            if answered is None:
                answered = sum(g is not None for g in got)
            diff = [(c, r, g) for (c, r), g in zip(todo, got)
                    if g is not None and g != ((r, c.user) in pg)]
            if not diff or now() > deadline:
                self.membership_checked += answered
                self.membership_diff += [f"{label}{c.user}@{c.port} room {r}: gateway says "
                                         f"{'member' if g else 'not a member'}, PostgreSQL "
                                         f"{'not a member' if g else 'member'}"
                                         for c, r, g in diff]
                return len(diff)
            todo = [(c, r) for c, r, _ in diff]
            await asyncio.sleep(0.5)

    async def close(self):
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


class FClient:
    """A client that behaves as PROTOCOL.md asks: reconnects with jittered
    backoff to any gateway, `sync`s each room from its last seq after a
    reconnect and on a gap, dedups by (room, seq). Records every send and the
    seq -> id of every message received."""

    def __init__(self, run, user, rooms, first_backoff=0.5, max_backoff=2.0, track_stalls=True,
                 reconnect=True):
        self.run = run
        self.user = user
        self.rooms = list(rooms)
        self.token = run.cluster.token(user)
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.track_stalls = track_stalls
        self.reconnect = reconnect
        self.conn = None
        self.port = None
        self.online = asyncio.Event()
        self.stopping = False
        self.got = {r: {} for r in self.rooms}      # room -> seq -> id
        self.contig = {r: 0 for r in self.rooms}    # every seq <= contig received
        self.last_adv = {r: now() for r in self.rooms}
        self.stalls = {r: [] for r in self.rooms}
        self.live = {r: 0 for r in self.rooms}      # msgs received live
        self.syncing = {}
        self.sync_again = set()
        self.reconnects = 0
        self.disconnects = []    # (t, close code)
        self.recoveries = []     # (t_disconnect, t_synced)
        self.handshake_503 = 0
        self.unavailable = 0     # `unavailable` replies seen (any request)
        self.sends = []
        self._n = 0
        self._sup = None
        self.tasks = set()

    # -- connection

    async def start(self, gw=None, join=True, sync=True):
        ports = self.run.cluster.gw_ports
        port = ports[gw] if gw is not None else random.choice(ports)
        self.conn = await chatlib.Client.connect(port, self.token, timeout=CONNECT_TIMEOUT,
                                                 on_event=self._on_event)
        self.port = port
        self.online.set()
        if join:
            for r in self.rooms:
                reply = await self.request("join", room=r)
                assert reply.get("op") == "ok", f"{self.user}: join {r}: {reply}"
        if self.reconnect:
            self._sup = asyncio.ensure_future(self._supervise())
        if sync:
            try:
                for r in self.rooms:
                    await self.sync_room(r)
            except Disconnected:
                if not self.reconnect:
                    raise       # else the supervisor reconnects and syncs
        return self

    async def _connect_any(self, deadline):
        attempt = 0
        code = self.disconnects[-1][1] if self.disconnects else None
        while not self.stopping:
            if attempt == 0:
                delay = random.uniform(0, 0.1) if code == 1012 else \
                    random.uniform(0, self.first_backoff)
            else:
                delay = random.uniform(0, min(self.max_backoff, self.first_backoff * 2 ** attempt))
            await asyncio.sleep(delay)
            ports = list(self.run.cluster.gw_ports)
            random.shuffle(ports)
            for port in ports:
                if now() > deadline:
                    raise Disconnected(f"{self.user}: could not reconnect in time")
                try:
                    conn = await chatlib.Client.connect(port, self.token, timeout=CONNECT_TIMEOUT,
                                                        on_event=self._on_event)
                    self.port = port
                    return conn
                except websockets.exceptions.InvalidStatusCode as e:
                    if e.status_code != 503:
                        self.run.problems.append(f"{self.user}: handshake HTTP {e.status_code}")
                    self.handshake_503 += 1
                except asyncio.TimeoutError:
                    self.run.hangs.append(f"{self.user}: handshake on {port} timed out "
                                          f"({CONNECT_TIMEOUT}s)")
                except (OSError, websockets.exceptions.InvalidHandshake,
                        websockets.exceptions.ConnectionClosed, AssertionError):
                    pass
            attempt += 1
        raise Disconnected("stopping")

    async def _supervise(self):
        while not self.stopping:
            conn = self.conn
            await conn.closed.wait()
            if self.stopping:
                return
            t = now()
            self.online.clear()
            self.disconnects.append((t, conn.ws.close_code))
            rec = [t, None]
            self.recoveries.append(rec)
            try:
                self.conn = await self._connect_any(now() + 90)
            except Disconnected as e:
                if not self.stopping:
                    self.run.problems.append(str(e))
                return
            self.reconnects += 1
            self.online.set()
            try:
                for r in self.rooms:
                    await self.sync_room(r)
                rec[1] = now()
            except Disconnected:
                continue   # closed again: the loop reconnects

    async def close(self):
        self.stopping = True
        for t in list(self.tasks):
            t.cancel()
        if self._sup:
            self._sup.cancel()
        if self.conn:
            await self.conn.close()

    async def kill_conn(self):
        """Drops this client's connection (the supervisor reconnects)."""
        if self.conn:
            self.conn.ws.transport.abort()

    # -- events

    def _on_event(self, obj):
        if not isinstance(obj, dict) or obj.get("op") != "msg":
            return True
        r = obj.get("room")
        if r in self.got:
            self.live[r] += 1
            self._record(r, obj.get("seq"), obj.get("id"))
            if any(s > self.contig[r] + 1 for s in self._tail(r)):
                self._want_sync(r)
        return True

    def _tail(self, r):
        g = self.got[r]
        c = self.contig[r]
        if len(g) == c:
            return ()
        return [s for s in g if s > c]

    def _record(self, r, seq, mid):
        g = self.got[r]
        old = g.get(seq)
        if old is not None:
            if old != mid:
                self.run.problems.append(f"{self.user}: room {r} seq {seq} received with two "
                                         f"ids {old} and {mid}")
            return
        g[seq] = mid
        c = self.contig[r]
        while c + 1 in g:
            c += 1
        if c != self.contig[r]:
            self.contig[r] = c
            t = now()
            if t - self.last_adv[r] > STALL_MIN:
                self.stalls[r].append((self.last_adv[r], t))
            self.last_adv[r] = t

    def _want_sync(self, r):
        if r in self.syncing:
            self.sync_again.add(r)
            return
        t = asyncio.ensure_future(self._gap_sync(r))
        self.syncing[r] = t
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _gap_sync(self, r):
        try:
            while True:
                self.sync_again.discard(r)
                try:
                    await self.sync_room(r, wait_online=False)
                except Disconnected:
                    return
                if r not in self.sync_again:
                    return
        finally:
            self.syncing.pop(r, None)

    # -- requests

    async def request(self, op, timeout=REPLY_TIMEOUT, wait_online=True, **fields):
        """One request on the current connection; its reply. Raises
        Disconnected when the connection is (or goes) away."""
        deadline = now() + 90
        while not self.online.is_set() or self.conn.closed.is_set():
            # closed but the supervisor has not noticed yet: give it the loop
            if not wait_online:
                raise Disconnected("offline")
            if now() > deadline:
                raise Disconnected(f"{self.user}: offline for 90 s")
            if self.online.is_set():
                await asyncio.sleep(0.02)
                continue
            try:
                await asyncio.wait_for(self.online.wait(), max(0.01, deadline - now()))
            except asyncio.TimeoutError:
                pass
        conn = self.conn
        obj = {"op": op, "rid": conn.next_rid()}
        obj.update(fields)
        fut = conn.issue(obj)
        try:
            await conn.ws.send(chatlib.json.dumps(obj))
        except websockets.exceptions.ConnectionClosed:
            conn.pending.pop(chatlib._rid_key(obj["rid"]), None)
            raise Disconnected("closed") from None
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.pending.pop(chatlib._rid_key(obj["rid"]), None)
            if conn.closed.is_set():
                raise Disconnected("closed") from None
            self.run.hangs.append(f"{self.user}@{self.port}: no reply within {timeout}s to "
                                  f"{op} {fields.get('room')}")
            raise Disconnected("hang") from None
        except chatlib.ChatError:
            raise Disconnected("closed") from None

    async def sync_room(self, r, wait_online=True, deadline_s=60):
        """`sync` from the last contiguous seq until `more` is false; retries
        `unavailable` with jittered backoff."""
        after = self.contig[r]
        deadline = now() + deadline_s
        backoff = 0.1
        while True:
            reply = await self.request("sync", wait_online=wait_online, room=r, after=after,
                                       limit=1000)
            if reply.get("op") == "error":
                if reply.get("code") == "unavailable" and now() < deadline:
                    self.unavailable += 1
                    await asyncio.sleep(random.uniform(backoff / 2, backoff))
                    backoff = min(2.0, backoff * 2)
                    continue
                self.run.problems.append(f"{self.user}: sync {r} after {after}: {reply}")
                raise Disconnected("sync failed")
            for m in reply["messages"]:
                self._record(r, m["seq"], m["id"])
            if not reply.get("more"):
                return
            after = reply["messages"][-1]["seq"]

    async def catch_up(self):
        if not self.online.is_set():
            await asyncio.wait_for(self.online.wait(), 60)
        for r in self.rooms:
            for _ in range(5):
                try:
                    await self.sync_room(r)
                    break
                except Disconnected:
                    await asyncio.sleep(0.1)

    def _new_send(self, room, text, ordered=True):
        self._n += 1
        rec = SendRecord(self.user, room, f"{self.user}.{self._n}", text, self._n, ordered)
        self.sends.append(rec)
        return rec

    async def send_msg(self, room, text, resend=True, deadline_s=60, rec=None):
        """Sends one message with a cid, resending with the same cid after a
        lost connection or (if resend) `unavailable`, until acked. Always a
        cid: an `unavailable` send may have been stored, and only the cid
        makes the resend harmless."""
        rec = rec or self._new_send(room, text)
        deadline = now() + deadline_s
        while now() < deadline and not self.stopping:
            try:
                reply = await self.request("send", room=room, text=text, cid=rec.cid)
            except Disconnected as e:
                rec.outcomes.append("hang" if str(e) == "hang" else "closed")
                if str(e) == "hang" or not self.reconnect:
                    break
                await asyncio.sleep(0.02)
                continue
            op = reply.get("op")
            if op == "ack":
                rec.outcomes.append("ack")
                if rec.acked and reply.get("id") != rec.ack_id:
                    self.run.problems.append(f"{rec.cid}: acked twice with ids {rec.ack_id} "
                                             f"and {reply.get('id')}")
                rec.acked, rec.ack_id, rec.t_ack = True, reply.get("id"), now()
                return rec
            code = reply.get("code")
            rec.outcomes.append(send_outcome(reply))
            if code == "unavailable":
                self.unavailable += 1
                if not resend:
                    break
                await asyncio.sleep(random.uniform(0.2, 0.6))
            elif code == "rate_limited":
                await asyncio.sleep(0.2)
            else:
                self.run.problems.append(f"{rec.cid}: send -> {reply}")
                break
        rec.gave_up = True
        return rec

    async def send_pipelined(self, room, texts, timeout=REPLY_TIMEOUT):
        """Sends many messages without waiting in between; anything not acked
        is then resent one at a time with its cid."""
        recs = [self._new_send(room, t, ordered=True) for t in texts]
        conn = self.conn
        futs = []
        for rec in recs:
            obj = {"op": "send", "rid": conn.next_rid(), "room": room, "text": rec.text,
                   "cid": rec.cid}
            futs.append(conn.issue(obj))
            try:
                await conn.ws.send(chatlib.json.dumps(obj))
            except websockets.exceptions.ConnectionClosed:
                break
        res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), timeout + 5)
        retry = []
        for rec, r in zip(recs, list(res) + [None] * (len(recs) - len(res))):
            if isinstance(r, dict) and r.get("op") == "ack":
                rec.outcomes.append("ack")
                rec.acked, rec.ack_id, rec.t_ack = True, r.get("id"), now()
            else:
                rec.outcomes.append(send_outcome(r))
                rec.ordered = False
                retry.append(rec)
        for rec in retry:
            await self.send_msg(rec.room, rec.text, rec=rec)
        return recs


class Traffic:
    """Senders each send one message at a time (waiting for its ack) to their
    rooms in turn, `interval` apart, until stopped."""

    def __init__(self, senders, interval=0.05, text=None, resend=True):
        self.senders = senders
        self.interval = interval
        self.text = text or (lambda c, k: f"{c.user} #{k} " + "x" * random.randint(0, 80))
        self.resend = resend
        self.gate = asyncio.Event()
        self.gate.set()
        self.stopped = False
        self.tasks = []
        self.inflight = 0

    def start(self):
        self.tasks = [asyncio.ensure_future(self._loop(c, i)) for i, c in enumerate(self.senders)]
        return self

    async def _loop(self, c, i):
        k = 0
        resend = self.resend(c) if callable(self.resend) else self.resend
        while not self.stopped:
            await self.gate.wait()
            if self.stopped:
                break
            room = c.rooms[(k + i) % len(c.rooms)]
            k += 1
            self.inflight += 1
            try:
                await c.send_msg(room, self.text(c, k), resend=resend)
            finally:
                self.inflight -= 1
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.interval)

    async def pause(self, settle=0.6):
        """No new sends; waits until in-flight ones are answered + settle."""
        self.gate.clear()
        deadline = now() + 30
        while self.inflight and now() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(settle)

    def resume(self):
        self.gate.set()

    async def stop(self, timeout=90):
        self.stopped = True
        self.gate.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout)


async def make_clients(run, n, rooms_of, gw_of, concurrency=50, **kw):
    """n clients; client i joins rooms_of(i) on gateway gw_of(i)."""
    out = [run.client(rooms=rooms_of(i), **kw) for i in range(n)]
    sem = asyncio.Semaphore(concurrency)

    async def one(i, c):
        async with sem:
            await c.start(gw=gw_of(i))
    await asyncio.gather(*(one(i, c) for i, c in enumerate(out)))
    return out


async def wait_for(cond, timeout, what, step=0.05):
    deadline = now() + timeout
    while True:
        v = cond()
        if v:
            return v
        if now() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        await asyncio.sleep(step)


def rooms_spanning(n, prefix=None, partitions=SEND_PARTITIONS):
    """n room ids on distinct chat-send partitions (as far as n allows), so
    that every classifier owns some of them. librdkafka's default
    partitioner (consistent_random) is CRC-32 of the key modulo the count."""
    p = prefix or uid("r")
    out, used, i = [], set(), 0
    while len(out) < n:
        room = f"{p}-{i}"
        i += 1
        part = zlib.crc32(room.encode()) % partitions
        if part in used and len(used) < partitions:
            continue
        used.add(part)
        out.append(room)
    return out


async def standard_clients(run, n_clients=12, n_rooms=4, n_senders=4, prefix=None, **kw):
    """n_clients clients alternating over the gateways, every one a member
    of every room; the first n_senders (alternating gateways too) send."""
    rooms = rooms_spanning(n_rooms, prefix)
    ngw = len(run.cluster.gw_ports)
    clients = await make_clients(run, n_clients, lambda i: rooms, lambda i: i % ngw, **kw)
    return rooms, clients, clients[:n_senders]


def acked_after(run, t):
    return sum(1 for c in run.clients for s in c.sends if s.acked and s.t_ack and s.t_ack > t)


def run_bounded(coro, timeout):
    """Runs a test body with a hard deadline. Unlike a bare wait_for, it keeps
    cancelling until the body is really gone (a cancellation can be lost in a
    race with asyncio.wait_for on 3.11), reports where it was stuck, and
    cancels every leftover task with a bounded wait before closing the loop."""
    loop = asyncio.new_event_loop()
    stuck = []

    async def main():
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if task in done:
            return task.result()
        stuck.extend(f"{t.get_coro().__qualname__}: {t.get_stack(limit=1)}"
                     for t in asyncio.all_tasks() if t is not asyncio.current_task())
        for _ in range(30):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            if done:
                break
        raise AssertionError(f"test body did not finish within {timeout}s; tasks:\n"
                             + "\n".join(stuck[:20]))

    try:
        return loop.run_until_complete(main())
    finally:
        try:
            for _ in range(10):
                left = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if not left:
                    break
                for t in left:
                    t.cancel()
                loop.run_until_complete(asyncio.wait(left, timeout=1))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
