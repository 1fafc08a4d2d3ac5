"""Fault 1: a gateway is SIGKILLed under traffic.

- its clients reconnect (jittered backoff, any gateway) to the survivor and
  recover what they missed by `sync`;
- from --gateway-ttl + 1 s after the kill, the classifiers stop producing to
  the dead gateway's partition: its chat-receive end offset stops moving
  while the survivor's keeps up with the messages (read from the broker, so
  records re-delivered after a classifier rebalance count too);
- the same --gateway-id restarted clears what its previous life registered in
  Redis ({room:R}:gw field N holds the new epoch only) and serves again.
"""
import asyncio

import checker
import harness


def snap(c):
    m = sum(c.metric(n, "chatd_classifier_messages_total") for n in ("classifier0", "classifier1"))
    return c.receive_offsets((0, 1)), m


async def window(c, tr, seconds):
    """(records sent to gateway 0, to gateway 1, messages sequenced) during
    `seconds`, measured with the traffic paused (and the pipeline settled)
    at both ends."""
    await tr.pause()
    o0, m0 = await asyncio.to_thread(snap, c)
    tr.resume()
    await asyncio.sleep(seconds)
    await tr.pause()
    o1, m1 = await asyncio.to_thread(snap, c)
    tr.resume()
    return o1[0] - o0[0], o1[1] - o0[1], m1 - m0


def test_gateway_sigkill(make_cluster):
    c = make_cluster()
    ttl = harness.GW_TTL

    async def body():
        run = harness.Run(c, "f1 gateway SIGKILL")
        rooms, clients, senders = await harness.standard_clients(run)
        r = c.redis_client()
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        g0, g1, m = await window(c, tr, 1.5)
        assert m > 0 and g0 >= m and g1 >= m, \
            f"before the kill: {g0} + {g1} records to gateways 0 + 1 for {m} messages"
        old = r.get("gw:1")
        assert old and all(r.hget(f"{{room:{x}}}:gw", "1") == old for x in rooms)

        f = run.fault("gateway1 SIGKILL")
        await asyncio.to_thread(c.kill, "gateway1")
        run.restored(f)
        victims = [cl for cl in clients if cl.port == c.gw_ports[1]]
        # every client of the dead gateway is back, on the survivor, and synced
        await harness.wait_for(lambda: all(cl.recoveries and cl.recoveries[-1][1]
                                           for cl in victims), 30, "victims recovered")
        assert all(cl.port == c.gw_ports[0] for cl in victims)
        t_rec = max(cl.recoveries[-1][1] for cl in victims) - f[1]

        # after ttl + 1 s: one delivery per message (the dead partition gets nothing)
        await asyncio.sleep(max(0.0, f[1] + ttl + 1.0 - harness.now()))
        g0, g1, m = await window(c, tr, 2.0)
        assert m > 0 and g0 >= m and g1 == 0, \
            f"{g0} + {g1} records to gateways 0 + 1 (dead) for {m} messages from {ttl}+1 s after the kill"
        assert r.get("gw:1") is None, "the dead gateway's liveness key outlived its TTL"

        # the same gateway id again: its earlier routes are cleared
        await asyncio.to_thread(c.restart, "gateway1")
        new = r.get("gw:1")
        assert new and new != old
        for x in rooms:
            v = r.hget(f"{{room:{x}}}:gw", "1")
            assert v in (None, new), f"room {x}: gateway 1 route of the old epoch {v} kept"
        for x in r.smembers("gw:1:rooms"):
            assert r.hget(f"{{room:{x}}}:gw", "1") == new
        # ... and it serves: new clients on it get live traffic of every room
        fresh = await harness.make_clients(run, 2, lambda i: rooms, lambda i: 1)
        await harness.wait_for(lambda: all(cl.live[x] > 0 for cl in fresh for x in rooms),
                               15, "live messages on the restarted gateway")
        assert all(r.hget(f"{{room:{x}}}:gw", "1") == new for x in rooms)
        g0, g1, m = await window(c, tr, 1.0)
        assert m > 0 and g0 >= m and g1 >= m, \
            f"after the restart: {g0} + {g1} records to gateways 0 + 1 for {m} messages"

        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"victims={len(victims)} "
                            f"all_victims_synced_after={t_rec:.2f}s")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 150)
