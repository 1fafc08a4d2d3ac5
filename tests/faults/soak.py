#!/usr/bin/python3
"""Soak with random faults: traffic from many clients while a schedule picks
one of faults 1-6 at random every few seconds (gateway SIGKILL + restart,
classifier SIGKILL + restart, Redis restarted empty, PostgreSQL down, Kafka
broker down or failing requests (with CHATD_TEST_KAFKA=real: a real Kafka
node SIGKILLed and started again, CHATD_TEST_KAFKA_NODES=3 for three),
Redis's script cache flushed again and again), for --duration seconds;
then the fault checker (checker.py).
Besides the clients, bursts of records are produced straight into chat-send
(thousands at a time, so classifier batches are larger than one Redis read)
and checked for dense seqs, each sender's order and no loss. Seq collisions
the classifiers detected and repaired are counted. Bounded; prints the
counts; exit 0 iff nothing was lost, duplicated, reordered or left
inconsistent and no process misbehaved.

    CHATD_BIN=build/chatd /usr/bin/python3 tests/faults/soak.py --duration 60
"""
import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checker  # noqa: E402
import harness  # noqa: E402


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


async def fault_gateway(c, run, rnd):
    # the gateway holding more clients (they move to the survivor each time)
    load = [sum(1 for cl in run.clients if cl.port == p) + rnd.random() for p in c.gw_ports]
    name = f"gateway{load.index(max(load))}"
    f = run.fault(f"{name} SIGKILL")
    await asyncio.to_thread(c.kill, name)
    run.restored(f)
    await asyncio.sleep(rnd.uniform(1, 3))
    await asyncio.to_thread(c.restart, name)
    return f


async def fault_classifier(c, run, rnd):
    name = f"classifier{rnd.randrange(2)}"
    f = run.fault(f"{name} SIGKILL")
    await asyncio.to_thread(c.kill, name)
    run.restored(f)
    await asyncio.sleep(rnd.uniform(1, 4))
    await asyncio.to_thread(c.restart, name)
    return f


async def fault_redis(c, run, rnd):
    f = run.fault("redis restarted empty")
    await asyncio.to_thread(c.redis_restart_empty, rnd.uniform(0, 1.5))
    run.restored(f)
    return f


async def fault_pg(c, run, rnd):
    f = run.fault("postgres down")
    try:
        await asyncio.to_thread(c.pg.stop_fast)
        await asyncio.sleep(rnd.uniform(2, 5))
    finally:
        if not c.pg.proc.alive():
            await asyncio.to_thread(c.pg.start)
    run.restored(f)
    return f


async def fault_kafka(c, run, rnd):
    def post(path, body=None):
        st, data = c.broker_fault(path, body)
        if st != 200:
            raise RuntimeError(f"POST {path}: HTTP {st} {data!r}")
    if rnd.random() < 0.5:
        f = run.fault("kafka broker down")
        await asyncio.to_thread(post, "/faults/broker/1/down")
        try:
            await asyncio.sleep(rnd.uniform(1, 5))
        finally:
            await asyncio.to_thread(post, "/faults/broker/1/up")
    else:
        f = run.fault("kafka request errors")
        api = rnd.choice([0, 1, 8])
        errs = [rnd.choice([6, 7]) for _ in range(rnd.randint(1, 6))]
        await asyncio.to_thread(post, "/faults/request-errors",
                                {"api_key": api, "errors": errs})
        await asyncio.sleep(1)
    run.restored(f)
    return f


async def fault_script_flush(c, run, rnd):
    f = run.fault("redis script cache flushed")
    r = c.redis_client()
    t_end = harness.now() + rnd.uniform(1, 4)
    while harness.now() < t_end:
        try:
            await asyncio.to_thread(r.script_flush)
        except Exception:  # noqa: BLE001 - Redis restarting: the fault goes on
            pass
        await asyncio.sleep(0.002)
    run.restored(f)
    return f


async def fault_kafka_real(c, run, rnd):
    """Real Kafka (CHATD_TEST_KAFKA=real): one node SIGKILLed, chosen at
    random (on three nodes it may lead chat-send partitions, coordinate the
    classifiers' group or be the active controller), down 3-20 s, started
    again; the next fault waits until every node is registered."""
    k = c.kafka
    i = rnd.randrange(k.nodes)
    down = rnd.uniform(3, 20) if k.nodes > 1 else rnd.uniform(2, 8)
    f = run.fault(f"kafka node{i + 1} SIGKILL")
    await asyncio.to_thread(k.kill, i)
    try:
        await asyncio.sleep(down)
    finally:
        await asyncio.to_thread(k.start, i)
    run.restored(f)
    return f


FAULTS = {1: fault_gateway, 2: fault_classifier, 3: fault_redis, 4: fault_pg, 5: fault_kafka,
          6: fault_script_flush}


