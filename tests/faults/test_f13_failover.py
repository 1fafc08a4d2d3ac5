"""Fault 13 (issue 18): how long rooms go quiet when the classifier group
changes, with the Kafka settings chatd ships (no --kafka-opt overrides).

Two classifiers, two gateways; 8 rooms, one per chat-send partition, each
sent about 20 messages/s by its own client on gateway 0 and read by one
client on each gateway. Per room, the longest gap in a reader's live
delivery (its contiguous seq advancing) is measured around:
- SIGKILL of classifier1: every room under 3 s; the rooms of classifier0
  (the survivor, by partition_owners) do not stall (0.5 s);
- classifier1 started again (the pod's replacement, a scale-out): the rooms
  classifier0 keeps do not stall, the moved ones not over 0.5 s, and the
  new one stores within 5 s (with --ownership=group on the embedded
  broker the kept rooms are allowed 1.2 s: the mock's rebalances);
- SIGTERM of classifier1 (a rolling update, a scale-in): the survivor's
  rooms do not stall, the moved ones not over 0.5 s.
Those are the goals on Apache Kafka (CHATD_TEST_KAFKA=real), and with
--ownership=lease (the embedded broker's default: leases in PostgreSQL, no
group coordinator) on every count, the kept rooms on a start at 0.5 s too.
With --ownership=group, librdkafka's mock cluster (the embedded broker)
cannot reach them: it checks sessions
once a second and holds every JoinGroup session.timeout.ms - 1 s
(docs/ARCHITECTURE.md, "Failover"), so there the dead or moved rooms are
held to those timers' sums; the survivor's rooms to 0.5 s on both. Every
limit is raised by the worst gap of the 2 s of steady traffic before the
kill (a loaded machine's noise floor, printed). The figures are printed
(pytest -s) for docs/RELIABILITY.md; the checker then finds nothing
acknowledged lost, seqs dense.
"""
import asyncio
import os
import re
import socket
import zlib

import pytest

import checker
import harness

REAL = harness.kafkamode.REAL
STALL_S = 0.5           # more is a stall
KILL_S = 3.0            # goal: a dead classifier's rooms (real Kafka)
SEQUENCING_S = 5.0      # goal: a started classifier stores (real Kafka)
KEPT_ON_JOIN_S = 1.2    # the mock coordinator's join (--ownership=group, embedded)
WINDOW_S = 8.0          # how long after each change the rooms are watched
# Measuring other settings: F13_KAFKA_OPTS="session.timeout.ms=1500,..."
# (the goals are for the shipped settings, the default).
KAFKA_OPTS = [f"--kafka-opt={o}" for o in os.environ.get("F13_KAFKA_OPTS", "").split(",") if o]
# F13_OWNERSHIP=group|lease: the classifiers' --ownership (default: chatd's,
# lease with the embedded broker, group with Kafka)
OWNERSHIP = os.environ.get("F13_OWNERSHIP", "")
CL_ARGS = [f"--ownership={OWNERSHIP}"] if OWNERSHIP else []


def room_gaps(readers, rooms, t_from, t_to):
    """room -> longest gap in any reader's live delivery that overlaps
    [t_from, t_to] (a gap still open at t_to counts up to now)."""
    out = {}
    t_now = harness.now()
    for r in rooms:
        g = 0.0
        for c in readers:
            for a, b in c.stalls[r]:
                if b >= t_from and a <= t_to:
                    g = max(g, b - a)
            if c.last_adv[r] <= t_to:
                g = max(g, t_now - c.last_adv[r])
        out[r] = round(g, 2)
    return out


