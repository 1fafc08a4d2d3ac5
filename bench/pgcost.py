#!/usr/bin/python3
"""pgcost: PostgreSQL's cost per chat message, statement by statement.

For performance work on the store between two `make bench` runs: for each
entry of --order (A B A B ...), new stores and a new cluster of that
variant's build, one set of users joined, then one chatbench run of the
chosen shape; around the run, PostgreSQL's pg_stat_statements (loaded by
this harness only: shared_preload_libraries, track=all so the trigger's
statement shows too, track_planning) and the CPU of each PostgreSQL
process, each client backend named after the chatd process holding its
connection. Prints per statement: calls per stored message, µs per call
and per message (execution, and planning where any), and the CPU µs per
message of each backend group. Nothing is written to docs/.

    make all chatbench
    /usr/bin/python3 bench/pgcost.py --build-of A=/tmp/old/build --build-of B=build --order ABAB
    /usr/bin/python3 bench/pgcost.py --shape allsend --build-of A=... --build-of B=build
    /usr/bin/python3 bench/pgcost.py --shape room1000 --rate 200 ...

Shapes: probe (4,000 clients in rooms of 10, one sender a room, bench
settings, as bench/probe.py; --rate 1000), allsend (1,000 clients in rooms
of 10, every member sending, chatd's defaults, as bench/allsend_ab.py;
--rate 2000), room1000 (one room of 1000, bench settings; --rate 200),
rooms1000 (4 rooms of 1000; --rate 50).
The statements' times are PostgreSQL's own (executor and planner), less
sensitive to a busy machine than wall-clock latency; the generic plan's
locks (taken before the executor) show only in the backend's CPU.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402
import psycopg2  # noqa: E402

_server_args = B.pg_server_args


def pg_server_args_pgss(datadir, port, fsync=True):
    return _server_args(datadir, port, fsync) + [
        "-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=all",
        "-c", "pg_stat_statements.track_planning=on", "-c", "pg_stat_statements.max=2000"]


B.pg_server_args = pg_server_args_pgss

# Statement labels: the first pattern found in the query text names it.
LABELS = [
    ("known-id lookup (db_known_ids)", r"CROSS JOIN LATERAL \(SELECT seq FROM messages"),
    ("store (db_store_msgs)", r"INSERT INTO messages \(room, seq, id"),
    ("head trigger's upsert (007, inside the store)", r"SELECT room, max\(seq\) FROM chatd_new_messages"),
    ("floors (db_rooms_max)", r"GREATEST\(COALESCE\(\(SELECT head FROM rooms WHERE room = r\)"),
    ("offsets (db_offsets_save)", r"UPDATE partition_owners o SET next_offset = x\.n\s+FROM unnest\(\$2"),
    ("lease beat (db_lease_beat)", r"INSERT INTO classifier_members"),
    ("fence take (db_fence_take)", r"INSERT INTO partition_owners"),
    ("read marks (readmarks)", r"UPDATE members SET read_seq"),
    ("users seen (seen_flush)", r"INSERT INTO users"),
    ("user's rooms (db_user_rooms)", r"SELECT room FROM members WHERE user_id"),
    ("ban check (db_user_banned)", r"FROM bans WHERE user_id"),
    ("join (db_join)", r"INSERT INTO members \(room, user_id\) SELECT \$1, \$2 WHERE \(SELECT ok"),
    ("membership check (db_is_member)", r"^SELECT 1 FROM members WHERE room = \$1 AND user_id = \$2$"),
    ("head read (db_max_seq)", r"^SELECT COALESCE\(\(SELECT head FROM rooms"),
    ("months upkeep", r"chatd_messages_maintain|chatd_messages_partition|chatd_rooms_expire|"
                      r"chatd_messages_compact|pg_try_advisory"),
]


def label(q):
    for name, pat in LABELS:
        if re.search(pat, q, re.S):
            return name
    return "other: " + " ".join(q.split())[:90]


def backend_pids(cur):
    cur.execute("SELECT pid, backend_type, client_port, datname FROM pg_stat_activity")
    return cur.fetchall()


def port_owners(cluster):
    """local TCP port -> chatd process name, from ss."""
    names = {str(p): n for n, p in cluster.pids().items()}
    out = subprocess.run(["ss", "-Htnp"], capture_output=True, text=True).stdout
    owners = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        m = re.search(r"pid=(\d+)", parts[5])
        if m and m.group(1) in names:
            owners[int(parts[3].rsplit(":", 1)[1])] = names[m.group(1)]
    return owners


def group_cpu(cur, cluster, me_port):
    owners = port_owners(cluster)
    out = {}
    for pid, btype, cport, _db in backend_pids(cur):
        if cport == me_port:
            continue
        name = btype if btype != "client backend" else (
            re.sub(r"\d+$", "", owners.get(cport, "other client")) + " connections")
        c = B.proc_cpu_s(pid)
        if c is not None:
            out.setdefault(name, {})[pid] = c
    return out


def one(build, shape, rate, duration, cfg, name, outdir, bench_build):
    with B.scratch_cluster(bench_build, cfg, "chatd-pgcost", chatd=os.path.join(build, "chatd"), out=outdir,
                           defaults=shape == "allsend") as (bench, cluster, _):
        stores = cluster.stores
        clients, room = {"probe": (4000, 10), "allsend": (1000, 10), "room1000": (1000, 1000),
                         "rooms1000": (4000, 1000)}[shape]
        run_id = f"pc{os.urandom(4).hex()}"
        bench.run(f"{name}-join", bench.load_args(cluster.urls(), clients, room, 0, run_id, duration=0.5)
                  + ["--settle", 60, "--warmup", 0], cluster.pids())
        cluster.check()
        conn = psycopg2.connect(stores.conninfo)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        cur.execute("SELECT inet_client_port()")
        me = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass")
        parts = cur.fetchone()[0]
        win = {}
        pgss = ("SELECT query, calls, total_exec_time, total_plan_time, plans, rows FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'chatd')")

        def on_line(line):
            # The window is chatbench's: from its first "measure" line to its
            # last (as Bench.run's window CPU); the statements are counted
            # from a reset at the first to a read at each later one.
            if not (line.startswith("[") and " measure " in line):
                return
            if "first" not in win:
                cur.execute("SELECT pg_stat_statements_reset()")
                win["first"] = (time.monotonic(), group_cpu(cur, cluster, me), B.proc_tree_cpu_s(stores.pg.pid))
                return
            t = time.monotonic()
            cpu = group_cpu(cur, cluster, me)
            tree = B.proc_tree_cpu_s(stores.pg.pid)
            cur.execute(pgss)
            win["last"] = (t, cpu, tree, cur.fetchall())

        extra = ["--senders-per-room", 10] if shape == "allsend" else []
        rep = bench.run(f"{name}-r{rate}", bench.load_args(cluster.urls(), clients, room, rate, run_id,
                                                           duration=duration) + extra,
                        cluster.pids(), on_line=on_line, metrics_ports=cluster.metrics_ports, rate=rate)
        (t0, cpu0, tree0), (t1, cpu1, tree1, stmts) = win["first"], win["last"]
        dt = t1 - t0
        n = round(rate * dt)
        conn.close()
    agg = {}
    for q, calls, ex, pl, plans, rows in stmts:
        if "pg_stat_statements" in q or "pg_stat_activity" in q or "pg_inherits" in q or q.startswith("SELECT count(*) FROM messages"):
            continue
        a = agg.setdefault(label(q), dict(calls=0, exec_ms=0.0, plan_ms=0.0, plans=0, rows=0))
        a["calls"] += calls
        a["exec_ms"] += ex
        a["plan_ms"] += pl
        a["plans"] += plans
        a["rows"] += rows
    groups = {}
    for g, pids in cpu1.items():
        groups[g] = sum(c - cpu0.get(g, {}).get(p, 0) for p, c in pids.items())
    lat = rep.get("latency_ms", {})
    us = rep.get("window_cpu", {}).get("us_per_msg", {})
    return dict(name=name, build=build, shape=shape, rate=rate, stored=n, seconds=round(dt, 1), partitions=parts,
                held=rep.get("held"), p50=lat.get("p50"), p99=lat.get("p99"),
                window_us_per_msg=us, statements=agg, backend_cpu_s=groups,
                pg_tree_cpu_s=(tree1 - tree0) if tree0 is not None and tree1 is not None else None)


def show(r):
    n = max(r["stored"], 1)
    print(f"RUN {r['name']} {r['build']} shape={r['shape']} rate={r['rate']} offered in window={r['stored']} in "
          f"{r['seconds']} s, partitions={r['partitions']}, held={r['held']} p50 {r['p50']} p99 {r['p99']}; "
          f"window CPU µs/msg: postgres {r['window_us_per_msg'].get('postgres')}", flush=True)
    tot_ex = 0.0
    for k, a in sorted(r["statements"].items(), key=lambda kv: -kv[1]["exec_ms"]):
        if a["exec_ms"] + a["plan_ms"] < 0.002 * n and not k.startswith(("store", "known", "head")):
            continue
        c = max(a["calls"], 1)
        if "inside" not in k:
            tot_ex += a["exec_ms"] + a["plan_ms"]
        print(f"  {k:48s} calls/msg {a['calls'] / n:8.4f}  µs/call {a['exec_ms'] * 1000 / c:8.1f}"
              f" (+plan {a['plan_ms'] * 1000 / c:6.1f})  µs/msg {(a['exec_ms'] + a['plan_ms']) * 1000 / n:7.1f}"
              f"  rows/call {a['rows'] / c:6.1f}", flush=True)
    print(f"  {'all statements (top level)':48s} µs/msg {tot_ex * 1000 / n:7.1f}", flush=True)
    for g, s in sorted(r["backend_cpu_s"].items(), key=lambda kv: -kv[1]):
        print(f"  CPU {g:44s} µs/msg {s * 1e6 / n:7.1f}", flush=True)
    if r["pg_tree_cpu_s"] is not None:
        print(f"  CPU {'all PostgreSQL processes alive':44s} µs/msg {r['pg_tree_cpu_s'] * 1e6 / n:7.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-of", action="append", default=[], metavar="NAME=DIR", required=True)
    ap.add_argument("--order", default="ABAB")
    ap.add_argument("--shape", default="probe", choices=["probe", "allsend", "room1000", "rooms1000"])
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--bench-build", default=os.path.join(B.REPO, "build"),
                    help="whose chatbench drives every run (one load generator for all builds)")
    ap.add_argument("--json", default=None, help="append one line per run here")
    a = ap.parse_args()
    builds = dict(x.partition("=")[::2] for x in a.build_of)
    rate = a.rate or {"probe": 1000, "allsend": 2000, "room1000": 200, "rooms1000": 50}[a.shape]
    cfg = B.config(False)
    out = tempfile.mkdtemp(prefix="chatd-pgcost-out-")
    for i, n in enumerate(a.order):
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        r = one(builds[n], a.shape, rate, a.duration, cfg, f"{i}{n}", out, a.bench_build)
        r["load_before"] = load
        show(r)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print(f"chatbench reports and logs: {out}")


if __name__ == "__main__":
    main()
