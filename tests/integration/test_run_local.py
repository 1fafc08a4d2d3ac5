"""`make run` from any clone: scripts/run-local.sh started, as root, from a
directory the postgres user cannot enter (a clone in root's 0700 home) must
still initialise and start PostgreSQL and serve /readyz. Embedded pass only:
the demo never uses real Kafka."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import kafkamode
from chatlib import free_port, http_request

REPO = kafkamode.REPO
CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs PostgreSQL as the postgres user)"),
    pytest.mark.skipif(kafkamode.REAL, reason="make run is the embedded-broker demo"),
]


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_run_local_from_any_directory(mode):
    home = tempfile.mkdtemp(prefix="chatd-home-")   # 0700, root's: like /root
    os.chmod(home, mode)
    clone = os.path.join(home, "chatd")
    os.makedirs(clone)
    port = free_port()
    env = dict(os.environ, REDIS_PORT=str(free_port()), PG_PORT=str(free_port()),
               CHATD_LISTEN=f"127.0.0.1:{port}")
    log = open(os.path.join(home, "run.log"), "w+")
    p = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "run-local.sh"), CHATD_BIN],
                         cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    pgroot = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                st, _, _ = http_request(port, "GET", "/readyz", timeout=2)
                if st == 200:
                    break
            except OSError:
                pass
            log.seek(0)
            out = log.read()
            assert p.poll() is None, f"run-local.sh exited {p.returncode}:\n{out}"
            assert time.monotonic() < deadline, f"no /readyz after 90 s:\n{out}"
            time.sleep(0.3)
        log.seek(0)
        out = log.read()
        m = re.search(r"PostgreSQL data in (\S+)/pg", out)
        pgroot = m and m.group(1)
        if mode == 0o700:
            assert pgroot and pgroot.startswith("/var/tmp/"), out
        else:  # reachable: where it always was
            assert not pgroot, out
            assert os.path.exists(os.path.join(clone, ".run", "pg", "PG_VERSION"))
    finally:
        p.send_signal(signal.SIGTERM)  # its trap stops chatd, redis and PostgreSQL
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
        if pgroot:
            shutil.rmtree(pgroot, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
