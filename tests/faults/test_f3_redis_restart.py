"""Fault 3: Redis is SIGKILLed and restarted EMPTY on the same port under
traffic. Seqs continue from PostgreSQL (dense and unique in PG, no client
sees a seq with two ids); the gateways re-register their live connections'
routes, so live delivery resumes without any client reconnecting."""
import asyncio

import checker
import harness


def test_redis_restart_empty(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, "f3 redis restarted empty")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        heads = {x: max(cl.contig[x] for cl in clients) for x in rooms}
        assert all(h > 0 for h in heads.values()), \
            f"no progress before the fault: heads {heads}, acked {harness.acked_after(run, 0)}"
        f = run.fault("redis restarted empty")
        await asyncio.to_thread(c.redis_restart_empty, 1.0)
        run.restored(f)
        live0 = [dict(cl.live) for cl in clients]
        # new messages arrive live on every connection, in every room
        await harness.wait_for(
            lambda: all(cl.live[x] >= live0[i][x] + 5 for i, cl in enumerate(clients)
                        for x in rooms), 30, "live delivery after the Redis restart")
        assert sum(cl.reconnects for cl in clients) == 0, "clients had to reconnect"
        r = c.redis_client()
        for x in rooms:
            routes = r.hgetall(f"{{room:{x}}}:gw")
            for gw in ("0", "1"):
                assert routes.get(gw) == r.get(f"gw:{gw}"), \
                    f"room {x}: route of gateway {gw} not re-registered: {routes}"
            assert int(r.get(f"{{room:{x}}}:seq") or 0) > heads[x], "seq key not continued"
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run)
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 120)
