"""Fault 8: a slow consumer. Clients that stop reading (raw sockets with a
small receive buffer that never recv()) on gateway 0 (--send-queue=65536)
while others, on gateway 1 (default queue), flood their room with big
messages: the stalled ones are cut at their bounded send queue
(chatd_ws_slow_consumer_cuts_total rises), gateway 0's RSS stays flat-ish
(it does not hold the flood for them), the members that read get everything
live, and the slow users, back (reconnect to any gateway + `sync`), recover
everything. (That a reply up to --send-queue into an empty backlog is never
cut, and one larger refused, is test_net's test_ws_big_frame_into_empty_backlog.)"""
import asyncio
import os

import checker
import harness
from chatlib import RawWS, uid

SEND_QUEUE = 65536
N_SLOW = 4
TEXT = 4000
N_FLOOD = 4            # flooders
WINDOW = 8             # sends in flight per flooder
N_MSGS = 4000          # ~15 MiB of frames
MAX_LAG = 100          # messages acked but not yet stored


def test_slow_consumer(make_cluster):
    env = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") +
                            ":quarantine_size_mb=2:thread_local_quarantine_size_kb=64"
                            ).lstrip(":")}
    # A rooms reply must fit half the queue: 100 rooms of 200 bytes do.
    c = make_cluster(gw_args_by_id={0: [f"--send-queue={SEND_QUEUE}", "--max-rooms-per-user=100"]},
                     gw_env=env)
    port = c.gw_ports[0]

    async def body():
        run = harness.Run(c, "f8 slow consumer")
        room = uid("slow")
        members = await harness.make_clients(run, N_FLOOD + 1, lambda i: [room], lambda i: 1)
        flooders = members[:N_FLOOD]          # members[N_FLOOD] only reads
        slow = [run.client(rooms=[room]) for _ in range(N_SLOW)]
        for s in slow:          # membership is the user's: join once, then go raw
            s.reconnect = False
            await s.start(gw=0)
            await s.close()
        raws = [await asyncio.to_thread(RawWS, port, s.token, 10, 4096) for s in slow]
        cuts0 = c.metric("gateway0", "chatd_ws_slow_consumer_cuts_total")
        rss0 = c.rss_kb("gateway0")
        f = run.fault("slow consumers flooded")
        text = "y" * TEXT

        async def stored():
            rows = await asyncio.to_thread(c.query, "SELECT count(*) FROM messages "
                                           "WHERE room = %s", (room,))
            return rows[0][0]

        async def flood(cl, i):
            n = N_MSGS // N_FLOOD
            for k in range(0, n, WINDOW):
                # flow control: the classifier stays < ~0.4 MiB behind (the
                # embedded broker keeps only 5 MiB per partition; a backlog
                # would also arrive at the gateway as one burst)
                while sum(len(x.sends) for x in flooders) - await stored() > MAX_LAG:
                    await asyncio.sleep(0.01)
                await cl.send_pipelined(room, [f"{i}.{k + j} {text}"[:TEXT]
                                               for j in range(WINDOW)])
        await asyncio.gather(*(flood(cl, i) for i, cl in enumerate(flooders)))
        run.restored(f)
        await run.settle(30)
        await asyncio.sleep(1)
        t_flood = f[2] - f[1]
        cuts = c.metric("gateway0", "chatd_ws_slow_consumer_cuts_total") - cuts0
        rss1 = c.rss_kb("gateway0")
        for r in raws:
            r.close()
        assert cuts >= N_SLOW, f"{cuts} slow-consumer cuts for {N_SLOW} stalled readers"
        growth_mb = (rss1 - rss0) / 1024
        flood_mb = N_MSGS * TEXT / 2 ** 20
        # uncut, gateway 0 would hold the whole flood for them (frames are
        # shared between connections, so about flood_mb); cut, <= 64 KiB each
        assert growth_mb < flood_mb / 2, \
            f"gateway RSS grew {growth_mb:.1f} MiB during a {flood_mb:.1f} MiB flood"
        readers_cut = sum(cl.reconnects for cl in members)
        # the slow users come back (any gateway) and recover everything by sync
        for s in slow:
            s.stopping, s.reconnect = False, True
            await s.start(join=False)
        try:
            await run.converge(timeout=20)
        except asyncio.TimeoutError:
            pass            # the checker says who did not converge
        res = checker.check(run, extra_line=f"cuts={cuts:.0f} readers_cut={readers_cut} "
                            f"slow_reconnects={sum(s.reconnects for s in slow)} "
                            f"flood {flood_mb:.1f} MiB in {t_flood:.1f}s, gateway0 rss "
                            f"{rss0 / 1024:.0f}->{rss1 / 1024:.0f} MiB")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 150)
