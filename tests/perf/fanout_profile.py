#!/usr/bin/python3
"""Where chatd's CPU time goes under fan-out load: a perf profile.

Starts redis + PostgreSQL + `chatd --role=all` (embedded Kafka) like
idle_rss.py, drives it with build/chatbench (big rooms, one sender each, so
most work is delivering one message to many sockets), and records
`perf record -e cpu-clock -g` on the chatd process for the measured window
(cpu-clock: hardware counters are often missing in VMs). Writes
<out>/perf.data, <out>/report.txt (self time by symbol, all threads),
<out>/report-main.txt (the loop thread only: gateway + classifier glue) and
<out>/chatbench.json, and prints the top of the reports.

    make chatbench
    /usr/bin/python3 tests/perf/fanout_profile.py --out /tmp/prof

Takes --duration + ~30 s. Needs perf (linux-perf) and permission to trace
the process (root or perf_event_paranoid <= 1).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import idle_rss  # noqa: E402


def cpu_s(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--room-size", type=int, default=500)
    ap.add_argument("--rate", type=int, default=100, help="messages/s in all")
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--procs", type=int, default=2, help="chatbench worker processes")
    ap.add_argument("--chatd", default=os.path.join(REPO, "build", "chatd"))
    ap.add_argument("--chatbench", default=os.path.join(REPO, "build", "chatbench"))
    a = ap.parse_args()
    import chatlib
    os.makedirs(a.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="chatd-prof-")
    os.chmod(workdir, 0o755)
    procs = []
    try:
        redis = chatlib.start_redis(workdir)
        procs.append(redis)
        pg, pgport = idle_rss.start_pg(chatlib, workdir)
        procs.append(pg)
        port = chatlib.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
        env["CHATD_JWT_SECRET"] = idle_rss.SECRET
        chatd = chatlib.Proc("chatd", [a.chatd, "--role=all", f"--listen=127.0.0.1:{port}",
                                       "--kafka=embedded", f"--redis={redis.url}",
                                       f"--pg=host=127.0.0.1 port={pgport} user=postgres dbname=postgres",
                                       "--rate=1000", "--rate-burst=1000", "--log-level=warn"],
                             workdir, env=env)
        procs.append(chatd)
        chatlib.wait_ready(chatd, port, 60)
        warmup = 3
        bench = subprocess.Popen(
            [a.chatbench, "--url", f"ws://127.0.0.1:{port}", "--clients", str(a.clients),
             "--room-size", str(a.room_size), "--rate", str(a.rate), "--duration", str(a.duration),
             "--warmup", str(warmup), "--procs", str(a.procs), "--source-ips", "127.0.0.2-127.0.0.9",
             "--jwt-secret", idle_rss.SECRET, "--json", os.path.join(a.out, "chatbench.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Start recording when chatbench starts sending (its warm-up line),
        # else at most after 120 s of setup.
        lines = []
        deadline = time.monotonic() + 120
        for line in bench.stdout:
            lines.append(line)
            if "warm" in line.lower() or "sending" in line.lower() or time.monotonic() > deadline:
                break
        time.sleep(warmup)
        data = os.path.join(a.out, "perf.data")
        cpu0, t0 = cpu_s(chatd.pid), time.monotonic()
        subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(chatd.pid),
                        "-o", data, "--", "sleep", str(max(a.duration - 2, 3))],
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True)
        cpu = cpu_s(chatd.pid) - cpu0
        wall = time.monotonic() - t0
        lines += bench.stdout.readlines()
        bench.wait(timeout=120)
        with open(os.path.join(a.out, "chatbench.txt"), "w") as f:
            f.writelines(lines)
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", "sym", "-g", "none", "--percent-limit", "0.5"],
                             capture_output=True, text=True).stdout
        with open(os.path.join(a.out, "report.txt"), "w") as f:
            f.write(rep)
        main = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                               "--tid", str(chatd.pid), "--sort", "sym", "-g", "caller,0.5,callee",
                               "--percent-limit", "1"], capture_output=True, text=True).stdout
        with open(os.path.join(a.out, "report-main.txt"), "w") as f:
            f.write(main)
        print("".join(lines[-25:]))
        print("\n".join(l for l in rep.splitlines() if l.strip() and not l.startswith("#"))[:4000])
        try:
            with open(os.path.join(a.out, "chatbench.json")) as f:
                rate = json.load(f)["delivered"] / a.duration
        except (OSError, KeyError, ValueError):
            rate = 0
        print(f"\nchatd CPU while recording: {cpu:.2f} s in {wall:.1f} s ({100 * cpu / wall:.0f}% of a core)"
              + (f", {1e6 * cpu / (rate * wall):.2f} us per delivery at {rate:.0f} deliveries/s" if rate else ""))
        print(f"full reports in {a.out}/")
        return 0 if bench.returncode == 0 else 1
    finally:
        for p in reversed(procs):
            p.stop(sig=signal.SIGINT if p.name == "postgres" else signal.SIGTERM, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
