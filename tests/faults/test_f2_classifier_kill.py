"""Fault 2: a classifier is SIGKILLed under traffic. The group rebalances to
the survivor; re-consumed records keep their seq; nothing acked is lost,
nothing stored twice, seqs dense; clients see everything."""
import asyncio

import checker
import harness


def test_classifier_sigkill(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, "f2 classifier SIGKILL")
        rooms, clients, senders = await harness.standard_clients(run, n_rooms=8)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        f = run.fault("classifier0 SIGKILL")
        await asyncio.to_thread(c.kill, "classifier0")
        run.restored(f)
        # session.timeout.ms=3000: the survivor owns every partition after ~3-4 s
        await harness.wait_for(lambda: harness.acked_after(run, f[1] + 5) > 20, 30,
                               "traffic acked after the rebalance")
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run)
        await run.close()
        res.assert_ok()
        # every room's messages after the kill were delivered live as well
        for cl in clients:
            assert all(cl.live[r] > 0 for r in rooms), cl.live
    harness.run_bounded(body(), 120)
