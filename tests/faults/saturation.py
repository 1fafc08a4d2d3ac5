#!/usr/bin/python3
"""No false failover under saturation (issue 18): a chatd cluster with the
Kafka settings chatd ships (2 classifiers, 2 gateways, chat-send with
chatd's default 12 partitions) carries chatbench's rooms of 10 with every
member sending, at a rate that keeps the machine's cores busy, for
--duration seconds. A classifier that misses its session (a heartbeat that
did not go out in time, a poll loop starved past max.poll.interval.ms)
shows as a rebalance: `kafka_revoked` / `kafka_assigned` in its log after
the group settled, or a commit refused; with leases (--ownership=lease, the
embedded broker's default) a renewal PostgreSQL did not answer within the
lease (`ownership_lease_lapsed`, after `ownership_beat_failed` if it
failed), and the partitions moving. Renewals that came past half the lease
(`ownership_beat_slow`) are near misses: counted and printed, not failed.
A gateway's consumer has no group (nothing to lose); what it delivers is
chatbench's count. Exit 0 iff no member lost its session or partitions
during the window, no process died and chatbench had every window message
acknowledged (deliveries still queued when the drain ends are reported:
above the machine's peak the backlog outlives any drain).
--freeze-classifier S stops classifier1 (SIGSTOP) for S seconds in the
middle of the window: the run must then fail (a check of the check).

    CHATD_BIN=build/chatd /usr/bin/python3 tests/faults/saturation.py --duration 600
    CHATD_TEST_KAFKA=real ... (the same, on Apache Kafka)       # make saturation KAFKA=real
    make saturation DURATION=40 RATE=1000 SATURATION_ARGS=--freeze-classifier=2.5   # must FAIL

The figures it prints (CPU busy, chatbench's rates and latency, the
rebalance counts) go to docs/RELIABILITY.md with the command that made
them.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHIPPED_SEND_PARTITIONS = 12   # chatd's --send-partitions default
# Log events of a group member that mean its assignment moved.
# With leases (--ownership=lease) a beat not answered within the lease is
# the false failover (ownership_lease_lapsed; a failed beat comes first).
REBALANCE = re.compile(rb"^ts=(\S+) .*event=(kafka_revoked|kafka_assigned|kafka_commit_failed"
                       rb"|kafka_rebalance_error|ownership_lease_lapsed|ownership_beat_failed)\b(.*)$",
                       re.M)


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cpu_times():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def member_events(path, t_from):
    """Rebalance events of a classifier's log at or after t_from (epoch s)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for m in REBALANCE.finditer(data):
        ts = time.mktime(time.strptime(m.group(1).decode()[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if ts >= t_from:
            out.append(f"{m.group(1).decode()} {m.group(2).decode()}{m.group(3).decode()[:120]}")
    return out


SLOW_BEAT = re.compile(rb"^ts=(\S+) .*event=ownership_beat_slow .*since_ms=(\d+)", re.M)


def slow_beats(path, t_from):
    """since_ms of the lease renewals that came past half the lease (near
    misses, roles/ownership.c) at or after t_from."""
    with open(path, "rb") as f:
        data = f.read()
    return [int(m.group(2)) for m in SLOW_BEAT.finditer(data)
            if time.mktime(time.strptime(m.group(1).decode()[:19], "%Y-%m-%dT%H:%M:%S"))
            - time.timezone >= t_from]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="measured seconds (600)")
    ap.add_argument("--rate", type=int, default=5000, help="messages/s in all (5000)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--chatbench", default=os.path.join(REPO, "build", "chatbench"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--freeze-classifier", type=float, default=0, metavar="S",
                    help="SIGSTOP classifier1 for S s mid-window: the run must fail")
    args = ap.parse_args()
    if not os.access(args.chatbench, os.X_OK):
        sys.exit(f"{args.chatbench} missing: make chatbench")
    real = harness.kafkamode.REAL
    work = tempfile.mkdtemp(prefix="chatd-saturation-")
    os.chmod(work, 0o755)
    pg = c = kafka = None
    problems, ok = [], False
    try:
        pg = harness.Postgres(work)
        if real:
            kafka = harness.kafkamode.acquire(os.path.join(work, "kafka"))
            log(f"real Kafka {kafka.version}, {kafka.nodes} node(s)")
        harness.SEND_PARTITIONS = SHIPPED_SEND_PARTITIONS
        c = harness.Cluster(work, pg, "saturation", kafka=kafka, kafka_opts=[])
        c.start()
        log(f"cluster up ({'Kafka' if real else 'embedded broker'}, shipped Kafka settings, "
            f"{SHIPPED_SEND_PARTITIONS} chat-send partitions)")
        urls = ",".join(f"ws://127.0.0.1:{p}" for p in c.gw_ports)
        report = os.path.join(work, "chatbench.json")
        cmd = [args.chatbench, "--url", urls, "--clients", str(args.clients), "--room-size", "10",
               "--senders-per-room", "10", "--rate", str(args.rate), "--duration",
               str(args.duration), "--warmup", "10", "--drain", "30", "--procs", "1",
               "--json", report]
        log("chatbench: " + " ".join(cmd[1:]))
        # The window starts after chatbench's setup and warm-up; rebalances
        # are counted from the moment traffic starts (setup included).
        t0 = time.time()
        b0 = cpu_times()
        # files, not pipes: nobody reads them while the classifier is frozen
        bout, berr = (open(os.path.join(work, f"chatbench.{x}"), "w+") for x in ("out", "err"))
        bench = subprocess.Popen(cmd, stdout=bout, stderr=berr, text=True)
        if args.freeze_classifier > 0:
            time.sleep(10 + args.duration / 2)   # chatbench's warm-up, then half the window
            victim = c.procs["classifier1"]
            log(f"freezing classifier1 (pid {victim.pid}) for {args.freeze_classifier:g} s")
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(args.freeze_classifier)
            os.kill(victim.pid, signal.SIGCONT)
        bench.wait(timeout=args.duration + 400)
        out, err = (f.seek(0) or f.read() for f in (bout, berr))
        bout.close()
        berr.close()
        b1 = cpu_times()
        busy = 100.0 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if bench.returncode != 0:
            problems.append(f"chatbench exit {bench.returncode}: {err[-2000:]}")
        print(out[-3000:], flush=True)
        rep = json.load(open(report)) if os.path.exists(report) else {}
        events = {}
        for i in range(c.n_cl):
            n = f"classifier{i}"
            events[n] = member_events(c.procs[n].logpath, t0)
        moved = sum(len(v) for v in events.values())
        slow = [ms for i in range(c.n_cl) for ms in slow_beats(c.procs[f"classifier{i}"].logpath, t0)]
        log(f"machine CPU busy {busy:.0f}% over the run (chatbench included); "
            f"rebalance events after traffic started: {moved}; lease renewals past half "
            f"the lease: {len(slow)}" + (f" (worst {max(slow)} ms)" if slow else ""))
        for n, evs in events.items():
            for e in evs:
                log(f"  {n}: {e}")
        for n in list(c.procs):
            if not c.procs[n].alive():
                problems.append(f"{n} died")
        if moved:
            problems.append(f"{moved} rebalance events during the run: a false failover")
        if rep and (rep.get("unacked", 0) or rep.get("extra", 0)):
            problems.append("chatbench: " + json.dumps({k: rep.get(k) for k in
                                                        ("unacked", "missing", "extra")}))
        if rep.get("missing", 0):
            # Above the rate this machine carries the backlog outlives the
            # drain: deliveries still queued, not lost (the fault suites
            # check loss). Reported, not what this run is about.
            log(f"deliveries still queued after the drain: {rep['missing']} of "
                f"{rep.get('expected')} (the rate was above what the machine carried)")
        ok = not problems
    except Exception as e:   # noqa: BLE001 - report anything, then clean up
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        if c:
            problems += c.stop()
        if pg:
            pg.close()
        if kafka:
            harness.kafkamode.release()
        if problems:
            ok = False
            print("\n".join(problems), flush=True)
        if args.keep or not ok:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log("saturation " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
