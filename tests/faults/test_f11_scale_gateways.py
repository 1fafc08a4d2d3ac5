"""Fault 11 (real Kafka only): gateways scaled out and in under traffic.

An operator created chat-receive with two partitions, for gateways 0 and 1.
A third gateway joins the running cluster (a StatefulSet scaled up): it
grows the topic to three partitions (--kafka-create-topics) before it
serves, and clients on it get every room's live traffic within seconds,
which needs the classifiers to produce to a partition that did not exist
when they started. Then it is SIGTERMed (scaled in): its clients move to the
others, and the checker finds nothing lost or duplicated.
"""
import asyncio

import pytest

import checker
import harness

pytestmark = pytest.mark.skipif(not harness.kafkamode.REAL,
                                reason="real Kafka only (CHATD_TEST_KAFKA=real)")

LIVE_WITHIN_S = 15


def test_gateway_scale_out_and_in(make_cluster):
    c = make_cluster(receive_topic_partitions=2)

    async def body():
        run = harness.Run(c, "f11 gateway scale-out + in")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()

        f = run.fault("gateway2 joins")
        t0 = harness.now()
        await asyncio.to_thread(c.add_gateway, 2)
        ready_after = harness.now() - t0
        assert c.log_count("gateway2", "event=kafka_topic_grow", "partitions=2 to=3") == 1
        fresh = await harness.make_clients(run, 3, lambda i: rooms, lambda i: 2)
        t1 = harness.now()
        await harness.wait_for(lambda: all(cl.live[x] > 0 for cl in fresh for x in rooms),
                               LIVE_WITHIN_S, "live messages on the new gateway")
        live_after = harness.now() - t1
        run.restored(f)
        await asyncio.sleep(1)

        f = run.fault("gateway2 SIGTERM")
        port = c.ports["gateway2"]
        c.gw_ports.remove(port)
        p = c.terminate("gateway2")
        await asyncio.to_thread(p.wait_exit, c.drain + 15)
        assert p.p.returncode == 0, f"gateway2 exit code {p.p.returncode}"
        await harness.wait_for(lambda: all(cl.recoveries and cl.recoveries[-1][1] and cl.port != port
                                           for cl in fresh), 30, "gateway2's clients recovered")
        run.restored(f)
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"gateway2 ready_after={ready_after:.2f}s "
                            f"live_after={live_after:.2f}s")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 150)
