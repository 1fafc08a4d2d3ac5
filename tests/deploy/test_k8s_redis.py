"""k8s/base's Redis container, as rendered, run against Debian's redis-server
(the image's Redis is 7.2, this one 7.0: the same config language): the
password reaches Redis without appearing in any argv, maxmemory is 3/4 of
the container's memory limit, and a full Redis refuses writes (noeviction)
instead of growing to the limit. Only the paths and the port are rewritten
(/etc/redis, /run/redis, /data and 6379 are the pod's)."""
import os
import re
import shutil
import subprocess
import time

import pytest
import redis

from k8srender import Render
from chatlib import free_port

PASSWORD = "0123456789abcdef0123456789abcdef"   # the local overlay's dev secret


def render():
    r = Render("local")
    spec = r.sts_spec("redis")
    return spec["containers"][0], r.volume_configmap(spec, "config")["data"]["redis.conf"]


@pytest.fixture
def pod_redis(tmp_path):
    if not shutil.which("kubectl") or not shutil.which("redis-server"):
        pytest.skip("needs kubectl and redis-server")
    c, conf = render()
    port = free_port()
    paths = {"/etc/redis": tmp_path / "etc", "/run/redis": tmp_path / "run", "/data": tmp_path / "data"}
    for p in paths.values():
        p.mkdir()

    def local(text):
        for k, v in paths.items():
            text = re.sub(re.escape(k) + r"\b", str(v), text)
        return text

    conf = local(conf).replace("port 6379", f"port {port}").replace("bind * -::*", "bind 127.0.0.1")
    (paths["/etc/redis"] / "redis.conf").write_text(conf)
    argv = [local(a) for a in c["command"] + c["args"]]
    limit_mb = 8  # the container's limit, as the downward API gives it (resourceFieldRef, divisor 1Mi)
    assert any(e.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.memory"
               for e in c["env"] if e["name"] == "LIMIT_MB")
    # Kubernetes expands $(VAR) in command/args before the runtime stores
    # them: the password must not be in what it stores either.
    expanded = " ".join(argv).replace("$(REDISCLI_AUTH)", PASSWORD).replace("$(LIMIT_MB)", str(limit_mb))
    # redis-server rewrites its process title, so /proc/PID/cmdline would
    # hide an argv password: a wrapper first in PATH records the real argv.
    wrap = tmp_path / "bin"
    wrap.mkdir()
    real = shutil.which("redis-server")
    (wrap / "redis-server").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/argv\nexec {real} \"$@\"\n")
    (wrap / "redis-server").chmod(0o755)
    env = dict(os.environ, REDISCLI_AUTH=PASSWORD, LIMIT_MB=str(limit_mb),
               PATH=f"{wrap}:{os.environ['PATH']}")
    log = open(tmp_path / "redis.log", "w")
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    r = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
    deadline = time.time() + 10
    while True:
        try:
            r.ping()
            break
        except redis.exceptions.ConnectionError:
            assert p.poll() is None and time.time() < deadline, (tmp_path / "redis.log").read_text()
            time.sleep(0.1)
    yield p, r, port, limit_mb, paths, expanded, (tmp_path / "argv").read_text()
    p.terminate()
    p.wait(10)
    log.close()


def test_password_not_in_argv(pod_redis):
    p, r, port, _, paths, expanded, argv = pod_redis
    assert PASSWORD not in expanded, expanded
    assert PASSWORD not in argv and argv.startswith(str(paths["/etc/redis"])), argv
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    assert oct(os.stat(paths["/run/redis"] / "runtime.conf").st_mode & 0o777) == "0o600"


def test_maxmemory_refuses_writes(pod_redis):
    _, r, _, limit_mb, _, _, _ = pod_redis
    cfg = r.config_get("maxmemory*")
    assert int(cfg["maxmemory"]) == limit_mb * 3 // 4 * 1024 * 1024, cfg
    assert cfg["maxmemory-policy"] == "noeviction", cfg
    assert r.config_get("appendonly")["appendonly"] == "yes"
    big = b"x" * 65536
    with pytest.raises(redis.exceptions.ResponseError, match="OOM"):
        for i in range(10 * limit_mb * 16):
            r.set(f"k{i}", big)
    assert r.get("k0") == big, "a key was evicted"
