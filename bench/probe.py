#!/usr/bin/python3
"""probe: one cluster, a few chatbench points, where the CPU goes.

For performance work between two `make bench` runs: starts Redis,
PostgreSQL and the same chatd cluster as bench/run.py (its classes), joins
one set of users once, then runs chatbench at each --rates point and prints,
per point, p50/p99, the CPU µs per offered message of every process inside
the measured window, and chatd's stage histograms. With --perf PREFIX it
also records `perf record -a -g` for 3 s in the middle of each window
(PREFIX-RATE.data). Nothing is written to docs/.

    make all chatbench
    /usr/bin/python3 bench/probe.py --rates 5000,8000
    /usr/bin/python3 bench/probe.py --room-size 1000 --clients 1000 --rates 800,1600
    /usr/bin/python3 bench/probe.py --rates 4000 --kafka-opt fetch.wait.max.ms=1
"""
import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(B.REPO, "build"))
    ap.add_argument("--clients", type=int, default=4000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--rates", default="2500", help="comma-separated msgs/s")
    ap.add_argument("--duration", type=int, default=5, help="measured window, s")
    ap.add_argument("--kafka-opt", action="append", default=[], help="to gateways and classifiers")
    ap.add_argument("--gateway-arg", action="append", default=[])
    ap.add_argument("--classifier-arg", action="append", default=[],
                    help="after --kafka-opt, so a classifier-only --kafka-opt wins")
    ap.add_argument("--send-partitions", type=int, default=B.BENCH_SEND_PARTITIONS)
    ap.add_argument("--perf", metavar="PREFIX", default="")
    a = ap.parse_args()
    B.BENCH_SEND_PARTITIONS = a.send_partitions
    cfg = B.config(False)
    cfg["duration"] = a.duration
    with B.scratch_cluster(a.build, cfg, "chatd-probe", kafka_opts=a.kafka_opt,
                           gateway_args=a.gateway_arg, classifier_args=a.classifier_arg) as (bench, cluster, out):
        run_id = f"p{os.urandom(4).hex()}"
        bench.run("join", bench.load_args(cluster.urls(), a.clients, a.room_size, 0, run_id, duration=0.5)
                  + ["--settle", 180, "--warmup", 0], cluster.pids())
        for rate in (int(r) for r in a.rates.split(",")):
            if a.perf:
                def record(rate=rate):
                    time.sleep(cfg["warmup"] + a.duration / 2 + 2)
                    subprocess.run(["perf", "record", "-a", "-g", "-o", f"{a.perf}-{rate}.data", "--",
                                    "sleep", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                threading.Thread(target=record, daemon=True).start()
            rep = bench.run(f"r{rate}", bench.load_args(cluster.urls(), a.clients, a.room_size, rate, run_id),
                            cluster.pids(), metrics_ports=cluster.metrics_ports, rate=rate)
            lat = rep.get("latency_ms", {})
            w = rep.get("window_cpu", {})
            us = w.get("us_per_msg", {})
            held = "held" if rep.get("held") else f"NOT held ({rep.get('not_held')})"
            print(f"rate {rate}/s: sent/s {rep.get('sent_per_s')} {held} "
                  f"p50 {lat.get('p50')} p99 {lat.get('p99')} ms (from intended send time; from actual send "
                  f"{rep.get('latency_from_send_ms', {}).get('p99')}, send lag p99 "
                  f"{rep.get('send_lag_ms', {}).get('p99')}); cores busy "
                  f"{sum(w.get('cores', {}).values()):.2f}", flush=True)
            print("  CPU µs/msg: " + ", ".join(f"{k} {v:.1f}" for k, v in us.items())
                  + f"; all {sum(us.values()):.0f}", flush=True)
            for k, v in (rep.get("stages") or {}).items():
                print(f"  {k}: mean {v['mean_ms']} ms, p99 ≤{v['p99_ms']} ms", flush=True)
    print(f"chatbench reports and logs: {out}")


if __name__ == "__main__":
    main()