class Stalls:
    """The figures of a run, and the goals it missed."""

    def __init__(self):
        self.figures, self.failures = [], []

    def record(self, label, gaps, rooms, limit):
        worst = max((gaps[r] for r in rooms), default=0.0)
        self.figures.append(f"{label}: worst={worst:.2f}s (limit {limit:.2f}s) "
                            f"rooms={sorted(gaps[r] for r in rooms)}")
        if worst > limit:
            self.failures.append(f"{label}: a room stalled {worst:.2f}s, over {limit:.2f}s")

    async def finish(self, run, traffic):
        """Stops the traffic, then the checker and the goals."""
        await traffic.stop()
        await run.converge()
        res = checker.check(run, extra_line="\n  ".join([""] + self.figures))
        await run.close()
        print("\n" + "\n".join(self.figures))
        res.assert_ok()
        assert not self.failures, "\n".join(self.failures + self.figures)


async def flowing(readers, rooms, what, timeout=40):
    """Waits until every room was delivered to every reader in the last
    0.3 s: the next change starts from steady traffic."""
    await harness.wait_for(lambda: all(harness.now() - c.last_adv[r] < 0.3
                                       for c in readers for r in rooms),
                           timeout, f"every room flowing {what}")


async def start_rooms(run):
    """A room per chat-send partition, each sent ~20 messages/s by its own
    client on gateway 0 and read by a client on each gateway; returns once
    warm: (rooms, room -> partition, readers, traffic)."""
    rooms = harness.rooms_spanning(harness.SEND_PARTITIONS)
    part = {r: zlib.crc32(r.encode()) % harness.SEND_PARTITIONS for r in rooms}
    senders = [run.client(rooms=[r]) for r in rooms]
    readers = [run.client(rooms=rooms) for _ in range(2)]
    await asyncio.gather(*(s.start(gw=0) for s in senders))
    await asyncio.gather(*(rd.start(gw=i) for i, rd in enumerate(readers)))
    for s in senders:
        s.track_stalls = False
    tr = harness.Traffic(senders, interval=0.05).start()
    await run.warm_up()
    return rooms, part, readers, tr


def owners(c):
    """partition -> owner (host:pid) of the latest epoch taken."""
    rows = c.query("SELECT partition, owner FROM partition_owners WHERE topic = %s",
                   (c.topic_send,))
    return {p: o for p, o in rows}


def owner_of(c, name):
    return f"{socket.gethostname()}:{c.procs[name].pid}"


def ownership(c, name):
    """'lease' or 'group' (--ownership), from the classifier's log."""
    with open(c.procs[name].logpath, "rb") as f:
        m = re.search(rb"event=classifier_started .*ownership=(\w+)", f.read())
    return m.group(1).decode() if m else "group"


def session_s(c, name):
    """The classifier's effective session.timeout.ms, from its log."""
    with open(c.procs[name].logpath, "rb") as f:
        m = re.search(rb"event=kafka_consumer_ready .*group=.* session_ms=(\d+)", f.read())
    if not m:   # a chatd from before issue 18 logged no session_ms: 6 s then
        return 6.0
    return int(m.group(1)) / 1000.0


