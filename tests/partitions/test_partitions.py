"""Network partitions under traffic (issue 21), each checked by the fault
suite's checker (tests/faults/checker.py, strict about `unavailable`).
Hosts and faults: netns.py; services on them: hosts.py."""
import asyncio

import pytest

import hosts
from common import finish, probe_sends, start_traffic
from harness import now, run_bounded

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
        await asyncio.sleep(SEND_TIMEOUT + MARGIN + 3)
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
