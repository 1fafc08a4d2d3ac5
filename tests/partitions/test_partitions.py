"""Network partitions under traffic (issue 21), each checked by the fault
suite's checker (tests/faults/checker.py, strict about `unavailable`).
Hosts and faults: netns.py; services on them: hosts.py."""
import asyncio

import pytest

import hosts
from common import finish, flowing, probe_sends, start_traffic
from harness import now, run_bounded, unavailable, wait_for

KAFKA = list(hosts.KAFKA_HOSTS)
# docs/PROTOCOL.md: a send Kafka does not acknowledge is answered within the
# producer's message.timeout.ms (10 s); margin for a loaded 2-core machine.
SEND_TIMEOUT = 10.0
MARGIN = 5.0


def test_p1_gateway_cut_from_kafka(net, make_cluster):
    """Gateway 0 loses every Kafka node; its clients stay connected. Its
    sends are answered `unavailable` within the producer timeout, none is
    acked while it is cut; after healing it acks again, same process."""
    c = make_cluster()
    pid = c.procs["gateway0"].pid

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p1_gateway_cut_from_kafka")
        probe = next(x for x in clients if x.port == c.ports["gateway0"] and
                     x not in traffic.senders)
        f = run.fault("gateway0 cut from kafka")
        for k in KAFKA:
            net.topo.cut("gw0", k)
        t_cut = now()
        stop, during = asyncio.Event(), []
        task = asyncio.ensure_future(probe_sends(probe, rooms[0], stop, during, gap=0.5))
        # held until the first probe send (sent at the cut) is answered: the
        # producer's whole message.timeout.ms in the cut (the probe's request
        # itself times out at 40 s; a reply that late fails below)
        await wait_for(lambda: during or task.done(), 45, "the probe's first reply", step=0.1)
        stop.set()
        await task
        net.topo.heal()
        t_heal = now()
        run.restored(f)
        # served again: a probe acked after the heal, without a restart
        after = []
        stop2 = asyncio.Event()
        task = asyncio.ensure_future(probe_sends(probe, rooms[0], stop2, after, gap=0.3))
        deadline = now() + 60
        while now() < deadline and not any(o == "ack" for _, _, o in after):
            await asyncio.sleep(0.2)
        stop2.set()
        await task
        t_served = next((t + d for t, d, o in after if o == "ack"), None)
        # the probe resends what it was not acked, with its cid (PROTOCOL)
        for rec in [s for s in probe.sends if not s.acked]:
            await probe.send_msg(rec.room, rec.text, rec=rec)
        gw0_acks_cut = sum(1 for x in clients if x.port == c.ports["gateway0"]
                           for s in x.sends if s.t_ack and t_cut + 1 < s.t_ack < t_heal)
        res = await finish(run, traffic, extra_line=(
            f"probe during the cut: {len(during)} sends, slowest reply "
            f"{max(d for _, d, _ in during):.1f}s; gw0 acks while cut {gw0_acks_cut}; "
            f"first ack {t_served - t_heal if t_served else -1:.1f}s after the heal"))
        return res, during, t_served, gw0_acks_cut

    res, during, t_served, gw0_acks_cut = run_bounded(body(), 240)
    res.assert_ok()
    assert during, "no probe send during the cut"
    slow = [(round(d, 1), o) for _, d, o in during if d > SEND_TIMEOUT + MARGIN]
    assert not slow, f"replies slower than {SEND_TIMEOUT + MARGIN}s: {slow}"
    assert any(o.startswith("unavailable") for _, _, o in during), during
    assert gw0_acks_cut == 0, f"{gw0_acks_cut} sends acked by gateway0 while cut from Kafka"
    assert t_served is not None, "gateway0 did not ack within 60 s of the heal"
    assert c.procs["gateway0"].pid == pid and c.procs["gateway0"].alive()