def test_classifier_failover_stalls(make_cluster):
    c = make_cluster(kafka_opts=KAFKA_OPTS, cl_args=CL_ARGS)
    st = Stalls()
    figures, failures, record = st.figures, st.failures, st.record

    async def body():
        run = harness.Run(c, "f13 classifier failover")
        rooms, part, readers, tr = await start_rooms(run)
        both = {owner_of(c, "classifier0"), owner_of(c, "classifier1")}
        await harness.wait_for(lambda: set(owners(c).values()) == both, 30,
                               "both classifiers own partitions")
        await asyncio.sleep(2)
        t = harness.now()
        noise = max(room_gaps(readers, rooms, t - 2, t).values())
        sess = session_s(c, "classifier0")
        lease = ownership(c, "classifier0") == "lease"
        kept_on_join = KEPT_ON_JOIN_S
        if lease or (not REAL and OWNERSHIP != "group"):
            # --ownership=lease (roles/ownership.h, the embedded broker's
            # default): no coordinator, the goals on every count,
            # the survivor's rooms on a join included (no rebalance pauses)
            kill, seq, moved = KILL_S, SEQUENCING_S, STALL_S
            moved_by_join = kept_on_join = STALL_S
        elif REAL:
            # A join moves partitions in two cooperative rounds; the new
            # member rejoins for the second at once (kafka.c,
            # kafka_consumer_nudge_join), not after librdkafka's one
            # JoinGroup a second, and stores as soon as its live-gateway
            # cache has answered once (routes.c): 1.0-1.15 s before both.
            # The survivor's kept partitions are paused at each rebalance
            # event and resumed when it is answered; the resume did not wake
            # an idle fetcher for up to 1 s (kafka.c,
            # kafka_consumer_wake_kept): 1.0-1.1 s in 4 of 15 joins before
            kill, seq, moved = KILL_S, SEQUENCING_S, STALL_S
            moved_by_join = kept_on_join = STALL_S
        else:
            # the mock: expiry at the first 1 s check past the session, then
            # a JoinGroup held session - 1 s (+ 1 s for the work around it);
            # a leave is one such hold, a join two, and a member that misses
            # a hold's window on a loaded machine adds one (10.1 s seen)
            hold = sess - 1
            kill, seq, moved, moved_by_join = 2 * sess + 1, 4 * hold + 2, hold + 1, 3 * hold + 1
        figures.append(f"broker={'kafka' if REAL else 'embedded'} kafka_opts="
                       f"{KAFKA_OPTS or 'as shipped'} ownership={'lease' if lease else 'group'} "
                       f"session={sess:.1f}s "
                       f"noise (worst gap, 2 s of steady traffic)={noise:.2f}s")

        # 1. SIGKILL
        survivor = owner_of(c, "classifier0")
        own = owners(c)
        kept = [r for r in rooms if own.get(part[r]) == survivor]
        f = run.fault("classifier1 SIGKILL")
        await asyncio.to_thread(c.kill, "classifier1")
        run.restored(f)
        window = max(WINDOW_S, kill + noise + 2)     # a longer stall is seen whole
        await asyncio.sleep(window)
        gaps = room_gaps(readers, rooms, f[1], f[1] + window)
        record("SIGKILL, the dead one's rooms", gaps, [r for r in rooms if r not in kept],
               kill + noise)
        record("SIGKILL, the survivor's rooms", gaps, kept, STALL_S + noise)

        # 2. started again (the pod's replacement, a scale-out)
        await flowing(readers, rooms, "before the start")
        f = run.fault("classifier1 started")
        p = await asyncio.to_thread(c.restart, "classifier1", False)
        new = owner_of(c, "classifier1")
        try:
            await harness.wait_for(lambda: new in owners(c).values(), 30,
                                   "the new classifier took a partition")
            seq_after = harness.now() - f[1]
        except AssertionError:
            seq_after = float("inf")
        figures.append(f"start: the new one sequencing after {seq_after:.2f}s (limit {seq:.2f}s)")
        if seq_after > seq:
            failures.append(f"start: the new classifier stored after {seq_after:.2f}s, "
                            f"over {seq:.2f}s")
        await asyncio.to_thread(harness.wait_ready, p, c.ports["classifier1"],
                                harness.READY_TIMEOUT)
        run.restored(f)
        await asyncio.sleep(max(0.0, WINDOW_S - (f[2] - f[1])))
        gaps = room_gaps(readers, rooms, f[1], f[2] + WINDOW_S)
        own = owners(c)
        kept = [r for r in rooms if own.get(part[r]) == survivor]
        record("start, the moved rooms", gaps, [r for r in rooms if r not in kept],
               moved_by_join + noise)
        # Each rebalance event pauses the member's whole assignment until
        # the classifier answers it, and a join brings the survivor three;
        # on the mock (--ownership=group, embedded) its kept rooms were seen
        # at 0.66 s, over the 0.5 s (docs/RELIABILITY.md, fault 13)
        record("start, the survivor's rooms", gaps, kept, kept_on_join + noise)

        # 3. SIGTERM
        await flowing(readers, rooms, "before the SIGTERM")
        own = owners(c)
        kept = [r for r in rooms if own.get(part[r]) == survivor]
        f = run.fault("classifier1 SIGTERM")
        p = c.terminate("classifier1")
        await asyncio.to_thread(p.wait_exit, c.drain + 15)
        run.restored(f)
        assert p.p.returncode == 0, f"classifier1 exit code {p.p.returncode} after SIGTERM"
        await asyncio.sleep(max(0.0, WINDOW_S - (f[2] - f[1])))
        gaps = room_gaps(readers, rooms, f[1], f[1] + WINDOW_S)
        figures.append(f"SIGTERM: exit after {f[2] - f[1]:.2f}s")
        record("SIGTERM, the moved rooms", gaps, [r for r in rooms if r not in kept],
               moved + noise)
        record("SIGTERM, the survivor's rooms", gaps, kept, STALL_S + noise)

        await st.finish(run, tr)
    harness.run_bounded(body(), 180)


