"""Fault 12 (real Kafka, three nodes: CHATD_TEST_KAFKA_NODES=3): a Kafka
broker SIGKILLed under traffic, down 10 s, then started again.

Topics have replication 3 and min.insync.replicas 2: with one broker down
every partition keeps a leader (unclean election off, the ISR shrinks to
two) and acks=all still completes, so sends keep being acked. The checker
finds every acked message stored once, seqs dense, order kept, and every
client converged after the broker came back (its replicas catch up).
"""
import asyncio

import pytest

import checker
import harness

pytestmark = pytest.mark.skipif(not harness.kafkamode.REAL or harness.kafkamode.NODES < 3,
                                reason="real Kafka with three nodes only "
                                       "(CHATD_TEST_KAFKA=real CHATD_TEST_KAFKA_NODES=3)")

DOWN_S = 10


def test_kafka_broker_sigkill(make_cluster):
    c = make_cluster()
    k = c.kafka

    async def body():
        run = harness.Run(c, "f12 kafka broker SIGKILL 10 s")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        node = 1
        f = run.fault(f"kafka node{node} SIGKILL")
        await asyncio.to_thread(k.kill, node)
        await asyncio.sleep(DOWN_S)
        acked_down = harness.acked_after(run, f[1])
        await asyncio.to_thread(k.start, node)
        run.restored(f)
        await asyncio.sleep(2)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"acked_while_broker_down={acked_down}")
        await run.close()
        res.assert_ok()
        assert acked_down > 0, "no send acked while one of three brokers was down"
    harness.run_bounded(body(), 180)
