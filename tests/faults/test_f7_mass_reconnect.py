"""Fault 7: mass reconnect. A gateway holding 2000 clients is SIGKILLed; they
all reconnect (jittered backoff 0-2 s, any gateway) to the survivor and
`sync`. Measured: the time until every client has recovered. The survivor
must not melt: every handshake and request is answered, with data or
`unavailable` / HTTP 503 (the client then retries with backoff), never left
hanging; nothing acked is lost."""
import asyncio
import os

import checker
import harness
from chatlib import uid

N_CLIENTS = int(os.environ.get("CHATD_FAULTS_MASS_CLIENTS", "2000"))
ROOM_SIZE = 20
N_SENDERS = 4


def test_mass_reconnect(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, f"f7 mass reconnect ({N_CLIENTS} clients)")
        p = uid("m")
        n_rooms = N_CLIENTS // ROOM_SIZE
        rooms = [f"{p}-{i}" for i in range(n_rooms)]
        t0 = harness.now()
        mass = await harness.make_clients(
            run, N_CLIENTS, lambda i: [rooms[i % n_rooms]], lambda i: 0,
            concurrency=100, first_backoff=2.0, max_backoff=2.0, track_stalls=False)
        per = n_rooms // N_SENDERS
        senders = await harness.make_clients(
            run, N_SENDERS, lambda i: rooms[i * per:(i + 1) * per], lambda i: 1,
            track_stalls=False)
        t_setup = harness.now() - t0
        tr = harness.Traffic(senders, interval=0.05).start()
        await run.warm_up(extra=0.5)

        h503 = c.metric("gateway1", "chatd_handshakes_total", result="unavailable")
        f = run.fault("gateway0 SIGKILL")
        await asyncio.to_thread(c.kill, "gateway0")
        run.restored(f)
        await harness.wait_for(lambda: all(cl.recoveries and cl.recoveries[-1][1]
                                           for cl in mass), 45,
                               "every client reconnected and synced", step=0.2)
        t_all = max(cl.recoveries[-1][1] for cl in mass) - f[1]
        t_half = sorted(cl.recoveries[-1][1] for cl in mass)[len(mass) // 2] - f[1]
        h503 = c.metric("gateway1", "chatd_handshakes_total", result="unavailable") - h503
        unav = sum(cl.unavailable for cl in mass)
        assert all(cl.port == c.gw_ports[1] for cl in mass)
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge(timeout=60)
        res = checker.check(run, extra_line=(
            f"all_recovered_after={t_all:.2f}s median={t_half:.2f}s handshake_503={h503:.0f} "
            f"sync_unavailable={unav} setup={t_setup:.1f}s"))
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 170)
