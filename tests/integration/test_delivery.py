"""Delivery across gateways, dense seqs under concurrency, the join head
rule, cid idempotency, reconnect + sync, history paging."""
import asyncio
import json
import urllib.parse

from chatlib import arun, dedup, http_request, uid


def assert_dense(msgs, n, who):
    """msgs (arrival order, duplicates allowed if identical) are seqs 1..n in order."""
    d = dedup(msgs)
    seqs = [m["seq"] for m in d]
    if seqs != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(seqs))
        out_of_order = [(a, b) for a, b in zip(seqs, seqs[1:]) if b != a + 1][:5]
        raise AssertionError(f"{who}: got {len(seqs)} msgs, expected seqs 1..{n}; "
                             f"missing {missing[:10]} ({len(missing)}), "
                             f"breaks {out_of_order}, extra {sorted(set(seqs) - set(range(1, n + 1)))[:10]}")
    return d


def test_cross_gateway_delivery(cluster):
    room = uid("xgw")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        await a.join(room)
        await b.join(room)
        acks_a, acks_b = await asyncio.gather(
            a.send_many(room, [f"a{i}" for i in range(10)]),
            b.send_many(room, [f"b{i}" for i in range(10)]))
        for cl in (a, b):
            await cl.wait_seqs(room, range(1, 21))
            d = assert_dense(cl.msgs(room), 20, cl.label)
            assert [m["text"] for m in d if m["from"] == ua] == [f"a{i}" for i in range(10)]
            assert [m["text"] for m in d if m["from"] == ub] == [f"b{i}" for i in range(10)]
        ids = {m["id"]: m for m in dedup(a.msgs(room))}
        assert set(ids) == {x["id"] for x in acks_a + acks_b}
        # both gateways deliver the very same message objects
        assert [(m["seq"], m["id"], m["ts"], m["text"]) for m in dedup(a.msgs(room))] == \
            [(m["seq"], m["id"], m["ts"], m["text"]) for m in dedup(b.msgs(room))]
        await a.close()
        await b.close()
    arun(body())


def test_dense_seqs_concurrent_senders(cluster):
    room = uid("dense")
    per = 100

    async def body():
        senders = [await cluster.client(uid(f"s{i}"), gw=i % 2) for i in range(4)]
        receivers = [await cluster.client(uid(f"r{i}"), gw=i % 2) for i in range(4)]
        for c in senders + receivers:
            assert await c.join(room) == 0

        async def run_sender(i, c):
            texts = [f"s{i}:{k}" for k in range(per)]
            cids = [f"s{i}-{k}" for k in range(per)]
            return await c.send_many(room, texts, cids=cids, timeout=60)

        all_acks = await asyncio.gather(*(run_sender(i, c) for i, c in enumerate(senders)))
        total = per * len(senders)
        ack_ids = [a["id"] for acks in all_acks for a in acks]
        assert len(set(ack_ids)) == total, "acks with duplicate ids"
        for acks, i in zip(all_acks, range(4)):
            assert [a["cid"] for a in acks] == [f"s{i}-{k}" for k in range(per)]

        for c in receivers + senders:
            await c.wait_seqs(room, range(1, total + 1), timeout=40)
        ref = None
        for c in receivers + senders:
            d = assert_dense(c.msgs(room), total, c.label)
            for i, s in enumerate(senders):
                mine = [m for m in d if m["from"] == s.user]
                assert [m["text"] for m in mine] == [f"s{i}:{k}" for k in range(per)], \
                    f"{c.label}: sender {i}'s messages out of send order"
                assert [m["cid"] for m in mine] == [f"s{i}-{k}" for k in range(per)]
            key = [(m["seq"], m["id"]) for m in d]
            if ref is None:
                ref = key
            assert key == ref, f"{c.label} saw a different seq->id mapping"
        assert {i for _, i in ref} == set(ack_ids)

        h = await receivers[1].sync(room, after=0, limit=1000)
        assert h["more"] is False
        assert [(m["seq"], m["id"]) for m in h["messages"]] == ref
        rows = cluster.pg.query("SELECT count(*), min(seq), max(seq), count(DISTINCT id) "
                                "FROM messages WHERE room = %s", (room,))
        assert rows[0] == (total, 1, total, total), rows
        for c in senders + receivers:
            await c.close()
    arun(body(), timeout=90)


