"""Fault 9: joined/left records out of order, under traffic (issue 22).

One user, a connection on each gateway, joins and leaves a room that has
traffic while the record of the previous change arrives late (produced
again with kcat, exactly as the gateway wrote it, after the newer change).
After each step membership as both gateways enforce it must equal
PostgreSQL's (Run.probe_membership); then the usual checker, which asks the
same of every client.
"""
import asyncio
import json
import subprocess

import checker
import harness
from chatlib import uid


def late_record(c, typ, room, user):
    op = {"j": "joined", "l": "left"}[typ]
    val = json.dumps({"op": op, "room": room, "user": user}, separators=(",", ":"))
    subprocess.run(["kcat", "-P", "-b", c.brokers(), "-t", c.topic_send, "-k", room,
                    "-H", "v=1", "-H", f"t={typ}", "-H", f"u={user}"],
                   input=val.encode(), check=True, timeout=30)


def test_membership_records_out_of_order(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, "f9 membership records out of order")
        rooms, clients, senders = await harness.standard_clients(run)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        room, user = rooms[0], uid("x")
        xs = []
        for gw in (0, 1):
            x = run.client(user, rooms=[])
            x.probe_rooms = [room]
            await x.start(gw=gw, join=False, sync=False)
            xs.append(x)
        wrong = {}

        async def step(label, ops, late):
            for x, op in ops:
                r = await x.request(op, room=room)
                assert r.get("op") == "ok", f"{op}: {r}"
            await asyncio.to_thread(late_record, c, late, room, user)
            await asyncio.sleep(1.5)   # the late record is through (a few ms normally)
            wrong[label] = await run.probe_membership(label + ": ")

        await step("join gw0, leave gw1, late joined", [(xs[0], "join"), (xs[1], "leave")], "j")
        await step("join gw1, late left", [(xs[1], "join")], "l")
        await step("leave gw0, join gw1, late left", [(xs[0], "leave"), (xs[1], "join")], "l")

        await tr.stop()
        await run.converge()
        res = checker.check(run, extra_line="wrong after steps: " + ", ".join(
            f"{k}={v}" for k, v in wrong.items()))
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 150)
