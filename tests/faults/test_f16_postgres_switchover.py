"""Fault 16: PostgreSQL primary + streaming standby (pg_basebackup), chatd
given both in one libpq conninfo with target_session_attrs=read-write. Under
traffic the primary is stopped (pg_ctl stop -m fast: it sends the standby
all its WAL first) and the standby promoted (pg_ctl promote). chatd's
reconnects skip the stopped node and the read-only standby until the
promotion, then land on the new primary: nothing acked is lost, seqs stay
dense, every client converges. (A crash of the primary loses what
asynchronous replication had not shipped: docs/DEPLOY.md says how to make
that nothing.)"""
import asyncio

import pytest

import checker
import harness


@pytest.fixture
def pg_pair(fault_workdir):
    # Requested before make_cluster: torn down after the cluster stopped.
    pair = harness.PostgresPair(fault_workdir, name=f"pgha-{harness.uid('p')}")
    yield pair
    pair.close()


def test_postgres_switchover(pg_pair, make_cluster):
    c = make_cluster(pg=pg_pair)
    pair = pg_pair
    classifiers = [n for n in c.procs if n.startswith("classifier")]

    async def body():
        run = harness.Run(c, "f16 postgres switchover")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        f = run.fault("postgres primary stopped, standby promoted")
        await asyncio.to_thread(pair.primary.stop_fast)
        t_down = harness.now()
        await asyncio.sleep(1.0)  # reconnects meet a stopped node and a read-only one
        await asyncio.to_thread(pair.standby.promote)
        run.restored(f)
        await harness.wait_for(
            lambda: all(c.log_count(n, "event=pg_connected", f"port={pair.standby.port} ")
                        for n in classifiers), 30,
            f"every classifier connected to the promoted standby (port {pair.standby.port})")
        await harness.wait_for(lambda: all(cl.last_adv[x] > f[2] for cl in clients
                                           for x in rooms), 30,
                               "delivery resumed after the switchover")
        acked = harness.acked_after(run, t_down)
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"acked_after_stop={acked}")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 120)
