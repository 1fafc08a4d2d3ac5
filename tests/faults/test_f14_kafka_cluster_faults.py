"""Fault 14 (real Kafka, three nodes: CHATD_TEST_KAFKA_NODES=3): Kafka's own
faults under traffic, each checked by the shared checker (every acked
message stored once, seqs dense, order kept, clients converge).

  a. the leader of a busy chat-send partition SIGKILLed (leader from the
     brokers' metadata), back after DOWN_S;
  b. one broker down 30 s and back: the ISR shrinks and grows again, seen
     in Kafka's own TopicCommand describe;
  c. two of three down: min.insync.replicas=2 cannot be met, so no send may
     be acked (they are answered `unavailable`); after they return, sends
     are acked again and nothing acked is lost;
  d. the whole cluster SIGKILLed and restarted: the classifiers' committed
     offsets hold (no reset to the start of the log: no replay beyond what
     dedup by id/seq absorbs);
  e. the active KRaft controller (MetadataQuorumCommand) SIGKILLed.

The session's three-node cluster (conftest fault_kafka) is shared by the
tests; each chatd cluster has topics and a group of its own. Not in `make
test`: see the Makefile's faults-kafka3 target.
"""
import asyncio
import os
import signal
import time
import zlib

import pytest

import checker
import harness
import kafka3

pytestmark = pytest.mark.skipif(not harness.kafkamode.REAL or harness.kafkamode.NODES < 3,
                                reason="real Kafka with three nodes only "
                                       "(CHATD_TEST_KAFKA=real CHATD_TEST_KAFKA_NODES=3)")

BODY_TIMEOUT = 420


@pytest.fixture
def kcluster(make_cluster, fault_kafka):
    """A chatd cluster on a whole Kafka (every node running, internal
    topics fully replicated)."""
    k = fault_kafka
    if k is not None:
        kafka3.heal(k)
        kafka3.wait_meta(k, "__consumer_offsets",
                         lambda m: all(len(isr) == k.nodes for _, _, isr in m.values()),
                         120, "__consumer_offsets fully in sync", empty_ok=True)
    return make_cluster()


def partition_of(room):
    return zlib.crc32(room.encode()) % harness.SEND_PARTITIONS


def acks_in(run, t0, t1, rooms=None):
    return sum(1 for c in run.clients for s in c.sends
               if s.acked and t0 < s.t_ack < t1 and (rooms is None or s.room in rooms))


def first_ack_after(run, t0, rooms=None):
    ts = [s.t_ack for c in run.clients for s in c.sends
          if s.acked and s.t_ack > t0 and (rooms is None or s.room in rooms)]
    return min(ts) - t0 if ts else None


def unavailable_total(run):
    return sum(c.unavailable for c in run.clients)


async def wait_acks_after(run, t0, timeout, what):
    await harness.wait_for(lambda: acks_in(run, t0, float("inf")) > 0, timeout, what, step=0.2)
    return first_ack_after(run, t0)


def in_sync(k, *topics):
    """Every partition of the topics has all nodes in its ISR."""
    def ok():
        return all(len(isr) == k.nodes for t in topics
                   for _, _, isr in kafka3.metadata(k, t).values())
    return ok


async def start_traffic(c, name):
    run = harness.Run(c, name)
    rooms, clients, senders = await harness.standard_clients(run)
    tr = harness.Traffic(senders).start()
    await run.warm_up()
    return run, rooms, tr


async def finish(run, tr, extra):
    await asyncio.sleep(2)
    await tr.stop()
    await run.converge()
    res = checker.check(run, extra_line=extra)
    await run.close()
    res.assert_ok()
    return res


