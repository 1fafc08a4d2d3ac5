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
"""
import argparse
import json
import os
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402


def one(bench, chatd, stores, work, kafka, opts, rate, duration, name, clients=1000, room_size=10, senders=10):
    kw = B.variant_args(opts)
    cluster = B.Cluster(chatd, stores, work, kafka=kafka, defaults=True, **kw)
    try:
        run_id = f"ab{os.urandom(4).hex()}"
        bench.run(f"{name}-join", bench.load_args(cluster.urls(), clients, room_size, 0, run_id, duration=0.5)
                  + ["--settle", 60 if room_size < 1000 else 180, "--warmup", 0], cluster.pids())
        cluster.check()
        rep = bench.run(f"{name}-r{rate}", bench.load_args(cluster.urls(), clients, room_size, rate, run_id,
                                                            duration=duration)
                        + ["--senders-per-room", senders], cluster.pids(),
                        metrics_ports=cluster.metrics_ports, rate=rate)
    finally:
        cluster.stop()
    return rep


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
    ap.add_argument("--kafka", action="store_true", help="Apache Kafka (1 node) instead of the embedded broker")
    ap.add_argument("--json", default=None, help="append one line per run here")
    a = ap.parse_args()
    variants = {}
    for v in a.variant:
        n, _, o = v.partition("=")
        variants[n] = [x for x in o.split(",") if x]
    builds = dict(x.partition("=")[::2] for x in a.build_of)
    cfg = B.config(False)
    out = tempfile.mkdtemp(prefix="chatd-ab-out-")
    work = tempfile.mkdtemp(prefix="chatd-ab-")
    os.chmod(work, 0o755)
    stores = kafka = None
    try:
        stores = B.Stores(work)
        bench = B.Bench(a.build, out, cfg)
        if a.kafka:
            kafka = B.start_kafka(os.path.join(work, "kafka"), B.kafkactl.DEFAULT_VERSION)
            rate, secs = cfg["kafka_warmup"]
            c = B.Cluster(os.path.join(a.build, "chatd"), stores, work, kafka=kafka, defaults=True)
            try:
                bench.run("jvm-warmup", bench.load_args(c.urls(), 1000, 10, rate, f"w{os.urandom(4).hex()}",
                                                        duration=secs), c.pids(), rate=rate)
            finally:
                c.stop()
        for i, n in enumerate(a.order):
            chatd = os.path.join(builds.get(n, a.build), "chatd")
            with open("/proc/loadavg") as f:
                load0 = f.read().split()[0]
            rep = one(bench, chatd, stores, work, kafka, variants[n], a.rate, a.duration, f"{i}{n}",
                      a.clients, a.room_size, a.senders_per_room)
            lat = rep.get("latency_ms", {})
            w = rep.get("window_cpu", {})
            us = w.get("us_per_msg", {})
            row = dict(run=i, variant=n, opts=variants[n], broker="kafka" if kafka else "embedded",
                       held=rep.get("held"), not_held=rep.get("not_held"), p50=lat.get("p50"),
                       p99=lat.get("p99"), p999=lat.get("p999"), ack_p99=rep.get("ack_ms", {}).get("p99"),
                       lag_p99=rep.get("send_lag_ms", {}).get("p99"), us_per_msg=us,
                       all_us=round(sum(us.values())), cores=round(sum(w.get("cores", {}).values()), 2),
                       load_before=load0, load_after=rep.get("loadavg1_after"),
                       runq_wait_s=rep.get("runq_wait_s"), stages=rep.get("stages"))
            print(f"RUN {i} {n} {row['broker']} {','.join(variants[n]) or 'defaults'}: "
                  f"held={row['held']} p50 {row['p50']} p99 {row['p99']} p99.9 {row['p999']} "
                  f"ack p99 {row['ack_p99']} | µs/msg all {row['all_us']} ("
                  + ", ".join(f"{k} {v:.0f}" for k, v in us.items())
                  + f") cores {row['cores']} | load {load0} -> {row['load_after']}", flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        if kafka:
            B.stop_kafka(kafka, out)
        if stores:
            stores.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"chatbench reports and logs: {out}")


if __name__ == "__main__":
    main()
