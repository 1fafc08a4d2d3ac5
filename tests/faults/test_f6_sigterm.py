"""Fault 6: SIGTERM of a gateway under traffic (rolling update). While it
drains, /readyz is 503 and new upgrades get 503 (the listener stays open);
its clients are closed with 1012; it exits 0 within --drain; its clients
reconnect to the other gateway and recover by `sync`."""
import asyncio
import signal
import time

import checker
import harness
import websockets.exceptions
from chatlib import Client, RawWS, http_request


def test_gateway_sigterm(make_cluster):
    drain = 8
    c = make_cluster(drain=drain)
    port = c.gw_ports[1]

    async def body():
        run = harness.Run(c, "f6 gateway SIGTERM")
        rooms, clients, senders = await harness.standard_clients(run)
        victims = [cl for cl in clients if cl.port == port]
        # a client that never reads keeps the drain going (close handshake, <= 2 s)
        raw = await asyncio.to_thread(RawWS, port, c.token("stubborn"), 10, 4096)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        f = run.fault("gateway1 SIGTERM")
        p = c.terminate("gateway1")
        ready, upgrade = [], []
        while p.alive() and harness.now() - f[1] < 3 and not (503 in ready and upgrade):
            try:
                st, _, _ = await asyncio.to_thread(http_request, port, "GET", "/readyz", None,
                                                   None, 2)
                ready.append(st)
            except OSError as e:
                ready.append(repr(e))
            if 503 in ready and not upgrade:
                try:
                    cl = await Client.connect(port, c.token("late"), timeout=3)
                    await cl.close()
                    upgrade.append("101")
                except websockets.exceptions.InvalidStatusCode as e:
                    upgrade.append(e.status_code)
                except (OSError, asyncio.TimeoutError) as e:
                    upgrade.append(repr(e))
            await asyncio.sleep(0.02)
        assert 503 in ready, f"/readyz while draining: {ready}"
        assert 200 not in ready[ready.index(503):], f"/readyz back to 200 while draining: {ready}"
        assert upgrade == [503], f"upgrade while draining: {upgrade}"
        await asyncio.to_thread(p.wait_exit, drain + 15)
        took = harness.now() - f[1]
        run.restored(f)
        raw.close()
        assert p.p.returncode == 0, f"gateway1 exit code {p.p.returncode} after SIGTERM"
        assert took <= drain + 1, f"gateway1 took {took:.1f}s to exit (--drain={drain})"
        codes = [cl.disconnects[0][1] for cl in victims if cl.disconnects]
        assert len(codes) == len(victims) and set(codes) == {1012}, f"close codes {codes}"
        await harness.wait_for(lambda: all(cl.recoveries and cl.recoveries[-1][1]
                                           for cl in victims), 30, "victims recovered")
        assert all(cl.port == c.gw_ports[0] for cl in victims)
        closed = max(cl.disconnects[0][0] for cl in victims) - f[1]
        synced = max(cl.recoveries[-1][1] for cl in victims) - f[1]
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line=f"exit_after={took:.2f}s victims={len(victims)} "
                            f"closed_after={closed:.2f}s synced_after={synced:.2f}s")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 120)


def test_classifier_sigterm_while_joining(make_cluster):
    """A classifier SIGTERMed while it joins the consumer group exits 0.
    librdkafka 2.0.2 aborts when a cooperative-sticky member is destroyed
    after its JoinGroup and before its first assignment (fixed in 2.3.0):
    chatd's close waits (bounded) for that assignment. Without the wait this
    aborted at one of these delays on the project's machine. The group path
    on both brokers (--ownership=group: the embedded broker's classifiers
    hold leases by default and join no group)."""
    c = make_cluster(n_gw=1, cl_args=["--ownership=group"])
    exits = []
    for delay in (1.2, 1.5, 1.8, 2.1, 2.4, 2.7):
        c.kill("classifier1")
        time.sleep(3)   # the group settles on classifier0 alone
        p = c.restart("classifier1", wait=False)
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        p.wait_exit(25)
        exits.append((delay, p.p.returncode, round(time.monotonic() - t0, 1)))
    print(f"(delay s, exit code, exit took s): {exits}")
    assert all(rc == 0 for _, rc, _ in exits), exits
