"""chatd raises its open-file soft limit to the hard limit at start and logs
what it got (issue 23, item 10): where a container runtime starts processes
with a soft limit of 1024, a gateway would otherwise run out of descriptors
near 1,000 sockets. No backend is needed: chatd is read while it waits for a
PostgreSQL that is not there."""
import os
import re
import resource
import socket
import subprocess
import time

from itconf import CHATD_BIN, chatd_env


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _soft_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_nofile_soft_limit_raised_to_hard(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 256
    assert hard == resource.RLIM_INFINITY or hard > soft, "the hard limit leaves nothing to raise"
    log = tmp_path / "chatd.log"
    pg = f"host=127.0.0.1 port={_closed_port()} dbname=chatd user=chatd connect_timeout=1"
    args = [CHATD_BIN, "--role=all", "--kafka=embedded", f"--listen=127.0.0.1:{_closed_port()}",
            f"--redis=redis://127.0.0.1:{_closed_port()}/0", f"--pg={pg}", "--migrate-wait=20"]
    with open(log, "wb") as out:
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=chatd_env(),
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        text = ""
        deadline = time.time() + 15
        while time.time() < deadline and "event=nofile" not in text:
            time.sleep(0.2)
            assert p.poll() is None, f"chatd exited: {log.read_text()}"
            text = log.read_text()
        got = _soft_limit(p.pid)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    m = re.search(r"event=nofile\b.*\bsoft=(\d+)\b.*\bwas=(\d+)\b.*\bhard=(\d+)", text)
    assert m, f"no event=nofile line in the log:\n{text}"
    want = hard if hard != resource.RLIM_INFINITY else got
    assert got == want and got > soft, f"soft limit {got}, hard {hard}"
    assert (int(m.group(1)), int(m.group(2))) == (got, soft), m.group(0)
    assert int(m.group(3)) == hard or hard == resource.RLIM_INFINITY, m.group(0)