GW_DELIVERING_S = 5.0   # goal: a started gateway delivers live


def test_gateway_restart_does_not_pause_others(make_cluster):
    """Issue 18's gateway goal: a gateway's consumer owns its chat-receive
    partition by assignment, not through a group, so a gateway that dies,
    starts or stops must not pause the other gateway's deliveries. Rooms
    sent to and read on gateway 1 only; gateway 0 carries readers of the
    same rooms (they reconnect when it goes). Gateway 1's readers' longest
    gap is measured around gateway 0's SIGKILL, its start (which must
    deliver live within 5 s) and its SIGTERM; on both brokers the limit is
    0.5 s plus the noise floor of 2 s of steady traffic."""
    c = make_cluster(kafka_opts=KAFKA_OPTS)
    st = Stalls()
    figures, failures = st.figures, st.failures

    def record(label, gaps, limit):
        st.record(label, gaps, list(gaps), limit)

    async def body():
        run = harness.Run(c, "f13 gateway restart")
        rooms = harness.rooms_spanning(harness.SEND_PARTITIONS)
        senders = [run.client(rooms=[r]) for r in rooms]
        stay = [run.client(rooms=rooms) for _ in range(2)]
        moving = [run.client(rooms=rooms) for _ in range(2)]
        await asyncio.gather(*(s.start(gw=1) for s in senders))
        await asyncio.gather(*(rd.start(gw=1) for rd in stay))
        await asyncio.gather(*(rd.start(gw=0) for rd in moving))
        for s in senders + moving:
            s.track_stalls = False
        tr = harness.Traffic(senders, interval=0.05).start()
        await run.warm_up()
        await flowing(stay, rooms, "before the kill")
        await asyncio.sleep(2)
        t = harness.now()
        noise = max(room_gaps(stay, rooms, t - 2, t).values())
        limit = STALL_S + noise
        figures.append(f"broker={'kafka' if REAL else 'embedded'} "
                       f"noise (worst gap, 2 s of steady traffic)={noise:.2f}s")

        f = run.fault("gateway0 SIGKILL")
        await asyncio.to_thread(c.kill, "gateway0")
        run.restored(f)
        await asyncio.sleep(WINDOW_S)
        record("gateway SIGKILL, the other gateway's readers",
               room_gaps(stay, rooms, f[1], f[1] + WINDOW_S), limit)

        await flowing(stay, rooms, "before the start")
        f = run.fault("gateway0 started")
        p = await asyncio.to_thread(c.restart, "gateway0", False)
        await asyncio.to_thread(harness.wait_ready, p, c.ports["gateway0"], harness.READY_TIMEOUT)
        probe = run.client(rooms=rooms, reconnect=False)
        probe.track_stalls = False
        await probe.start(gw=0)
        live0 = sum(probe.live.values())
        try:
            await harness.wait_for(lambda: sum(probe.live.values()) > live0, 30,
                                   "the started gateway delivers live")
            delivering = harness.now() - f[1]
        except AssertionError:
            delivering = float("inf")
        run.restored(f)
        figures.append(f"start: delivering live after {delivering:.2f}s "
                       f"(limit {GW_DELIVERING_S:.2f}s)")
        if delivering > GW_DELIVERING_S:
            failures.append(f"start: the started gateway delivered live after {delivering:.2f}s")
        await asyncio.sleep(max(0.0, WINDOW_S - (f[2] - f[1])))
        record("gateway start, the other gateway's readers",
               room_gaps(stay, rooms, f[1], f[1] + WINDOW_S), limit)

        await flowing(stay, rooms, "before the SIGTERM")
        await probe.close()
        run.clients.remove(probe)   # it sent nothing and is gone: not checked
        f = run.fault("gateway0 SIGTERM")
        p = c.terminate("gateway0")
        await asyncio.to_thread(p.wait_exit, c.drain + 15)
        run.restored(f)
        assert p.p.returncode == 0, f"gateway0 exit code {p.p.returncode} after SIGTERM"
        await asyncio.sleep(max(0.0, WINDOW_S - (f[2] - f[1])))
        record("gateway SIGTERM, the other gateway's readers",
               room_gaps(stay, rooms, f[1], f[1] + WINDOW_S), limit)

        await st.finish(run, tr)
    harness.run_bounded(body(), 180)