def test_p2_zombie_classifier(net, make_cluster):
    """Classifier 0 loses Kafka but keeps Redis and PostgreSQL: its
    partitions move to classifier 1; whatever it had fetched must not give
    a message a second seq or leave a gap (the partition epoch fences its
    store, ARCHITECTURE **Fencing**)."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p2_zombie_classifier")
        f = run.fault("classifier0 cut from kafka")
        for k in KAFKA:
            net.topo.cut("cl0", k)
        await asyncio.sleep(15)
        net.topo.heal()
        run.restored(f)
        await asyncio.sleep(8)
        fenced = c.log_count("classifier0", "classifier_fenced") + \
            c.log_count("classifier0", "assignment_lost")
        return await finish(run, traffic, extra_line=f"zombie fenced/lost lines {fenced}")

    res = run_bounded(body(), 240)
    res.assert_ok()



def test_p2b_zombie_hears_nothing_from_kafka(net, make_cluster):
    """One direction only: classifier 0's requests reach Kafka (heartbeats,
    joins, commits, produces to chat-receive), Kafka's answers never reach
    it. The coordinator still hears it, so its session may not simply
    expire; the checker still wants one seq per message and no gap. The
    healthy classifier 1 should keep its partitions (an xfail if not)."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p2b_zombie_deaf")
        f = run.fault("kafka -> classifier0 dropped")
        for k in KAFKA:
            net.topo.cut(k, "cl0", oneway=True)
        await asyncio.sleep(20)
        net.topo.heal()
        run.restored(f)
        await asyncio.sleep(8)
        fenced = c.log_count("classifier0", "classifier_fenced") + \
            c.log_count("classifier0", "assignment_lost")
        # the healthy classifier losing its own partitions (session timed
        # out waiting on a rebalance the deaf one cannot finish)
        lost1 = c.log_count("classifier1", "kafka_revoked", "lost=1")
        res = await finish(run, traffic, extra_line=f"zombie fenced/lost lines {fenced}; "
                           f"classifier1 lost its assignment {lost1} times")
        return res, lost1

    res, lost1 = run_bounded(body(), 240)
    res.assert_ok()
    # Availability, not safety (checked above): the healthy classifier 1
    # should keep its partitions and take classifier 0's. A known,
    # intermittent failure (P2B_HEALTHY): reported as an xfail, as the
    # separate test_p2b_healthy_classifier_keeps_its_partitions (the same
    # fault, held as long) did as a non-strict xfail before it was folded
    # in here to save its 30 s in CI.
    if lost1:
        pytest.xfail(f"classifier 1 lost its assignment {lost1} times while classifier 0 "
                     f"was deaf: {P2B_HEALTHY}")


P2B_HEALTHY = ("found by P2b: the healthy classifier 1 lost its session while classifier 0 was "
               "deaf (3 of 5 runs on a machine shared with other Kafka tests; 0 of 15 at load "
               "2-5, the deaf one holding no rebalance). Kafka 4's coordinator answers a "
               "heartbeat only once the offset commits pending on the group's __consumer_offsets"
               " partition are replicated; a replication stall longer than the session expires "
               "every committing member (test_p2b_offsets_replication_stall_keeps_sessions shows"
               " it deterministically); what stalled replication in P2b is not established (load"
               " is the candidate). Intermittent, hence not strict. Since issue 21's fix the "
               "classifiers commit to Kafka once a minute (offsets in PostgreSQL), so only a "
               "stall that one of those commits meets can still cost a session")


# The mechanism behind P2b's false failover (docs/RELIABILITY.md, P2b):
# Kafka 4's group coordinator answers a classic Heartbeat only once every
# write pending on the group's __consumer_offsets partition is replicated,
# and the classifiers' offset commits (every 200 ms before migration 009)
# are such writes. So while that partition cannot replicate (its followers
# cut from the coordinator here; a starved machine in P2b) no heartbeat was
# answered, and librdkafka gave the session up after session.timeout.ms.
# The classifiers now keep their offsets in PostgreSQL and commit to Kafka
# once a minute (kafka.c KAFKA_COMMIT_INTERVAL_MS): the shipped settings.
STALL_S = 6.0


