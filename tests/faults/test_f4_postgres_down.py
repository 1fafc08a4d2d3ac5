"""Fault 4: PostgreSQL down for a few seconds (pg_ctl stop -m fast, then
start). Meanwhile `sync` answers `unavailable` and sends are still acked
(Kafka has them); classifiers retry; afterwards everything acked is stored
once and delivered."""
import asyncio

import checker
import harness


DOWN_S = 4.0


def test_postgres_down(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, "f4 postgres down")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        f = run.fault(f"postgres down {DOWN_S:.0f}s")
        try:
            await asyncio.to_thread(c.pg.stop_fast)
            t_down = harness.now()
            reader = clients[-1]
            reply = await reader.request("sync", room=rooms[0], after=0, limit=10, timeout=10)
            assert reply.get("op") == "error" and reply.get("code") == "unavailable", \
                f"sync while PostgreSQL is down: {reply}"
            await asyncio.sleep(max(0.0, t_down + DOWN_S - harness.now()))
            acked_down = harness.acked_after(run, t_down + 0.5)
        finally:
            if not c.pg.proc.alive():
                await asyncio.to_thread(c.pg.start)
        run.restored(f)
        assert acked_down > 0, "no send acked while PostgreSQL was down"
        await harness.wait_for(lambda: all(cl.last_adv[x] > f[2] for cl in clients
                                           for x in rooms), 30,
                               "delivery resumed after PostgreSQL came back")
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"acked_while_down={acked_down}")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 120)
