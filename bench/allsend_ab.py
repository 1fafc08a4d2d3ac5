#!/usr/bin/python3
"""allsend_ab: issue 19's every-member shape, A/B between Kafka settings.

For tuning between two `make bench` runs on a shared machine: one set of
stores (and, with --kafka, one Apache Kafka node of scripts/kafka.py, its
JVM warmed up first), then for each entry of --order a fresh chatd cluster
with chatd's defaults (12 chat-send partitions, the gateways' default rate
limit) plus that variant's options, 1,000 clients in 100 rooms of 10, every
member sending, at --rate for --duration s (as bench/run.py's section 7).
Variants alternate (A B A B ...): compare ratios within one session, the
load average is printed with every run.

    make all chatbench
    /usr/bin/python3 bench/allsend_ab.py --variant A= --variant B=classifier:linger.ms=1 --order ABAB
    /usr/bin/python3 bench/allsend_ab.py --kafka --variant A= --variant B=gateway:linger.ms=5
    /usr/bin/python3 bench/allsend_ab.py --kafka --clients 4000 --room-size 1000 --senders-per-room 1 \
        --rate 25 --variant A=gateway:linger.ms=2 --variant B= --order ABAB

--clients, --room-size and --senders-per-room run another shape the same way
(rooms of 1000 with one sender each: the sweeps' shape, on chatd's defaults).

A variant is NAME=OPT[,OPT...]; an OPT "gateway:k=v" or "classifier:k=v"
goes to that role only, a plain "k=v" to both (bench/run.py variant_args).
--build-of NAME=DIR runs that variant with DIR/chatd (a build of another
tree), for A/B between code changes.

An F in --order is no measurement but a fill: a fresh cluster with chatd's
defaults takes --fill-rate msgs/s in rooms of 10 (every member sending) for
--fill-seconds, so the stores hold what a long `make bench` leaves in them
(about 540,000 messages by its every-member shape): "AFAFA" shows whether
that accumulated state moves the runs after it. --pg-watch prints
PostgreSQL's checkpoints, autovacuums and autoanalyzes as they happen;
--pg-opt K=V runs the stores' PostgreSQL with another setting (e.g.
checkpoint_timeout=30s, to see what checkpoints cost). An R in --order adds
--other-rooms rooms to PostgreSQL (and analyzes it): what a deployment's
rooms table holds, which a fresh bench's does not (R must follow a run: a
cluster's start creates the schema). Each run line gives
PostgreSQL's CPU per message by process (client backends, WAL writer,
checkpointer, autovacuum, ...).
"""
import argparse
import json
import os
import sys
import tempfile
import shutil
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402


def one(bench, chatd, stores, work, kafka, opts, rate, duration, name, clients=1000, room_size=10, senders=10,
        run_id=None):
    kw = B.variant_args(opts)
    cluster = B.Cluster(chatd, stores, work, kafka=kafka, defaults=True, **kw)
    try:
        _, reps = B.allsend_on(bench, name, cluster, clients, room_size, senders, [rate],
                               run_id or f"ab{os.urandom(4).hex()}", duration)
    finally:
        cluster.stop()
    return reps[0]


def pg_watch(conninfo, stop):
    """Prints, with the time since it started, each checkpoint and each
    autovacuum or autoanalyze PostgreSQL runs, so that a stall in a run's
    per-second p99 can be matched to what the store did then."""
    import psycopg2
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    cur = c.cursor()
    t0 = time.monotonic()
    last = None
    while not stop.wait(0.25):
        cur.execute("SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter")
        ck = cur.fetchone()
        cur.execute("SELECT 'vacuum ' || relid::regclass || ' ' || phase FROM pg_stat_progress_vacuum "
                    "UNION ALL SELECT 'analyze ' || relid::regclass || ' ' || phase FROM pg_stat_progress_analyze "
                    "UNION ALL SELECT 'checkpointing' FROM pg_stat_activity WHERE backend_type = 'checkpointer' "
                    "AND wait_event IN ('DataFileSync', 'DataFileFlush', 'CheckpointWriteDelay')")
        now = (ck[0], tuple(sorted(r[0] for r in cur.fetchall())))
        if now != last:
            print(f"PG t={time.monotonic() - t0:7.2f}s checkpoints {ck[0]} (buffers {ck[1]}) {'; '.join(now[1])}",
                  flush=True)
            last = now
    c.close()


def other_rooms(conninfo, n, i):
    import psycopg2
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("INSERT INTO rooms (room) SELECT 'other-' || %s || '-' || g FROM generate_series(1, %s) g "
                "ON CONFLICT DO NOTHING", (i, n))
    cur.execute("ANALYZE rooms")
    cur.execute("SELECT count(*) FROM rooms")
    print(f"ROOMS {i}: {cur.fetchone()[0]} rows in rooms", flush=True)
    c.close()