def test_join_head_rule_quiet(cluster):
    room = uid("head")

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        await a.join(room)
        await a.send_many(room, ["1", "2", "3"])
        await a.wait_seqs(room, [1, 2, 3])
        b = await cluster.client(uid("b"), gw=1)
        assert await b.join(room) == 3
        await a.send_many(room, ["4", "5"])
        await b.wait_seqs(room, [4, 5])
        assert [m["seq"] for m in b.msgs(room)] == [4, 5], b.msgs(room)
        h = await b.sync(room, after=3)
        assert [m["text"] for m in h["messages"]] == ["4", "5"]
        await a.close()
        await b.close()
    arun(body())


def test_join_head_rule_concurrent(cluster):
    room = uid("headc")
    n = 300

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        await a.join(room)
        send_task = asyncio.ensure_future(
            a.send_many(room, [str(i) for i in range(1, n + 1)], timeout=60))
        await a.wait_until(lambda: len(a.seqs(room)) >= 20, what="first 20 msgs")
        joiners = [await cluster.client(uid(f"j{g}"), gw=g) for g in (1, 0)]
        heads = [await j.join(room) for j in joiners]
        await send_task
        await a.wait_seqs(room, range(1, n + 1), timeout=30)
        for j, head in zip(joiners, heads):
            assert 0 <= head <= n
            want = set(range(head + 1, n + 1))
            # every later message arrives live or by sync
            live = dedup(j.msgs(room))
            live_seqs = [m["seq"] for m in live]
            assert live_seqs == sorted(live_seqs), f"{j.label}: live out of order"
            h = await j.sync_all(room, after=head)
            synced = [m["seq"] for m in h]
            assert synced == sorted(want), f"{j.label}: sync after head {head} wrong"
            missing_live = want - set(live_seqs)
            if missing_live:
                # allowed by the text (sync recovers) but must be recoverable
                print(f"note: {j.label} missed {len(missing_live)} msgs live after join")
            for m in live:
                assert m["text"] == str(m["seq"]), m
        for c in [a] + joiners:
            await c.close()
    arun(body(), timeout=90)


def test_cid_resend_is_idempotent(cluster):
    room, room2 = uid("cid"), uid("cid2")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        for r in (room, room2):
            await a.join(r)
        await b.join(room)

        ack1 = await a.send(room, "one", cid="k1")
        assert ack1["cid"] == "k1"
        await b.wait_seqs(room, [1])
        again = await a.send(room, "one", cid="k1")
        assert again["id"] == ack1["id"] and again["cid"] == "k1", (ack1, again)

        # pipelined duplicates, then the same cid again from the other gateway
        acks = await a.send_many(room, ["two"] * 3, cids=["k2"] * 3)
        assert len({x["id"] for x in acks}) == 1, acks
        a2 = await cluster.client(ua, gw=1)
        ack_other_gw = await a2.send(room, "two", cid="k2")
        assert ack_other_gw["id"] == acks[0]["id"], (acks[0], ack_other_gw)

        await a.send(room, "three")
        # same cid: another user, another room -> distinct messages
        ack_b = await b.send(room, "b's k1", cid="k1")
        ack_r2 = await a.send(room2, "k1 elsewhere", cid="k1")
        assert ack_b["id"] != ack1["id"] and ack_r2["id"] != ack1["id"]

        await b.wait_seqs(room, [1, 2, 3, 4])
        await asyncio.sleep(0.5)  # let any wrong duplicate arrive
        live = dedup(b.msgs(room))
        assert [(m["seq"], m["text"], m.get("cid")) for m in live] == \
            [(1, "one", "k1"), (2, "two", "k2"), (3, "three", None), (4, "b's k1", "k1")], live
        h = await a.sync(room)
        assert [(m["seq"], m["id"]) for m in h["messages"]] == \
            [(1, ack1["id"]), (2, acks[0]["id"]), (3, live[2]["id"]), (4, ack_b["id"])], h

        rows = cluster.pg.query(
            "SELECT user_id, cid, count(*) FROM messages WHERE room = %s "
            "GROUP BY user_id, cid ORDER BY 1, 2", (room,))
        assert sorted(rows, key=repr) == sorted(
            [(ua, "k1", 1), (ua, "k2", 1), (ua, None, 1), (ub, "k1", 1)], key=repr), rows
        rows = cluster.pg.query("SELECT count(*) FROM messages WHERE room = %s", (room2,))
        assert rows == [(1,)], rows
        for c in (a, a2, b):
            await c.close()
    arun(body())