def test_kafka_partition_leader_sigkill(kcluster):
    c = kcluster
    k = c.kafka
    DOWN_S = 15

    async def body():
        run, rooms, tr = await start_traffic(c, "f14a kafka partition leader SIGKILL")
        part = partition_of(rooms[0])
        busy = {r for r in rooms if partition_of(r) == part}
        meta = await asyncio.to_thread(kafka3.metadata, k, c.topic_send)
        leader = meta[part][0]
        assert acks_in(run, 0, time.monotonic(), busy) > 0, "the partition was not busy"
        f = run.fault(f"kafka node{leader} (leader of {c.topic_send}[{part}]) SIGKILL")
        await asyncio.to_thread(k.kill, kafka3.node_index(leader))
        meta2, elect_s = await asyncio.to_thread(
            kafka3.wait_meta, k, c.topic_send,
            lambda m: m[part][0] not in (leader, -1), 60, f"new leader of [{part}]")
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - f[1])))
        acked_busy = acks_in(run, f[1], time.monotonic(), busy)
        first_busy = first_ack_after(run, f[1], busy)
        acked_down = harness.acked_after(run, f[1])
        await asyncio.to_thread(k.start, kafka3.node_index(leader))
        run.restored(f)
        _, isr_s = await asyncio.to_thread(kafka3.wait_meta, k, c.topic_send,
                                           lambda m: in_sync(k, c.topic_send)(), 120,
                                           "ISR back to 3")
        await finish(run, tr, f"partition={part} leader={leader} new_leader={meta2[part][0]} "
                              f"elected_after={elect_s:.1f}s first_ack_busy_after="
                              f"{first_busy if first_busy is None else round(first_busy, 1)}s "
                              f"acked_busy_down={acked_busy} acked_down={acked_down} "
                              f"isr_full_after_restart={isr_s:.1f}s")
        assert acked_busy > 0, f"no send to partition {part} acked in {DOWN_S}s after its " \
                               "leader was killed"
    harness.run_bounded(body(), BODY_TIMEOUT)


def test_kafka_broker_down_30s(kcluster):
    c = kcluster
    k = c.kafka
    DOWN_S = 30
    node = 2      # node id 3
    nid = node + 1

    async def body():
        run, rooms, tr = await start_traffic(c, "f14b kafka broker down 30 s")
        topics = (c.topic_send, c.topic_receive)
        f = run.fault(f"kafka node{nid} SIGKILL for {DOWN_S}s")
        await asyncio.to_thread(k.kill, node)
        _, shrink_s = await asyncio.to_thread(
            kafka3.wait_meta, k, c.topic_send,
            lambda m: all(nid not in isr for _, _, isr in m.values())
            and all(nid not in isr for _, _, isr in kafka3.metadata(k, c.topic_receive).values()),
            60, f"node {nid} out of every ISR")
        # Kafka's own view, not only the metadata chatd's client reads
        shrunk = {t: await asyncio.to_thread(kafka3.describe, k, t) for t in topics}
        for t, parts in shrunk.items():
            for p, (leader, isr) in parts.items():
                assert nid not in isr and len(isr) == 2 and leader != nid, \
                    f"{t}[{p}] while node {nid} is down: leader {leader} isr {isr}"
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - f[1])))
        acked_down = harness.acked_after(run, f[1])
        first = first_ack_after(run, f[1])
        t_back = time.monotonic()
        await asyncio.to_thread(k.start, node)
        run.restored(f)
        _, grow_s = await asyncio.to_thread(kafka3.wait_meta, k, c.topic_send,
                                            lambda m: in_sync(k, *topics)(), 120,
                                            f"node {nid} back in every ISR")
        grow_s = time.monotonic() - t_back
        grown = {t: await asyncio.to_thread(kafka3.describe, k, t) for t in topics}
        for t, parts in grown.items():
            for p, (leader, isr) in parts.items():
                assert sorted(isr) == [1, 2, 3], f"{t}[{p}] after node {nid} is back: isr {isr}"
        await finish(run, tr, f"isr_shrunk_after={shrink_s:.1f}s isr_grown_after_restart="
                              f"{grow_s:.1f}s acked_down={acked_down} first_ack_after_kill="
                              f"{first if first is None else round(first, 2)}s")
        assert acked_down > 0, "no send acked while one of three brokers was down"
    harness.run_bounded(body(), BODY_TIMEOUT)