def test_p2b_offsets_replication_stall_keeps_sessions(net, make_cluster):
    """The group coordinator's followers cannot reach it for STALL_S (its
    offset writes cannot commit); both classifiers keep their sessions."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p2b_offsets_stall")
        coord = net.kafka.coordinator(f"{c.kafka_prefix}-classifier")
        assert coord is not None, "no coordinator for the classifier group"
        f = run.fault(f"followers -> coordinator {KAFKA[coord]} dropped")
        for k in KAFKA:
            if k != KAFKA[coord]:
                net.topo.cut(k, KAFKA[coord], oneway=True)
        await asyncio.sleep(STALL_S)
        net.topo.heal()
        run.restored(f)
        await asyncio.sleep(5)
        lost = [c.log_count(n, "kafka_revoked", "lost=1") for n in ("classifier0", "classifier1")]
        res = await finish(run, traffic, extra_line=f"coordinator {KAFKA[coord]}; "
                           f"assignments lost {lost[0]} + {lost[1]}")
        return res, lost

    res, lost = run_bounded(body(), 240)
    if res.problems:   # a safety failure is not the xfail's reason
        raise RuntimeError(f"{res.line}\n" + "\n".join(res.problems))
    assert lost == [0, 0], f"classifiers lost their assignments {lost} in a {STALL_S}s stall"


def test_p2c_zombie_with_a_backlog(net, make_cluster):
    """Classifier 0 is cut from Kafka right after a burst (4 senders x 150
    pipelined sends) reached it: it still holds fetched, unsequenced records
    when its partitions move to classifier 1, which reads them again from
    the last commit. Both may sequence the same records; one seq each."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p2c_zombie_backlog")
        await traffic.pause()
        burst = [asyncio.ensure_future(s.send_pipelined(r, [f"{s.user} burst {i}"
                                                              for i in range(150)]))
                 for s, r in zip(traffic.senders, rooms)]
        await asyncio.sleep(0.4)
        f = run.fault("classifier0 cut from kafka after a burst")
        for k in KAFKA:
            net.topo.cut("cl0", k)
        traffic.resume()
        await asyncio.sleep(15)
        net.topo.heal()
        run.restored(f)
        await asyncio.gather(*burst)
        await asyncio.sleep(6)
        fenced = c.log_count("classifier0", "classifier_fenced") + \
            c.log_count("classifier0", "assignment_lost")
        return await finish(run, traffic, extra_line=f"zombie fenced/lost lines {fenced}")

    res = run_bounded(body(), 300)
    res.assert_ok()

def test_p1b_kafka_replies_to_gateway_lost(net, make_cluster):
    """One direction only: gateway 0's produce requests reach Kafka, Kafka's
    answers never come back. Kafka stores what the gateway is told it may
    not have: every such send is answered `unavailable` ("stored":"maybe"),
    resent with its cid after the heal, acked once, stored once."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p1b_kafka_replies_lost")
        f = run.fault("kafka -> gateway0 dropped")
        for k in KAFKA:
            net.topo.cut(k, "gw0", oneway=True)
        t_cut = now()
        gw0 = [s for s in traffic.senders if s.port == c.ports["gateway0"]]

        def answered_unavailable():
            return sum(1 for s in gw0 if any(unavailable(o) for r in s.sends
                                             if r.t_first >= t_cut for o in r.outcomes))

        # held until each of gateway 0's senders had a send answered
        # `unavailable` (message.timeout.ms after the cut), at most as long
        # as the fixed hold this replaced
        try:
            await wait_for(lambda: answered_unavailable() >= len(gw0),
                           SEND_TIMEOUT + MARGIN + 3, "gateway 0's senders answered unavailable",
                           step=0.1)
        except AssertionError:
            pass        # fewer: the assertion on sends_unavailable below decides
        await asyncio.sleep(1)
        net.topo.heal()
        t_heal = now()
        run.restored(f)
        await flowing(run, t_heal, "traffic after the heal")
        return await finish(run, traffic)

    res = run_bounded(body(), 240)
    res.assert_ok()
    assert res.c["sends_unavailable"] > 0, "no send was answered unavailable: no fault seen"


def test_p3_classifier_cut_from_pg_then_redis(net, make_cluster):
    """Classifier 0 loses PostgreSQL for 10 s (Kafka and Redis kept), then,
    healed, Redis for 10 s: its batches wait and retry; nothing acked is
    lost, no seq given twice, none skipped."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p3_classifier_pg_redis")
        for what in ("pg", "redis"):
            f = run.fault(f"classifier0 cut from {what}")
            net.topo.cut("cl0", what)
            await asyncio.sleep(10)
            net.topo.heal()
            t_heal = now()
            run.restored(f)
            await flowing(run, t_heal, f"traffic after classifier0's {what} link healed")
        return await finish(run, traffic)

    res = run_bounded(body(), 240)
    res.assert_ok()


