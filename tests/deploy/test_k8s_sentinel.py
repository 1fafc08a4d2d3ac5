"""The production overlay's Redis (k8s/components/redis-sentinel), as
rendered, run as real processes: the two Redis pods' and the three
Sentinels' start scripts and redis.conf, each "pod" on a loopback address of
its own (127.A.B.10-11 Redis, .20-22 Sentinels) with the pods' ports. Only
names, addresses and paths are rewritten: pod DNS names become those
addresses (there is no cluster DNS here), `hostname` answers the pod name,
each Sentinel binds its address (a pod has its own IP), and the pods'
directories are temp ones; `redis-sentinel` is Debian's redis-server
(7.0; the image has 7.2). A chatd (--role=all) configured with the
render's CHATD_REDIS_SENTINELS / CHATD_REDIS_MASTER_NAME and the Redis
password follows the master being SIGKILLed, and the killed pod, started
again by its script, joins as a replica of the new master rather than
claiming to be one. Failover time is the manifest's
down-after-milliseconds (5 s) plus the election: about 20 s in all."""
import asyncio
import os
import random
import shutil
import signal
import time

import pytest
import redis

from k8srender import Render
from chatlib import Proc, arun, free_port, http_request, uid

PASSWORD = "fedcba9876543210fedcba9876543210"
NET = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}"
REDIS_IP = [f"{NET}.10", f"{NET}.11"]
SENTINEL_IP = [f"{NET}.20", f"{NET}.21", f"{NET}.22"]


def render():
    r = Render("production")
    redis_spec = r.sts_spec("redis")
    conf = r.volume_configmap(redis_spec, "config")
    return (r.get("StatefulSet", "redis"), redis_spec["containers"][0], conf["data"]["redis.conf"],
            r.get("StatefulSet", "redis-sentinel"), r.sts_spec("redis-sentinel")["containers"][0],
            r.chatd_config())


def rewrite(text, subs):
    """Each (old, new) must occur: a changed manifest fails here, loudly."""
    for old, new in subs:
        assert old in text, f"{old!r} not in the rendered script any more:\n{text}"
        text = text.replace(old, new)
    return text


NAMES = [("redis-sentinel-$s.redis-sentinel", f"{NET}.2$s"), ("redis-0.redis", REDIS_IP[0])]
# The Redis pods asked by role when no Sentinel answers (.10, .11).
REDIS_NAMES = [("redis-$r.redis", f"{NET}.1$r")]


class Pods:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}
        self.bins = {}

    def bin(self, pod):
        d = self.tmp / f"bin-{pod}"
        d.mkdir()
        (d / "hostname").write_text(f"#!/bin/sh\necho {pod}\n")
        (d / "hostname").chmod(0o755)
        # Redis runs as Sentinel when started under that name, as the image's link does.
        os.symlink(shutil.which("redis-server"), d / "redis-sentinel")
        return d

    def start(self, pod, ip, argv, paths, limit_mb=None):
        bindir = self.bins.get(pod) or self.bin(pod)
        self.bins[pod] = bindir
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", REDISCLI_AUTH=PASSWORD, POD_IP=ip)
        if limit_mb:
            env["LIMIT_MB"] = str(limit_mb)
        p = Proc(pod, argv, str(self.tmp), env=env)
        self.procs[pod] = p
        return p

    def stop(self):
        for p in self.procs.values():
            p.stop(signal.SIGTERM, 10)


def client(ip, port):
    return redis.Redis(host=ip, port=port, password=PASSWORD, socket_timeout=2, decode_responses=True)