def test_kafka_two_of_three_down(kcluster):
    c = kcluster
    k = c.kafka
    DOWN_S = 20
    GRACE_S = 3.0  # acks of records replicated before the kill may still be on their way
    nodes = (1, 2)  # ids 2 and 3: node id 1 keeps running alone

    async def probe_sends(probe, room, t_end):
        """One send at a time, no resend, until t_end: each is answered."""
        n = 0
        while time.monotonic() < t_end:
            n += 1
            await probe.send_msg(room, f"probe #{n}", resend=False, deadline_s=30)
        return n

    async def body():
        run, rooms, tr = await start_traffic(c, "f14c kafka two of three brokers down")
        # The traffic's senders block on partitions whose leader is killed
        # (each resends one message); a probe room on a partition the
        # survivor leads gets a send accepted by a live leader, which
        # must still not be acked: its followers are gone.
        meta = await asyncio.to_thread(kafka3.metadata, k, c.topic_send)
        led = sorted(p for p, (leader, _, _) in meta.items() if leader == 1)
        assert led, f"node 1 leads no partition of {c.topic_send}: {meta}"
        i = 0
        while partition_of(f"probe-{c.kafka_prefix}-{i}") not in led:
            i += 1
        probe_room = f"probe-{c.kafka_prefix}-{i}"
        probe = run.client(rooms=[probe_room])
        await probe.start(gw=0)
        unav0 = unavailable_total(run)
        f = run.fault("kafka node2 + node3 SIGKILL")
        for n in nodes:
            await asyncio.to_thread(k.kill, n)
        probing = asyncio.ensure_future(probe_sends(probe, probe_room, f[1] + DOWN_S - 11))
        await asyncio.sleep(DOWN_S)
        n_probe = await probing
        t_end = time.monotonic()
        false_acks = acks_in(run, f[1] + GRACE_S, t_end)
        late = acks_in(run, f[1], f[1] + GRACE_S)
        unav = unavailable_total(run) - unav0
        t_back = time.monotonic()
        for n in nodes:
            await asyncio.to_thread(k.start, n, False)
        await asyncio.to_thread(k.wait_ready, 180)
        ready_s = time.monotonic() - t_back
        run.restored(f)
        first = await wait_acks_after(run, t_back, 90, "sends acked again after the two "
                                                       "brokers returned")
        await asyncio.to_thread(kafka3.wait_meta, k, c.topic_send,
                                lambda m: in_sync(k, c.topic_send, c.topic_receive)(), 120,
                                "every ISR back to 3")
        await asyncio.sleep(3)
        acked_after = harness.acked_after(run, t_back)
        probe_unav = sum(1 for r in probe.sends for o in r.outcomes if o.startswith("unavail"))
        await finish(run, tr, f"acked_within_{GRACE_S:.0f}s_of_kill={late} "
                              f"probe_sends_to_live_leader={n_probe} (unavailable {probe_unav}) "
                              f"acked_while_down={false_acks} unavailable_while_down={unav} "
                              f"brokers_registered_after={ready_s:.1f}s "
                              f"first_ack_after_start={first:.1f}s "
                              f"acked_after={acked_after}")
        assert false_acks == 0, f"{false_acks} sends acked while 2 of 3 brokers were down " \
                                "(min.insync.replicas=2 cannot be met)"
        assert unav > 0, "no send answered `unavailable` while 2 of 3 brokers were down"
        assert probe_unav > 0, "no probe send (live leader) answered `unavailable`"
    harness.run_bounded(body(), BODY_TIMEOUT)