JOINS = int(os.environ.get("F13_JOINS", "0"))


@pytest.mark.skipif(not JOINS, reason="opt-in: F13_JOINS=N (N joins, ~9 s each)")
def test_classifier_joins_keep_rooms_flowing(make_cluster):
    """A join, N times (F13_JOINS) in one cluster: classifier1 stopped
    (SIGTERM), then started, while classifier0 keeps its rooms. Each join's
    worst gap of the kept rooms and of the moved ones must stay under 0.5 s
    plus the noise floor of the 2 s before it. One join a run (the main
    test) caught a ~1 s stall of the kept rooms on Kafka in 1 of 6 runs; this
    repeats it (docs/RELIABILITY.md, fault 13: 4 of 15 joins before the
    fix). Not in `make test` (CI time): run it where a join's figures are in
    question, on Kafka with CHATD_TEST_KAFKA=real."""
    c = make_cluster(kafka_opts=KAFKA_OPTS, cl_args=CL_ARGS)
    st = Stalls()

    async def body():
        run = harness.Run(c, "f13 joins")
        rooms, part, readers, tr = await start_rooms(run)
        survivor = owner_of(c, "classifier0")
        for i in range(JOINS):
            await flowing(readers, rooms, "before the SIGTERM")
            p = c.terminate("classifier1")
            await asyncio.to_thread(p.wait_exit, c.drain + 15)
            await asyncio.sleep(2)
            await flowing(readers, rooms, "before the start")
            t = harness.now()
            noise = max(room_gaps(readers, rooms, t - 2, t).values())
            f = run.fault(f"classifier1 started ({i + 1})")
            p = await asyncio.to_thread(c.restart, "classifier1", False)
            new = owner_of(c, "classifier1")
            await harness.wait_for(lambda: new in owners(c).values(), 30,
                                   "the new classifier took a partition")
            await asyncio.to_thread(harness.wait_ready, p, c.ports["classifier1"],
                                    harness.READY_TIMEOUT)
            run.restored(f)
            await asyncio.sleep(max(0.0, 4.0 - (f[2] - f[1])))
            gaps = room_gaps(readers, rooms, f[1], f[1] + 4.0)
            own = owners(c)
            kept = [r for r in rooms if own.get(part[r]) == survivor]
            st.record(f"join {i + 1}, the survivor's rooms", gaps, kept, STALL_S + noise)
            st.record(f"join {i + 1}, the moved rooms", gaps, [r for r in rooms if r not in kept],
                      STALL_S + noise)
        await st.finish(run, tr)
    harness.run_bounded(body(), 120 + JOINS * 30)