@pytest.mark.parametrize("what,mode", [("redis", "drop"), ("pg", "drop"), ("redis", "reject")])
def test_p4_store_isolated(net, make_cluster, what, mode):
    """Redis (or PostgreSQL) isolated from every host for 10 s: packets
    dropped (a silent peer) or refused (reset). chatd waits and retries;
    after the heal every acked message is stored once, seqs dense, every
    client converges."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, f"p4_{what}_isolated_{mode}")
        f = run.fault(f"{what} isolated ({mode})")
        net.topo.isolate(what, mode=mode)
        await asyncio.sleep(10)
        net.topo.heal()
        t_heal = now()
        run.restored(f)
        await flowing(run, t_heal, f"traffic after {what} was healed")
        return await finish(run, traffic)

    res = run_bounded(body(), 300)
    res.assert_ok()


# Every room progresses again this soon after the majority elected a new
# leader, the old one still isolated: chatd's clients give up a request to a
# silent broker after socket.timeout.ms (kafka.c KAFKA_SOCKET_TIMEOUT_MS, 10
# s; librdkafka's 60 s default stalled rooms until the heal or a minute).
P5_RECOVER_S = 15.0


def test_p5_kafka_leader_in_minority(net, make_cluster):
    """The node leading the busiest chat-send partition is isolated from
    every other host (Kafka nodes, chatd, clients) for 20 s, or longer: until
    P5_RECOVER_S after the election. The majority elects a new leader; the
    old one cannot grow its ISR back nor ack (acks=all, min.insync.replicas=2):
    no acked message lost; every room progresses again without the old
    leader's return."""
    import kafka3
    c = make_cluster()
    k = net.kafka

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p5_kafka_leader_minority")
        meta = kafka3.metadata(k, c.topic_send)
        part = harness_partition(rooms[0])
        leader = meta[part][0]
        host = KAFKA[leader - 1]
        f = run.fault(f"kafka node {leader} ({host}) isolated")
        t = now()
        net.topo.isolate(host)
        moved, waited = await asyncio.to_thread(
            kafka3.wait_meta, k, c.topic_send, lambda m: m[part][0] not in (leader, -1), 60,
            "a new leader elected by the majority")
        await asyncio.sleep(max(0, max(20, waited + P5_RECOVER_S + 1) - (now() - t)))
        net.topo.heal()
        run.restored(f)
        await asyncio.to_thread(k.wait_ready, 120)
        await asyncio.sleep(5)
        res = await finish(run, traffic, extra_line=(
            f"partition {part}: leader {leader} -> {moved[part][0]} after {waited:.1f}s, "
            f"healed after {f[2] - f[1]:.1f}s"))
        return res, waited, run.stall_report(f, limit=1 << 20)

    res, waited, stalls = run_bounded(body(), 300)
    res.assert_ok()
    # a room stalled since before the election waits at most P5_RECOVER_S
    # past it; one that stalls later, at most P5_RECOVER_S
    late = [s for s in stalls if s[0] - max(s[1], waited) > P5_RECOVER_S]
    print(f"P5: new leader {waited:.1f}s after the cut; every room progressed again "
          f"{max([s[0] for s in stalls if s[1] <= waited] or [0]):.1f}s after the cut; longest "
          f"wait past the election {max([s[0] - max(s[1], waited) for s in stalls] or [0]):.1f}s")
    assert not late, (
        f"rooms waited longer than {P5_RECOVER_S:.0f}s past the new leader's election "
        f"({waited:.1f}s after the cut; recovery {res.recovery:.1f}s): (resumed s, stalled "
        f"since s, user, room, port) {late[:5]}")


