"""What every partition test does: clients on both gateways, traffic, a
fault held under it, heal, convergence, the shared checker (strict: nothing
stored that was answered `unavailable` without a later ack of its cid)."""
import asyncio
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "faults"))

import checker  # noqa: E402
import harness  # noqa: E402
from harness import now  # noqa: E402


# chatd's exit code after a Kafka client's fatal error (chatd.c
# CHATD_EXIT_KAFKA_FATAL): its supervisor restarts it.
EXIT_KAFKA_FATAL = 3


async def supervise(c, restarts):
    """What Kubernetes' restartPolicy does for a chatd process that exited
    after a fatal Kafka error (librdkafka 2.0.2's idempotent producer, when
    an isolated partition leader returns: docs/RELIABILITY.md P5): starts it
    again on its host, and appends (name, seconds since the start of the
    run) to `restarts`. Any other exit is left to the process check."""
    while True:
        for name, p in list(c.procs.items()):
            if p.stopping or p.alive() or p.p.returncode != EXIT_KAFKA_FATAL:
                continue
            p.stopping, p.expect_clean_exit = True, False   # expected: restarted
            restarts.append((name, now()))
            print(f"supervisor: {name} exited {EXIT_KAFKA_FATAL} (Kafka client fatal), restarted")
            await asyncio.to_thread(c.restart, name, False)
        await asyncio.sleep(0.2)


async def start_traffic(c, name, n_clients=8, n_rooms=4, n_senders=4, interval=0.05):
    run = harness.Run(c, name)
    run.restarts = []
    run.supervisor = asyncio.ensure_future(supervise(c, run.restarts))
    rooms, clients, senders = await harness.standard_clients(run, n_clients=n_clients,
                                                             n_rooms=n_rooms,
                                                             n_senders=n_senders)
    traffic = harness.Traffic(senders, interval=interval).start()
    await run.warm_up(timeout=60)
    return run, rooms, clients, traffic


async def flowing(run, t, what, timeout=60, extra=1.0):
    """After a heal (or a failover) at t: waits until every client got a
    newly sequenced message in every one of its rooms since t (delivery and
    sequencing work again, through both gateways), then `extra` seconds of
    that traffic. What the fixed post-heal sleeps waited for, on condition;
    fails the test if it does not happen within `timeout`."""
    await harness.wait_for(lambda: all(c.last_adv[r] > t for c in run.clients for r in c.rooms),
                           timeout, what, step=0.1)
    await asyncio.sleep(extra)


async def finish(run, traffic, extra_line=""):
    await traffic.stop()
    await run.converge(timeout=90, settle=90)
    run.supervisor.cancel()
    await run.close()
    if run.restarts:
        extra_line += f"; restarted after a fatal Kafka error: {[n for n, _ in run.restarts]}"
    res = checker.check(run, extra_line=extra_line, strict_unavailable=True)
    return res


async def probe_sends(client, room, stop, out, gap=0.2):
    """One send at a time with its own cid, never resent here (the checker
    sees each as a send of `client`): out gets (t_sent, seconds to the
    reply, outcome)."""
    while not stop.is_set():
        rec = client._new_send(room, f"{client.user} probe {len(out)}")
        rec.ordered = False
        t = now()
        try:
            reply = await client.request("send", timeout=40, room=room, text=rec.text,
                                         cid=rec.cid)
        except harness.Disconnected as e:
            rec.outcomes.append("hang" if str(e) == "hang" else "closed")
            out.append((t, now() - t, rec.outcomes[-1]))
            await asyncio.sleep(gap)
            continue
        o = harness.send_outcome(reply)
        rec.outcomes.append(o)
        if o == "ack":
            rec.acked, rec.ack_id, rec.t_ack = True, reply.get("id"), now()
        out.append((t, now() - t, o))
        if o != "ack":
            rec.gave_up = True
        await asyncio.sleep(gap)
