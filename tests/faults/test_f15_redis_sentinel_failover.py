"""Fault 15: Redis behind Sentinel (a master, a replica, three Sentinels);
the master is SIGKILLed under traffic, the Sentinels promote the replica,
and every chatd process follows to it without a restart (it asks the
Sentinels on every reconnection and checks ROLE). The promoted replica may
lack the last writes (asynchronous replication): seqs continue from
PostgreSQL's floor, the gateways re-register their routes on the new
master, so nothing acked is lost, seqs stay dense and live delivery resumes
without any client reconnecting."""
import asyncio

import checker
import harness


def test_redis_sentinel_failover(make_cluster):
    c = make_cluster(redis_ha=True)
    chatd = [n for n in c.procs if n != "broker"]

    async def body():
        run = harness.Run(c, "f15 redis master killed, sentinel failover")
        rooms, clients, senders = await harness.standard_clients(run)
        old = c.redis.master_port()
        assert all(c.log_count(n, "event=redis_connected", f"port={old} ") for n in chatd), \
            "chatd did not find the master through the Sentinels"
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        heads = {x: max(cl.contig[x] for cl in clients) for x in rooms}
        f = run.fault("redis master SIGKILLed")
        await asyncio.to_thread(c.redis.kill_master)
        new = await asyncio.to_thread(c.redis.wait_failover, old, 30)
        run.restored(f)
        await harness.wait_for(
            lambda: all(c.log_count(n, "event=redis_connected", f"port={new} ") for n in chatd),
            30, f"every chatd process connected to the promoted master (port {new})")
        live0 = [dict(cl.live) for cl in clients]
        await harness.wait_for(
            lambda: all(cl.live[x] >= live0[i][x] + 5 for i, cl in enumerate(clients)
                        for x in rooms), 30, "live delivery after the failover")
        assert sum(cl.reconnects for cl in clients) == 0, "clients had to reconnect"
        r = c.redis_client()
        for x in rooms:
            routes = r.hgetall(f"{{room:{x}}}:gw")
            for gw in ("0", "1"):
                assert routes.get(gw) == r.get(f"gw:{gw}"), \
                    f"room {x}: route of gateway {gw} not on the new master: {routes}"
            assert int(r.get(f"{{room:{x}}}:seq") or 0) > heads[x], "seq key not continued"
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"redis master {old} -> {new}")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 120)


def test_sentinel_flags_refused():
    """A bad Sentinel list or master name is a bad flag: exit 2 with the
    flag named, before any backend is waited for."""
    import subprocess
    for args, env, want in (
            (["--redis-sentinels=a:0"], {}, b"--redis-sentinels"),
            (["--redis-sentinels=a:1,,b"], {}, b"--redis-sentinels"),
            ([], {"CHATD_REDIS_SENTINELS": "[::1"}, b"--redis-sentinels"),
            (["--redis-sentinels=a,b:26380", "--redis-master-name=my master"], {},
             b"--redis-master-name")):
        r = subprocess.run([harness.CHATD_BIN, "--role=all", "--dev-tokens", "--migrate-wait=0"]
                           + args, env=harness.chatd_env(env), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        assert r.returncode == 2 and want in r.stdout, (args, env, r.returncode, r.stdout)
