#!/usr/bin/python3
"""Gateway memory per open, authenticated, idle WebSocket connection.

Starts redis + PostgreSQL + `chatd --role=all` (embedded Kafka) in a temp
dir, opens --conns connections (each its own user, hello received) from
--procs client processes bound to 127.0.0.2.. (so neither one process's fd
limit nor one source address's ephemeral ports run out), keeps them idle
and answering pings, and prints

    (VmRSS after - VmRSS before) / conns

for the chatd process. `before` is read after a warm-up of --warmup
connections that were opened and closed again (so one-time allocations of
the first handshake, PostgreSQL/Redis connections and the like, do not
count); `after` once every connection is up and has been idle for --settle
seconds, longer than chatd's --heartbeat, so every connection has been
pinged and answered once (its steady state). The connection count is
checked against the server's own chatd_ws_connections gauge.

    /usr/bin/python3 tests/perf/idle_rss.py --conns 15000
    /usr/bin/python3 tests/perf/idle_rss.py --conns 15000 --json out.json

Exits non-zero if a connection fails or the gauge disagrees. A run of
15000 takes about 20 s on a 2-core machine.
"""
import argparse
import base64
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

SECRET = "idle-rss-secret-" + "k" * 24


# --------------------------------------------------------------------------
# client worker: one process, many non-blocking sockets

class Conn:
    __slots__ = ("sock", "state", "out", "buf", "user", "tries")