def wait(what, fn, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # a pod still starting
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


@pytest.fixture
def redis_ha(tmp_path):
    if not shutil.which("kubectl") or not shutil.which("redis-server"):
        pytest.skip("needs kubectl and redis-server")
    sts, rc, conf, ssts, sc, cfg = render()
    assert sts["spec"]["replicas"] == 2 and ssts["spec"]["replicas"] == 3
    pods = Pods(tmp_path)

    def start_redis_pod(i):
        d = {k: tmp_path / f"redis-{i}{k.replace('/', '-')}" for k in ("/etc/redis", "/run/redis", "/data")}
        for p in d.values():
            p.mkdir(exist_ok=True)
        (d["/etc/redis"] / "redis.conf").write_text(rewrite(conf, [
            ("bind * -::*", f"bind {REDIS_IP[i]}"), ("dir /data", f"dir {d['/data']}"),
            ("/run/redis", str(d["/run/redis"]))]))
        script = rewrite(rc["args"][0], [('"$(hostname).redis"', '"$POD_IP"')] + NAMES + REDIS_NAMES +
                         [(k, str(d[k])) for k in ("/etc/redis", "/run/redis")])
        return pods.start(f"redis-{i}", REDIS_IP[i], rc["command"] + [script], d, limit_mb=64)

    def start_sentinel_pod(i):
        run = tmp_path / f"sentinel-{i}"
        shutil.rmtree(run, ignore_errors=True)  # an emptyDir: a new pod starts empty
        run.mkdir()
        script = rewrite(sc["args"][0], [('"$(hostname).redis-sentinel"', '"$POD_IP"')] + NAMES + REDIS_NAMES +
                         [("/run/sentinel", str(run)),
                                                     ("'port 26379' ", "'port 26379' \"bind $POD_IP\" ")])
        return pods.start(f"redis-sentinel-{i}", SENTINEL_IP[i], sc["command"] + [script], {})

    try:
        start_redis_pod(0)
        start_redis_pod(1)
        for i in range(3):
            start_sentinel_pod(i)
        name = cfg["CHATD_REDIS_MASTER_NAME"]
        wait("the replica in sync", lambda: client(REDIS_IP[1], 6379).info("replication")
             .get("master_link_status") == "up", 20)
        wait("every Sentinel sees the replica and the two others",
             lambda: all(len(client(ip, 26379).execute_command("SENTINEL", "REPLICAS", name)) == 1 and
                         len(client(ip, 26379).execute_command("SENTINEL", "SENTINELS", name)) == 2
                         for ip in SENTINEL_IP), 30)
        yield pods, cfg, start_redis_pod, start_sentinel_pod
    finally:
        pods.stop()


def master_of(name):
    votes = {}
    for ip in SENTINEL_IP:
        try:
            host, _ = client(ip, 26379).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
            votes[host] = votes.get(host, 0) + 1
        except Exception:
            pass
    return max(votes, key=votes.get) if votes else None


def test_chatd_follows_the_manifests_sentinels(redis_ha, start_all_instance):
    pods, cfg, start_redis_pod, _ = redis_ha
    name = cfg["CHATD_REDIS_MASTER_NAME"]
    assert master_of(name) == REDIS_IP[0]
    assert not any(PASSWORD in " ".join(p.argv) for p in pods.procs.values()), "password in an argv"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=SENTINEL_IP[0], port=26379).execute_command("SENTINEL", "MASTERS")
    sentinels = cfg["CHATD_REDIS_SENTINELS"]
    for i in range(3):
        sentinels = sentinels.replace(f"redis-sentinel-{i}.redis-sentinel", SENTINEL_IP[i])
    inst = start_all_instance("k8s-sentinel", [f"--redis-sentinels={sentinels}", f"--redis-master-name={name}"],
                              redis_url=lambda r: f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    room = uid("k8sha")

    async def body():
        a = await inst.client(uid("a"))
        await a.join(room)
        await a.send_many(room, ["1", "2"])
        await a.wait_seqs(room, [1, 2])
        pods.procs["redis-0"].stop(signal.SIGKILL, 10)
        t0 = time.monotonic()
        await asyncio.to_thread(wait, "the Sentinels' failover to redis-1",
                                lambda: master_of(name) == REDIS_IP[1], 40)
        # chatd finds the new master by itself: the next send is stored.
        r = None
        while time.monotonic() - t0 < 60:
            r = await a.req("send", room=room, text="3", cid="k8sha-3", timeout=20)
            if r.get("op") == "ack":
                break
            await asyncio.sleep(0.5)
        assert r.get("op") == "ack", r
        await a.wait_seqs(room, [3], timeout=20)
        await a.close()
    arun(body(), 120)
    st, _, text = http_request(inst.port, "GET", "/readyz/backends")
    assert st == 200 and b"redis up\n" in text, (st, text)
    # The killed pod, started again by its own script, asks the Sentinels
    # and joins the new master instead of claiming to be one.
    start_redis_pod(0)
    # Its own decision, not the Sentinels' later correction (they would turn
    # a returning old master into a replica too, after writes it took).
    wait("redis-0 started by its script", lambda: client(REDIS_IP[0], 6379).ping(), 10)
    runtime = (pods.tmp / "redis-0-run-redis" / "runtime.conf").read_text()
    assert f"\nreplicaof {REDIS_IP[1]} 6379\n" in runtime, runtime.replace(PASSWORD, "...")
    wait("redis-0 back as a replica of redis-1",
         lambda: client(REDIS_IP[0], 6379).info("replication").get("master_host") == REDIS_IP[1], 20)
    assert client(REDIS_IP[0], 6379).execute_command("ROLE")[0] == "slave"
    assert master_of(name) == REDIS_IP[1]


def test_sentinels_restarted_together_after_a_failover_find_the_master(redis_ha):
    """After a failover (redis-1 master, redis-0 its replica), redis-0
    restarted with no Sentinel up asks redis-1 and stays its replica, and the
    three Sentinels restarted at once (emptyDirs: no state, no peer to ask)
    monitor the Redis pod that says it is the master, not the first
    start's redis-0: a replica named as master to chatd (which refuses it
    after ROLE) and with no replica to promote, for ever."""
    pods, cfg, start_redis_pod, start_sentinel_pod = redis_ha
    name = cfg["CHATD_REDIS_MASTER_NAME"]
    pods.procs["redis-0"].stop(signal.SIGKILL, 10)
    wait("the Sentinels' failover to redis-1", lambda: master_of(name) == REDIS_IP[1], 40)
    start_redis_pod(0)
    wait("redis-0 a replica of redis-1", lambda: client(REDIS_IP[0], 6379).info("replication")
         .get("master_link_status") == "up", 20)
    for i in range(3):
        pods.procs[f"redis-sentinel-{i}"].stop(signal.SIGKILL, 10)
    # redis-0 restarted while no Sentinel answers asks redis-1, and stays
    # its replica (not a second master beside it).
    pods.procs["redis-0"].stop(signal.SIGKILL, 10)
    start_redis_pod(0)
    wait("redis-0 started by its script", lambda: client(REDIS_IP[0], 6379).ping(), 20)
    runtime = (pods.tmp / "redis-0-run-redis" / "runtime.conf").read_text()
    assert f"\nreplicaof {REDIS_IP[1]} 6379\n" in runtime, runtime.replace(PASSWORD, "...")
    for i in range(3):
        start_sentinel_pod(i)
    wait("every Sentinel names redis-1", lambda: all(
        client(ip, 26379).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)[0] == REDIS_IP[1]
        for ip in SENTINEL_IP), 20)
    # ... and keeps naming it (no failover to a replica-less "master").
    time.sleep(8)
    assert master_of(name) == REDIS_IP[1]
    assert client(REDIS_IP[1], 6379).execute_command("ROLE")[0] == "master"