def fill(bench, chatd, stores, work, kafka, rate, seconds, i):
    """Messages into the stores, measured by nothing: chatbench's report is
    only checked for how many were acknowledged."""
    cluster = B.Cluster(chatd, stores, work, kafka=kafka, defaults=True)
    try:
        _, reps = B.allsend_on(bench, f"{i}F-fill", cluster, 1000, 10, 10, [rate], f"fill{os.urandom(4).hex()}",
                               seconds)
    finally:
        cluster.stop()
    print(f"FILL {i}: {reps[0].get('acked')} messages acknowledged of {rate * seconds} meant", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(B.REPO, "build"))
    ap.add_argument("--build-of", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTS")
    ap.add_argument("--order", default="ABAB")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--senders-per-room", type=int, default=10,
                    help="10: every member of a room of 10 (issue 19's shape); 1: the sweeps' one sender")
    ap.add_argument("--same-rooms", action="store_true",
                    help="every run in the first run's rooms (its users are members already), as make bench's "
                         "repeats were before each got rooms of its own")
    ap.add_argument("--pg-opt", action="append", default=[], metavar="K=V",
                    help="a PostgreSQL setting for the session's stores (postgres -c K=V): not chatd's, "
                         "the store's, e.g. checkpoint_timeout=30s to see what checkpoints cost")
    ap.add_argument("--pg-watch", action="store_true",
                    help="print PostgreSQL's checkpoints, autovacuums and autoanalyzes as they run")
    ap.add_argument("--other-rooms", type=int, default=3000, help="rooms an R in --order adds")
    ap.add_argument("--fill-rate", type=int, default=4000)
    ap.add_argument("--fill-seconds", type=int, default=60)
    ap.add_argument("--kafka", action="store_true", help="Apache Kafka (1 node) instead of the embedded broker")
    ap.add_argument("--json", default=None, help="append one line per run here")
    a = ap.parse_args()
    variants = {}
    for v in a.variant:
        n, _, o = v.partition("=")
        variants[n] = [x for x in o.split(",") if x]
    builds = dict(x.partition("=")[::2] for x in a.build_of)
    cfg = B.config(False)
    if a.pg_opt:
        base = B.pg_server_args
        B.pg_server_args = lambda d, p, fs=True: base(d, p, fs) + [x for o in a.pg_opt for x in ("-c", o)]
    out = tempfile.mkdtemp(prefix="chatd-ab-out-")
    work = tempfile.mkdtemp(prefix="chatd-ab-")
    os.chmod(work, 0o755)
    stores = kafka = None
    watch_stop = threading.Event()
    try:
        stores = B.Stores(work)
        bench = B.Bench(a.build, out, cfg)
        if a.pg_watch:
            threading.Thread(target=pg_watch, args=(stores.conninfo, watch_stop), daemon=True).start()
        if a.kafka:
            kafka = B.start_kafka(os.path.join(work, "kafka"), B.kafkactl.DEFAULT_VERSION)
            rate, secs = cfg["kafka_warmup"]
            c = B.Cluster(os.path.join(a.build, "chatd"), stores, work, kafka=kafka, defaults=True)
            try:
                bench.run("jvm-warmup", bench.load_args(c.urls(), 1000, 10, rate, f"w{os.urandom(4).hex()}",
                                                        duration=secs), c.pids(), rate=rate)
            finally:
                c.stop()
        same = f"ab{os.urandom(4).hex()}" if a.same_rooms else None
        for i, n in enumerate(a.order):
            if n == "R":
                other_rooms(stores.conninfo, a.other_rooms, i)
                continue
            if n == "F":
                fill(bench, os.path.join(a.build, "chatd"), stores, work, kafka, a.fill_rate, a.fill_seconds, i)
                continue
            chatd = os.path.join(builds.get(n, a.build), "chatd")
            with open("/proc/loadavg") as f:
                load0 = f.read().split()[0]
            rep = one(bench, chatd, stores, work, kafka, variants[n], a.rate, a.duration, f"{i}{n}",
                      a.clients, a.room_size, a.senders_per_room, run_id=same)
            lat = rep.get("latency_ms", {})
            w = rep.get("window_cpu", {})
            us = w.get("us_per_msg", {})
            row = dict(run=i, variant=n, opts=variants[n], broker="kafka" if kafka else "embedded",
                       held=rep.get("held"), not_held=rep.get("not_held"), p50=lat.get("p50"),
                       p99=lat.get("p99"), p999=lat.get("p999"), ack_p99=rep.get("ack_ms", {}).get("p99"),
                       lag_p99=rep.get("send_lag_ms", {}).get("p99"), us_per_msg=us,
                       all_us=round(sum(us.values())), cores=round(sum(w.get("cores", {}).values()), 2),
                       load_before=load0, load_after=rep.get("loadavg1_after"),
                       runq_wait_s=rep.get("runq_wait_s"), stages=rep.get("stages"),
                       postgres_by_kind=w.get("postgres_us_per_msg_by_kind"))
            print(f"RUN {i} {n} {row['broker']} {','.join(variants[n]) or 'defaults'}: "
                  f"held={row['held']} p50 {row['p50']} p99 {row['p99']} p99.9 {row['p999']} "
                  f"ack p99 {row['ack_p99']} | µs/msg all {row['all_us']} ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in us.items())
                  + f") cores {row['cores']} | load {load0} -> {row['load_after']}"
                  + "".join(f"\n    PostgreSQL µs/msg by process: " + ", ".join(f"{k} {v:.0f}" for k, v in pk.items())
                            for pk in [w.get("postgres_us_per_msg_by_kind")] if pk), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        watch_stop.set()
        if kafka:
            B.stop_kafka(kafka, out)
        if stores:
            stores.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"chatbench reports and logs: {out}")


if __name__ == "__main__":
    main()