def harness_partition(room):
    import zlib
    import harness
    return zlib.crc32(room.encode()) % harness.SEND_PARTITIONS


LOSS_S = float(__import__("os").environ.get("CHATD_PARTITION_LOSS_S", "30"))


def test_p6_flaky_network(net, make_cluster):
    """7 % of the packets every host receives are dropped, for LOSS_S
    seconds (the issue asks for a minute; CHATD_PARTITION_LOSS_S=60). Delay
    and jitter are not injected: this kernel has no netem (netns.delay)."""
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, "p6_flaky_network")
        f = run.fault("7% loss everywhere")
        net.topo.loss(0.07)
        await asyncio.sleep(LOSS_S)
        net.topo.heal()
        t_heal = now()
        run.restored(f)
        await flowing(run, t_heal, "traffic after the loss was lifted")
        return await finish(run, traffic, extra_line=f"loss held {LOSS_S:.0f}s, no jitter (no netem)")

    res = run_bounded(body(), 300 + LOSS_S)
    res.assert_ok()


SOAK_S = float(__import__("os").environ.get("CHATD_PARTITION_SOAK_S") or 0)


def _schedule(topo, rng):
    """One random fault of faults 1-6 (or a one-way variant): (label, apply)."""
    gw, cl, kn = rng.choice(["gw0", "gw1"]), rng.choice(["cl0", "cl1"]), rng.choice(KAFKA)
    mode = rng.choice(["drop", "reject"])
    choices = [
        (f"{gw} cut from kafka ({mode})", lambda: [topo.cut(gw, k, mode) for k in KAFKA]),
        (f"kafka -> {gw} dropped", lambda: [topo.cut(k, gw, oneway=True) for k in KAFKA]),
        (f"{cl} cut from kafka ({mode})", lambda: [topo.cut(cl, k, mode) for k in KAFKA]),
        (f"kafka -> {cl} dropped", lambda: [topo.cut(k, cl, oneway=True) for k in KAFKA]),
        (f"{cl} cut from pg ({mode})", lambda: topo.cut(cl, "pg", mode)),
        (f"{cl} cut from redis ({mode})", lambda: topo.cut(cl, "redis", mode)),
        (f"redis isolated ({mode})", lambda: topo.isolate("redis", mode)),
        (f"pg isolated ({mode})", lambda: topo.isolate("pg", mode)),
        (f"kafka {kn} isolated", lambda: topo.isolate(kn)),
        ("loss 5-10%", lambda: topo.loss(rng.uniform(0.05, 0.10))),
    ]
    return rng.choice(choices)


@pytest.mark.skipif(not SOAK_S, reason="soak: make soak PARTITIONS=1 (CHATD_PARTITION_SOAK_S)")
def test_p7_random_schedule(net, make_cluster):
    """Faults 1-6 at random (seeded: CHATD_PARTITION_SEED), each held 3-15 s
    then healed, 2-6 s apart, for CHATD_PARTITION_SOAK_S seconds (`make soak
    PARTITIONS=1 DURATION=600`: the issue's 10 minutes); one check at the end."""
    import os
    import random
    seed = int(os.environ.get("CHATD_PARTITION_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    c = make_cluster()

    async def body():
        run, rooms, clients, traffic = await start_traffic(c, f"p7_random_seed{seed}")
        end = now() + SOAK_S
        labels = []
        while now() < end:
            label, apply = _schedule(net.topo, rng)
            f = run.fault(label)
            apply()
            labels.append(label)
            await asyncio.sleep(rng.uniform(3, 15))
            net.topo.heal()
            run.restored(f)
            await asyncio.sleep(rng.uniform(2, 6))
        await asyncio.to_thread(net.kafka.wait_ready, 120)
        await asyncio.sleep(5)
        return await finish(run, traffic, extra_line=f"seed {seed}: {len(labels)} faults")

    res = run_bounded(body(), SOAK_S + 400)
    res.assert_ok()