class Bulk:
    """Bursts of records into chat-send (Cluster.produce_send): 4 senders in
    each of `rooms` rooms, `per` records each per burst, every `every` s."""

    def __init__(self, c, rooms=8, per=100, every=3.0):
        self.c, self.per, self.every = c, per, every
        self.rooms = [f"bulk-{harness.uid()[:8]}-{i}" for i in range(rooms)]
        self.ids, self.n = [], 0
        self.task = None

    async def _loop(self):
        while True:
            msgs = [(room, f"b{k}", f"c{self.n + i}", f"b{k} {self.n + i}")
                    for i in range(self.per) for room in self.rooms for k in range(4)]
            self.n += self.per
            try:
                self.ids += await asyncio.to_thread(self.c.produce_send, msgs)
            except Exception as e:  # noqa: BLE001 - broker down: these may be partly stored
                log(f"bulk burst failed ({type(e).__name__}): its records may be missing")
            await asyncio.sleep(self.every)

    def start(self):
        self.task = asyncio.ensure_future(self._loop())
        return self

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def check(self, timeout=120):
        deadline = harness.now() + timeout
        rows = []
        while harness.now() < deadline:
            rows = await asyncio.to_thread(self.c.stored_rows, self.rooms)
            if len({r[2] for r in rows} & set(self.ids)) >= len(self.ids):
                break
            await asyncio.sleep(1)
        # a failed burst's ids were never returned: only its stored ones count
        known = set(self.ids)
        extra = [r[2] for r in rows if r[2] not in known]
        return len(self.ids) + len(extra), checker.bulk_problems(rows, self.ids + extra)


async def soak(c, args, rnd, faults):
    run = harness.Run(c, f"soak {args.duration:.0f}s")
    rooms, clients, senders = await harness.standard_clients(
        run, n_clients=args.clients, n_rooms=args.rooms, n_senders=args.senders)
    log(f"{len(clients)} clients, {len(rooms)} rooms, {len(senders)} senders; "
        f"faults {sorted(faults)}")
    tr = harness.Traffic(senders, interval=args.interval).start()
    bulk = Bulk(c).start() if args.bulk else None
    await run.warm_up()
    t_end = harness.now() + args.duration
    counts = {}
    while harness.now() < t_end:
        await asyncio.sleep(min(rnd.uniform(args.every / 2, args.every * 1.5),
                                max(0.0, t_end - harness.now())))
        if harness.now() >= t_end:
            break
        k = rnd.choice(sorted(faults))
        f = await FAULTS[k](c, run, rnd)
        counts[f[0]] = counts.get(f[0], 0) + 1
        log(f"fault {k}: {f[0]} ({f[2] - f[1]:.1f}s); acked so far "
            f"{harness.acked_after(run, 0)}")
        await asyncio.to_thread(c.wait_all_ready, 60)
    await asyncio.sleep(2)
    await tr.stop()
    if bulk:
        await bulk.stop()
    await run.converge(timeout=120, settle=90)
    collisions = sum(c.log_count(n, "event=seq_collision") for n in ("classifier0", "classifier1"))
    extra = f"seq collisions detected and repaired: {collisions}"
    if bulk:
        n_bulk, bulk_problems = await bulk.check()
        extra += f" | bulk records: {n_bulk}"
    res = checker.check(run, extra_line="faults: " + ", ".join(
        f"{k} x{v}" for k, v in sorted(counts.items())) + " | " + extra)
    if bulk:
        for p in bulk_problems:
            res.problem("bulk", p)
    await run.close()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60, help="seconds of faults (60)")
    ap.add_argument("--every", type=float, default=5, help="mean seconds between faults (5)")
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--rooms", type=int, default=6)
    ap.add_argument("--senders", type=int, default=6)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between sends per sender")
    ap.add_argument("--faults", default="1,2,3,4,5,6", help="which faults (1-6) to draw from")
    ap.add_argument("--no-bulk", dest="bulk", action="store_false",
                    help="no bursts of records straight into chat-send")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    faults = {int(x) for x in args.faults.split(",") if x.strip()}
    fi = harness.has_flag("fault-injection")
    real = harness.kafkamode.REAL
    if real:
        FAULTS[5] = fault_kafka_real
    elif 5 in faults and not fi:
        log("chatd has no --fault-injection: fault 5 (Kafka) skipped")
        faults.discard(5)
    log(f"soak: chatd {harness.CHATD_BIN}, duration {args.duration:.0f}s, seed {seed}")
    work = tempfile.mkdtemp(prefix="chatd-soak-")
    os.chmod(work, 0o755)
    pg = c = kafka = None
    ok = False
    problems = []
    try:
        pg = harness.Postgres(work)
        if real:
            kafka = harness.kafkamode.acquire(os.path.join(work, "kafka"))
            log(f"real Kafka {kafka.version}, {kafka.nodes} node(s): {kafka.bootstrap}")
        c = harness.Cluster(work, pg, "soak", broker_args=["--fault-injection"] if fi else [],
                            cl_args=["--classifier-batch=2000"], kafka=kafka)
        c.start()
        res = harness.run_bounded(soak(c, args, rnd, faults), args.duration + 400)
        problems = res.problems
        ok = not problems
    except Exception as e:   # noqa: BLE001 - report anything, then clean up
        problems = [f"{type(e).__name__}: {e}"]
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
            if c:
                print(c.tails(15), flush=True)
        if args.keep or not ok:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log("soak " + ("PASSED" if ok else "FAILED") + f" (seed {seed})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
