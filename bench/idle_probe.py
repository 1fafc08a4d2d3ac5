#!/usr/bin/python3
"""idle_probe: gateway memory per idle joined connection, a few fresh clusters.

The figure of `make bench` (table 3) is one sample; it moves by a hundred
bytes or so between runs, because part of it is heap the connection storm
leaves behind. This starts the bench's cluster (bench/run.py) --runs times,
each time opens --clients chatbench clients on gateway0 that join rooms of
--room-size and stay idle, and prints per run: RSS delta / clients, the same
for anonymous memory, and the gateway's [heap] RSS (what malloc holds; the
per-connection objects live in slabs, lib/slab.h). Nothing is written to
docs/.

    make all chatbench
    /usr/bin/python3 bench/idle_probe.py --runs 3
    /usr/bin/python3 bench/idle_probe.py --room-size 1000 --runs 1
"""
import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402


def heap_rss_kib(pid):
    """RSS of the [heap] mapping (glibc malloc's main arena)."""
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                cur = line
            elif line.startswith("Rss:") and cur and cur.rstrip().endswith("[heap]"):
                return int(line.split()[1])
    return 0


def one_run(a, cfg, i):
    with B.scratch_cluster(a.build, cfg, "chatd-idle") as (bench, cluster, out):
        pid = cluster.procs["gateway0"].pid
        n = a.clients
        time.sleep(1)
        before = B.proc_mem_kib(pid)
        heap_before = heap_rss_kib(pid)
        samples = []

        def on_line(line):
            if f"conns {n}/{n}" in line and "measure" in line:
                samples.append((B.proc_mem_kib(pid), heap_rss_kib(pid)))

        args = ["--proto", "chatd", "--url", cluster.urls(["gateway0"]), "--clients", n,
                "--room-size", a.room_size, "--rate", 0, "--warmup", 0, "--duration", a.hold,
                "--drain", 0, "--procs", 2, "--source-ips", "127.0.0.1-127.0.0.8",
                "--connect-concurrency", 128]
        rep = bench.run(f"idle{i}", args, {"gateway0": pid}, on_line=on_line)
        if not samples:
            raise RuntimeError(f"never saw {n}/{n} clients connected (logs: {out})")
        (rss, anon), heap = samples[-1]
        return dict(bytes_per_conn=round((rss - before[0]) * 1024 / n),
                    anon_bytes_per_conn=round((anon - before[1]) * 1024 / n),
                    heap_kib_before=heap_before, heap_kib_after=heap,
                    handshakes_per_s=rep.get("handshakes_per_s"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(B.REPO, "build"))
    ap.add_argument("--clients", type=int, default=15000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--hold", type=int, default=12, help="idle seconds measured (the last sample counts)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    cfg = B.config(False)
    got = []
    for i in range(a.runs):
        r = one_run(a, cfg, i)
        got.append(r["bytes_per_conn"])
        print(f"run {i + 1}: {r['bytes_per_conn']} B/conn RSS, {r['anon_bytes_per_conn']} B/conn anon; "
              f"gateway [heap] RSS {r['heap_kib_before']} -> {r['heap_kib_after']} KiB; "
              f"{r['handshakes_per_s']} handshakes/s", flush=True)
    print(f"{a.clients} idle clients in rooms of {a.room_size}: {min(got)}-{max(got)} B/conn, "
          f"median {statistics.median(got):.0f}")


if __name__ == "__main__":
    main()