def worker(port, src, users, concurrency, secret):
    import chatlib  # noqa: E402 (only the token maker)
    sel = selectors.DefaultSelector()
    todo = list(reversed(users))
    retry = []            # (time, user, tries): refused with 503, try later
    live = 0
    opened = 0
    failed = []
    inflight = 0

    def start(user, tries=0):
        nonlocal inflight
        c = Conn()
        c.user, c.tries, c.buf, c.state = user, tries, b"", "hs"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((src, 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        key = base64.b64encode(os.urandom(16)).decode()
        tok = chatlib.make_token(user, secret, exp_in=24 * 3600)
        c.out = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {tok}\r\n\r\n").encode()
        c.sock = s
        sel.register(s, selectors.EVENT_WRITE, c)
        inflight += 1

    def frame(opcode, payload):
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + body

    def drop(c, why):
        nonlocal inflight, live
        sel.unregister(c.sock)
        c.sock.close()
        if c.state == "hs":
            inflight -= 1
            if why == "503" and c.tries < 50:
                retry.append((time.monotonic() + 0.2, c.user, c.tries + 1))
                return
        else:
            live -= 1
        failed.append(f"{c.user}: {why}")

    def on_frames(c):
        while len(c.buf) >= 2:
            b0, b1 = c.buf[0], c.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(c.buf) < 4:
                    return
                n, off = struct.unpack("!H", c.buf[2:4])[0], 4
            elif n == 127:
                if len(c.buf) < 10:
                    return
                n, off = struct.unpack("!Q", c.buf[2:10])[0], 10
            if len(c.buf) < off + n:
                return
            op, data = b0 & 0x0F, c.buf[off:off + n]
            c.buf = c.buf[off + n:]
            if op == 0x9:
                c.sock.send(frame(0xA, data))
            elif op == 0x8:
                drop(c, f"server closed with {data[:2].hex()} {data[2:]!r}")
                return

    def readable(c):
        nonlocal inflight, live, opened
        try:
            data = c.sock.recv(65536)
        except ConnectionError as e:
            drop(c, repr(e))
            return
        if not data:
            drop(c, "EOF")
            return
        c.buf += data
        if c.state == "hs":
            if b"\r\n\r\n" not in c.buf:
                return
            head, rest = c.buf.split(b"\r\n\r\n", 1)
            status = head.split(b" ", 2)[1]
            if status != b"101":
                drop(c, "503" if status == b"503" else head.split(b"\r\n")[0].decode())
                return
            # hello is the first frame: wait for it before counting the connection
            if len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
                return
            c.buf = rest
            c.state = "idle"
            inflight -= 1
            live += 1
            opened += 1
        on_frames(c)

    announced = False
    while True:
        now = time.monotonic()
        while retry and inflight < concurrency and retry[0][0] <= now:
            _, u, t = retry.pop(0)
            start(u, t)
        while todo and inflight < concurrency:
            start(todo.pop())
        if not announced and not todo and not retry and inflight == 0:
            print(f"ready {live} {len(failed)}", flush=True)
            for f in failed[:5]:
                print(f"failed {f}", flush=True)
            announced = True
            sel.register(sys.stdin, selectors.EVENT_READ, None)
        for key, ev in sel.select(timeout=0.2):
            c = key.data
            if c is None:  # parent closed stdin: done
                if not os.read(sys.stdin.fileno(), 4096):
                    print(f"closed {len(failed) - (0)} live={live}", flush=True)
                    return
                continue
            if ev & selectors.EVENT_WRITE:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    drop(c, os.strerror(err))
                    continue
                c.sock.sendall(c.out)
                sel.modify(c.sock, selectors.EVENT_READ, c)
            else:
                readable(c)


# --------------------------------------------------------------------------
# servers

def start_pg(chatlib, workdir):
    pgbin = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
    pgbin = f"/usr/lib/postgresql/{pgbin}/bin"
    datadir = os.path.join(workdir, "pgdata")
    os.makedirs(datadir, mode=0o700)
    root = os.getuid() == 0
    if root:
        shutil.chown(workdir, "postgres", "postgres")
        shutil.chown(datadir, "postgres", "postgres")
    kw = dict(user="postgres", group="postgres", extra_groups=[]) if root else {}
    subprocess.run([f"{pgbin}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8", "--locale=C"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120, **kw)
    port = chatlib.free_port()
    proc = chatlib.Proc("postgres", [f"{pgbin}/postgres", "-D", datadir, "-k", datadir,
                                     "-c", "listen_addresses=127.0.0.1", "-p", str(port),
                                     "-F", "-c", "fsync=off"],
                        workdir, user="postgres" if root else None)
    import psycopg2
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg2.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             connect_timeout=2).close()
            return proc, port
        except psycopg2.OperationalError:
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start\n{proc.tail()}")
            time.sleep(0.1)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def spawn_clients(port, n, procs, tag, concurrency):
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    out, k = [], 0
    for i, m in enumerate(per):
        if m == 0:
            continue
        users = [f"{tag}-{k + j}" for j in range(m)]
        k += m
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                              "--port", str(port), "--src", f"127.0.0.{2 + i}",
                              "--concurrency", str(concurrency), "--users", ",".join(users)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        out.append(p)
    return out


def wait_ready(workers, timeout):
    live = failed = 0
    deadline = time.monotonic() + timeout
    for p in workers:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("clients did not connect in time")
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("a client process died")
            if line.startswith("ready "):
                _, a, b = line.split()
                live += int(a)
                failed += int(b)
                break
            print("client:", line.rstrip(), file=sys.stderr)
    return live, failed


def close_clients(workers):
    for p in workers:
        p.stdin.close()
    for p in workers:
        p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--procs", type=int, default=6, help="client processes")
    ap.add_argument("--concurrency", type=int, default=64, help="handshakes in flight per client process")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--heartbeat", type=int, default=5, help="chatd --heartbeat, seconds")
    ap.add_argument("--settle", type=float, default=8.0, help="idle seconds before `after`")
    ap.add_argument("--chatd", default=os.environ.get("CHATD_BIN", os.path.join(REPO, "build", "chatd")))
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--hold", type=float, default=0,
                    help="keep the connections open this long after measuring (to inspect chatd)")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--users", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.port, a.src, a.users.split(","), a.concurrency, SECRET)
        return 0

    import chatlib
    if a.conns + 200 > 20000:
        print("note: chatd's open-file limit is 20000 per process", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="chatd-idle-")
    os.chmod(workdir, 0o755)
    procs = []
    try:
        redis = chatlib.start_redis(workdir)
        procs.append(redis)
        pg, pgport = start_pg(chatlib, workdir)
        procs.append(pg)
        port = chatlib.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
        env["CHATD_JWT_SECRET"] = SECRET
        chatd = chatlib.Proc("chatd", [a.chatd, "--role=all", f"--listen=127.0.0.1:{port}",
                                       "--kafka=embedded", f"--redis={redis.url}",
                                       f"--pg=host=127.0.0.1 port={pgport} user=postgres dbname=postgres",
                                       f"--heartbeat={a.heartbeat}", "--log-level=warn"],
                             workdir, env=env)
        procs.append(chatd)
        chatlib.wait_ready(chatd, port, 60)

        run = os.urandom(3).hex()
        if a.warmup:
            w = spawn_clients(port, a.warmup, 1, f"warm{run}", a.concurrency)
            wait_ready(w, 120)
            close_clients(w)
            time.sleep(2)
        before = rss_kib(chatd.pid)

        t0 = time.monotonic()
        workers = spawn_clients(port, a.conns, a.procs, f"idle{run}", a.concurrency)
        live, failed = wait_ready(workers, 900)
        setup_s = time.monotonic() - t0
        time.sleep(a.settle)
        after = rss_kib(chatd.pid)
        gauge = chatlib.metric_sum(chatlib.read_metrics(port), "chatd_ws_connections")
        if a.hold:
            print(f"holding {a.hold:.0f}s: chatd pid {chatd.pid}", file=sys.stderr, flush=True)
            time.sleep(a.hold)
        close_clients(workers)

        per = (after - before) * 1024 / max(live, 1)
        res = {"conns": a.conns, "live": live, "failed": failed, "gauge": gauge,
               "rss_before_kib": before, "rss_after_kib": after,
               "bytes_per_conn": round(per, 1), "setup_s": round(setup_s, 1),
               "chatd": a.chatd}
        print(f"connections {live}/{a.conns} (failed {failed}, server gauge {gauge:.0f}), "
              f"setup {setup_s:.1f}s")
        print(f"gateway VmRSS before {before} KiB, after {after} KiB")
        print(f"bytes per idle connection: {per:.0f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
        if failed or live != a.conns or int(gauge) != live:
            print("FAILED: not every connection was open at measurement time", file=sys.stderr)
            return 1
        if not chatd.alive():
            print("FAILED: chatd exited", file=sys.stderr)
            return 1
        return 0
    finally:
        for p in reversed(procs):
            p.stop(sig=signal.SIGINT if p.name == "postgres" else signal.SIGTERM, timeout=30)
        if a.keep:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