def _end_offsets(k, topic, n):
    import subprocess
    args = ["kcat", "-b", k.bootstrap, "-Q"]
    for p in range(n):
        args += ["-t", f"{topic}:{p}:-1"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    ends = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == topic and parts[2] == "offset":
            ends[int(parts[1].strip("[]"))] = int(parts[3])
    return ends


def _pg_offsets(c):
    return dict(c.query("SELECT partition, next_offset FROM partition_owners "
                        "WHERE topic = %s AND next_offset IS NOT NULL", (c.topic_send,)))


def test_kafka_whole_cluster_sigkill(kcluster):
    c = kcluster
    k = c.kafka
    DOWN_S = 5
    group = f"{c.kafka_prefix}-classifier"

    def consumed():
        """Records the classifiers processed: consumed, less those a take
        dropped as below PostgreSQL's offset (the first batch read from
        Kafka's older offset, before the seek)."""
        return sum(c.metric(n, "chatd_kafka_consumed_total", consumer="group") -
                   c.metric(n, "chatd_classifier_records_resumed_past_total")
                   for n in c.procs if n.startswith("classifier"))

    async def body():
        run, rooms, tr = await start_traffic(c, "f14d kafka whole cluster SIGKILL + restart")
        await asyncio.sleep(8)
        # The classifiers' offsets are PostgreSQL's (partition_owners,
        # migrations/009); Kafka's commits come once a minute (P2d), so
        # after 8 s it may have none: shown, not checked.
        pre = _pg_offsets(c)
        assert pre and sum(pre.values()) > 0, f"no offsets in PostgreSQL before the kill: {pre}"
        kpre = await asyncio.to_thread(kafka3.group_offsets, k, group)
        kpre = {p: o for (t, p), o in kpre.items() if t == c.topic_send}
        consumed0 = consumed()
        f = run.fault("kafka all three nodes SIGKILL")
        for i in range(k.nodes):
            k._expected[i] = 0
            pid = k.pid(i)
            if pid:
                os.kill(pid, signal.SIGKILL)
        for i in range(k.nodes):
            await asyncio.to_thread(k.kill, i)
        await asyncio.sleep(DOWN_S)
        acked_down = acks_in(run, f[1] + 3.0, time.monotonic())
        t_back = time.monotonic()
        for i in range(k.nodes):
            await asyncio.to_thread(k.start, i, False)
        await asyncio.to_thread(k.wait_ready, 180)
        ready_s = time.monotonic() - t_back
        run.restored(f)
        first = await wait_acks_after(run, t_back, 120, "sends acked again after the restart")
        await asyncio.sleep(3)
        await tr.stop()
        await run.converge()
        post = _pg_offsets(c)
        ends = await asyncio.to_thread(_end_offsets, k, c.topic_send, harness.SEND_PARTITIONS)
        replayable = sum(ends[p] - pre.get(p, 0) for p in ends)
        total = sum(ends.values())
        delta = consumed() - consumed0
        extra = (f"acked_while_down={acked_down} brokers_registered_after={ready_s:.1f}s "
                 f"first_ack_after_start={first:.1f}s offsets_before={sum(pre.values())} "
                 f"offsets_after={sum(post.values())} kafka_committed_before="
                 f"{sum(kpre.values())} log_end={total} "
                 f"consumed_since_snapshot={delta:.0f} records_after_snapshot={replayable}")
        res = checker.check(run, extra_line=extra)
        await run.close()
        res.assert_ok()
        assert acked_down == 0, f"{acked_down} sends acked while no broker was running"
        for p, o in pre.items():
            assert post.get(p, -1) >= o, f"{c.topic_send}[{p}]: offset {o} before " \
                                         f"the kill, {post.get(p)} after"
        # Offsets lost (or a new owner starting from Kafka's, a minute old)
        # would restart the group far back: the classifiers would then read
        # every record again.
        assert delta <= 2 * replayable, \
            f"classifiers consumed {delta} records since the snapshot, more than twice the " \
            f"{replayable} written after the offsets (log total {total})"
    harness.run_bounded(body(), BODY_TIMEOUT)


def test_kafka_controller_sigkill(kcluster):
    c = kcluster
    k = c.kafka
    DOWN_S = 15

    async def body():
        run, rooms, tr = await start_traffic(c, "f14e kafka active controller SIGKILL")
        ctl = await asyncio.to_thread(kafka3.controller, k)
        f = run.fault(f"kafka node{ctl} (active controller) SIGKILL")
        await asyncio.to_thread(k.kill, kafka3.node_index(ctl))
        t0 = time.monotonic()
        new = None
        while time.monotonic() - t0 < 60:
            try:
                new = await asyncio.to_thread(kafka3.controller, k)
                if new not in (ctl, -1):
                    break
            except RuntimeError:
                pass
            await asyncio.sleep(0.5)
        elect_s = time.monotonic() - f[1]
        assert new not in (None, ctl, -1), f"no new controller within 60 s (last {new})"
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - f[1])))
        acked_down = harness.acked_after(run, f[1])
        first = first_ack_after(run, f[1])
        await asyncio.to_thread(k.start, kafka3.node_index(ctl))
        run.restored(f)
        await asyncio.to_thread(kafka3.wait_meta, k, c.topic_send,
                                lambda m: in_sync(k, c.topic_send, c.topic_receive)(), 120,
                                "every ISR back to 3")
        await finish(run, tr, f"controller={ctl} new_controller={new} seen_after<={elect_s:.1f}s "
                              f"acked_down={acked_down} first_ack_after_kill="
                              f"{first if first is None else round(first, 2)}s")
        assert acked_down > 0, "no send acked while the controller node was down"
    harness.run_bounded(body(), BODY_TIMEOUT)