def test_reconnect_other_gateway_and_sync(cluster):
    room = uid("recon")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        await a.join(room)
        await b.join(room)
        await b.send_many(room, ["1", "2", "3"])
        await a.wait_seqs(room, [1, 2, 3])
        last = max(a.seqs(room))
        await a.close()

        await b.send_many(room, [str(i) for i in range(4, 9)])
        await b.wait_seqs(room, range(4, 9))

        a = await cluster.client(ua, gw=1)  # other gateway, no re-join
        r = await a.ok("rooms")
        assert [(x["room"], x["seq"]) for x in r["rooms"]] == [(room, 8)], r
        h = await a.sync(room, after=last)
        assert [(m["seq"], m["text"]) for m in h["messages"]] == \
            [(i, str(i)) for i in range(4, 9)] and h["more"] is False, h
        # live delivery without re-joining, on the new gateway
        await b.send(room, "9")
        await a.wait_seqs(room, [9])
        # and back on the first gateway too
        a0 = await cluster.client(ua, gw=0)
        await b.send(room, "10")
        await a0.wait_seqs(room, [10])
        await a.wait_seqs(room, [10])
        for c in (a, a0, b):
            await c.close()
    arun(body())


def test_sync_paging_limits(cluster):
    room = uid("page")
    n = 1001
    user = uid("p")

    async def body():
        a = await cluster.client(user, gw=0)
        await a.join(room)
        for start in range(0, n, 250):
            await a.send_many(room, [f"m{i}" for i in range(start + 1, min(n, start + 250) + 1)],
                              timeout=60)
        await a.wait_seqs(room, range(1, n + 1), timeout=30)

        h = await a.sync(room)  # defaults: after 0, limit 100
        assert [m["seq"] for m in h["messages"]] == list(range(1, 101)) and h["more"] is True
        h = await a.sync(room, after=0, limit=5000)  # clamped to 1000
        assert [m["seq"] for m in h["messages"]] == list(range(1, 1001)) and h["more"] is True
        h = await a.sync(room, after=1000)
        assert [m["seq"] for m in h["messages"]] == [1001] and h["more"] is False
        h = await a.sync(room, after=1, limit=1000)
        assert len(h["messages"]) == 1000 and h["more"] is False
        h = await a.sync(room, after=995, limit=6)
        assert [m["seq"] for m in h["messages"]] == list(range(996, 1002)) and h["more"] is False
        h = await a.sync(room, after=994, limit=6)
        assert [m["seq"] for m in h["messages"]] == list(range(995, 1001)) and h["more"] is True
        h = await a.sync(room, after=5000)
        assert h["messages"] == [] and h["more"] is False
        h = await a.sync(room, limit=1)
        assert [m["seq"] for m in h["messages"]] == [1] and h["more"] is True
        every = await a.sync_all(room, after=0, limit=97)
        assert [m["seq"] for m in every] == list(range(1, n + 1))
        assert [m["text"] for m in every] == [f"m{i}" for i in range(1, n + 1)]
        await a.close()
    arun(body(), timeout=90)

    tok = cluster.token(user)
    st, _, body = http_request(cluster.gw_ports[1], "GET",
                               f"/api/rooms/{room}/messages?" +
                               urllib.parse.urlencode({"after": 0, "limit": 5000}),
                               headers={"Authorization": f"Bearer {tok}"}, timeout=10)
    assert st == 200
    obj = json.loads(body)
    assert len(obj["messages"]) == 1000 and obj["more"] is True
    st, _, body = http_request(cluster.gw_ports[1], "GET", f"/api/rooms/{room}/messages",
                               headers={"Authorization": f"Bearer {tok}"}, timeout=10)
    obj = json.loads(body)
    assert [m["seq"] for m in obj["messages"]] == list(range(1, 101)) and obj["more"] is True
