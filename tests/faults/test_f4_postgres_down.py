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


def _ws_upgrade(port, token):
    """A WebSocket upgrade on a raw socket (http.client would wait for a
    101's body): (status, headers lower-cased, body)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                   "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, f"connection closed: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        while len(body) < int(hdrs.get("content-length", 0)):
            chunk = s.recv(4096)
            assert chunk, f"connection closed: {body!r}"
            body += chunk
        return int(lines[0].split()[1]), hdrs, body


def test_api_and_readiness_while_postgres_is_down(make_cluster):
    """PostgreSQL down. The gateway's /readyz (what the Service routes on:
    can it take new clients) stays 200, since every gateway is alike and
    sends are still acked (test above); /readyz/backends, for operators,
    says 503 and names postgres; a new client's upgrade is answered 503 with
    Retry-After. The server API: 503 with Retry-After (never a 500 or a
    hang), for a read and for an edit (which says it was not stored); all
    answered again once PostgreSQL is back."""
    import json
    from chatlib import free_port, http_request
    key = "k" * 32
    api_port = free_port()
    c = make_cluster(n_gw=1, n_cl=1, gw_args=[f"--api-listen=127.0.0.1:{api_port}"],
                     gw_env={"CHATD_API_KEY": key})
    gw = c.gw_ports[0]
    h = {"Authorization": f"Bearer {key}"}
    st, _, body = http_request(gw, "GET", "/readyz/backends")
    assert (st, body) == (200, b"redis up\npostgres up\nkafka up\nready yes\n"), (st, body)
    token = json.loads(http_request(gw, "POST", "/api/dev/token", body={"user": "f4ready"})[2])["token"]
    try:
        c.pg.stop_fast()
        deadline, ready, full = harness.now() + 15, [], None
        while harness.now() < deadline:
            ready.append(http_request(gw, "GET", "/readyz")[0])
            full = http_request(gw, "GET", "/readyz/backends")
            if full[0] == 503:
                break
            harness.time.sleep(0.1)
        assert full[0] == 503 and b"postgres down\n" in full[2], full
        assert b"redis up\n" in full[2] and b"ready yes\n" in full[2], full
        st, _, body = http_request(gw, "GET", "/readyz")
        ready.append(st)
        assert set(ready) == {200}, f"/readyz while PostgreSQL is down: {ready}"
        st, hdrs, data = _ws_upgrade(gw, token)
        assert st == 503 and hdrs.get("retry-after") == "1", (st, hdrs, data)
        assert json.loads(data)["error"] == "unavailable", data
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
    # The API's statement needed one of the gateway's --pg-conns connections;
    # the backends report waits for all of them to reconnect.
    while True:
        st, _, body = http_request(gw, "GET", "/readyz/backends")
        if st == 200 or harness.now() > deadline:
            break
        harness.time.sleep(0.2)
    assert (st, body) == (200, b"redis up\npostgres up\nkafka up\nready yes\n"), (st, body)
    assert _ws_upgrade(gw, token)[0] == 101
