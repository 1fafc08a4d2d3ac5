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


def test_api_503_while_postgres_is_down(make_cluster):
    """The server API with PostgreSQL down: 503 with Retry-After (never a
    500 or a hang), for a read and for an edit (which says it was not
    stored); answered again once PostgreSQL is back."""
    import json
    from chatlib import free_port, http_request
    key = "k" * 32
    api_port = free_port()
    c = make_cluster(n_gw=1, n_cl=1, gw_args=[f"--api-listen=127.0.0.1:{api_port}"],
                     gw_env={"CHATD_API_KEY": key})
    h = {"Authorization": f"Bearer {key}"}
    try:
        c.pg.stop_fast()
        for method, path, body in (("GET", "/v1/rooms/lobby", None),
                                   ("PATCH", "/v1/rooms/lobby/messages/" + "a" * 32, {"text": "x"})):
            st, hdrs, data = http_request(api_port, method, path, body=body, headers=h, timeout=15)
            assert st == 503 and hdrs.get("retry-after") == "1", (method, st, data)
            err = json.loads(data)
            assert err["error"] == "unavailable", err
            assert method == "GET" or err["stored"] == "no", err
    finally:
        if not c.pg.proc.alive():
            c.pg.start()
    deadline = harness.now() + 30
    while True:
        st, _, data = http_request(api_port, "GET", "/v1/rooms/lobby", headers=h)
        if st == 404 or harness.now() > deadline:
            break
        harness.time.sleep(0.2)
    assert st == 404, data   # PostgreSQL answers again: no such room
