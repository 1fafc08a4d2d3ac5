"""Failover in the shared cluster (runs last: it restarts processes).

- A classifier is SIGKILLed while messages flow: its partitions move to the
  other one, nothing acknowledged is lost, seqs stay dense, nothing is stored
  twice.
- A gateway gets SIGTERM: its clients are closed with 1012, it exits 0; a
  client reconnects (after the gateway is back, same id) and `sync` recovers
  what it missed; live delivery resumes.
"""
import asyncio
import signal

from chatlib import arun, dedup, uid


def test_classifier_killed_no_loss(cluster):
    room = uid("ckill")

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        b = await cluster.client(uid("b"), gw=1)
        await a.join(room)
        await b.join(room)
        await a.send_many(room, [str(i) for i in range(1, 21)])
        await b.wait_seqs(room, range(1, 21))

        victim = cluster.proc("classifier0")
        victim.expect_clean_exit = False
        await asyncio.to_thread(victim.stop, signal.SIGKILL, 10)

        n = 140
        await asyncio.gather(
            a.send_many(room, [str(i) for i in range(21, 81)], timeout=30),
            b.send_many(room, [f"b{i}" for i in range(60)], timeout=30))
        for c in (a, b):
            await c.wait_seqs(room, range(1, n + 1), timeout=40)
            d = dedup(c.msgs(room))
            seqs = sorted(m["seq"] for m in d)
            assert seqs == list(range(1, n + 1)), f"{c.label}: seqs {seqs[:5]}..{seqs[-5:]}"
            ordered = [m["seq"] for m in d]
            assert ordered == sorted(ordered), f"{c.label}: live out of seq order"
            assert [m["text"] for m in d if m["from"] == a.user] == \
                [str(i) for i in range(1, 81)]
        h = await b.sync_all(room)
        assert [m["seq"] for m in h] == list(range(1, n + 1))
        rows = cluster.pg.query("SELECT count(*), count(DISTINCT id) FROM messages "
                                "WHERE room = %s", (room,))
        assert rows == [(n, n)], rows
        await a.close()
        await b.close()
    arun(body(), timeout=90)
    cluster.restart("classifier0")


def test_gateway_restart_1012_and_sync(cluster):
    room = uid("gwr")

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        b = await cluster.client(uid("b"), gw=1)
        await a.join(room)
        await b.join(room)
        await a.send_many(room, ["1", "2"])
        await b.wait_seqs(room, [1, 2])
        last = max(b.seqs(room))

        gw1 = cluster.proc("gateway1")
        gw1.send_signal(signal.SIGTERM)
        code = await b.wait_closed(20)
        assert code == 1012, f"close code {code} on gateway SIGTERM"
        await asyncio.to_thread(gw1.wait_exit, 30)
        assert gw1.p.returncode == 0, f"gateway1 exit code {gw1.p.returncode}"

        # while gateway1 is away
        await a.send_many(room, ["3", "4", "5"])
        await a.wait_seqs(room, [3, 4, 5])

        await asyncio.to_thread(cluster.restart, "gateway1")
        b = await cluster.client(b.user, gw=1)
        h = await b.sync(room, after=last)
        assert [(m["seq"], m["text"]) for m in h["messages"]] == \
            [(3, "3"), (4, "4"), (5, "5")], h
        await a.send(room, "6")
        await b.wait_seqs(room, [6], timeout=15)
        await b.send(room, "7")
        await a.wait_seqs(room, [7])
        await a.close()
        await b.close()
    arun(body(), timeout=90)
