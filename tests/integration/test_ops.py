"""Every op of the protocol, its reply, its events and its errors."""
import asyncio
import json

from chatlib import arun, check_msg, uid


def test_join_send_sync_basic(cluster):
    room = uid("basic")
    user = uid("a")

    async def body():
        a = await cluster.client(user, gw=0)
        r = await a.ok("join", room=room)
        assert r == {"op": "ok", "rid": r["rid"], "room": room, "seq": 0}, r

        ack = await a.send(room, "hello")
        assert set(ack) == {"op", "rid", "room", "id"}, f"ack without cid has extra keys: {ack}"
        m = await a.wait_event(lambda e: e.get("op") == "msg" and e.get("room") == room,
                               what="own msg")
        check_msg(m, room=room, frm=user, text="hello")
        assert m["seq"] == 1 and m["id"] == ack["id"], (m, ack)
        assert "cid" not in m, f"msg has cid although none was given: {m}"
        assert "rid" not in m, m

        ack2 = await a.send(room, "second", cid="c-1")
        assert ack2["cid"] == "c-1" and ack2["id"] != ack["id"], ack2
        m2 = await a.wait_event(lambda e: e.get("op") == "msg" and e.get("room") == room,
                                what="own msg 2")
        check_msg(m2, room=room, frm=user, text="second", cid="c-1")
        assert m2["seq"] == 2 and m2["id"] == ack2["id"]

        h = await a.sync(room)
        assert h["more"] is False
        assert [(x["seq"], x["id"], x["text"]) for x in h["messages"]] == \
            [(1, ack["id"], "hello"), (2, ack2["id"], "second")], h
        assert "cid" not in h["messages"][0] and h["messages"][1]["cid"] == "c-1", h
        for x in h["messages"]:
            check_msg(x, room=room, frm=user)
        # the history entries equal the live ones
        assert h["messages"][0]["ts"] == m["ts"] and h["messages"][1]["ts"] == m2["ts"]

        # join again: idempotent, returns the current head
        assert await a.join(room) == 2
        # string rid echoed as is
        r = await a.request({"op": "rooms", "rid": "abc-1"})
        assert r["rid"] == "abc-1" and r["op"] == "rooms", r
        await a.close()
    arun(body())


def test_text_sizes_and_content(cluster):
    room = uid("sizes")

    async def body():
        a = await cluster.client(uid("a"), gw=1)
        await a.join(room)
        ok_texts = ["x" * 4096, "é" * 2048, "héllo 👋 世界",
                    'quote " backslash \\ nl \n tab \t </script> {"op":"x"}']
        for t in ok_texts:
            await a.send(room, t)
        for t in ["x" * 4097, "é" * 2049, "👋" * 1025]:
            await a.expect_error({"op": "send", "room": room, "text": t}, "too_large")
        await a.wait_seqs(room, range(1, len(ok_texts) + 1))
        h = await a.sync(room)
        assert [x["text"] for x in h["messages"]] == ok_texts
        live = [x["text"] for x in a.msgs(room)]
        assert live == ok_texts
        await a.close()
    arun(body())


def raw_cases(room, joined):
    """(request object, expected code) — all bad_request."""
    return [
        {"rid": 1},
        {"op": "fly"},
        {"op": 5},
        {"op": None},
        {"op": "join"},
        {"op": "join", "room": 5},
        {"op": "join", "room": None},
        {"op": "join", "room": ["r"]},
        {"op": "join", "room": ""},
        {"op": "join", "room": "x" * 129},
        {"op": "join", "room": "bad room"},
        {"op": "join", "room": "room/x"},
        {"op": "join", "room": "rüm"},
        {"op": "join", "room": "dm:b-x:a-x"},
        {"op": "join", "room": "dm:a-x:a-x"},
        {"op": "join", "room": "dm:a-x"},
        {"op": "join", "room": "dm::b-x"},
        {"op": "join", "room": "dm:a-x:"},
        {"op": "join", "room": "dm:a-x:b:c"},
        {"op": "join", "room": "dm:a x:b"},
        {"op": "join", "room": "dm:a-x:" + "b" * 65},
        {"op": "leave"},
        {"op": "leave", "room": 5},
        {"op": "send", "room": joined},
        {"op": "send", "room": joined, "text": 5},
        {"op": "send", "room": joined, "text": None},
        {"op": "send", "room": joined, "text": ""},
        {"op": "send", "room": joined, "text": ["a"]},
        {"op": "send", "room": joined, "text": "t", "cid": ""},
        {"op": "send", "room": joined, "text": "t", "cid": "c" * 65},
        {"op": "send", "room": joined, "text": "t", "cid": 5},
        {"op": "send", "text": "t"},
        {"op": "sync"},
        {"op": "sync", "room": joined, "after": -1},
        {"op": "sync", "room": joined, "after": "0"},
        {"op": "sync", "room": joined, "limit": 0},
        {"op": "sync", "room": joined, "limit": -3},
        {"op": "sync", "room": joined, "limit": "10"},
        {"op": "read", "room": joined},
        {"op": "read", "room": joined, "seq": -1},
        {"op": "read", "room": joined, "seq": "1"},
        {"op": "read", "seq": 1},
        {"op": "typing"},
        {"op": "typing", "room": 5},
        {"op": "presence"},
        {"op": "presence", "room": 5},
        {"op": "presence", "room": "bad room"},
    ]


def test_bad_requests(cluster):
    joined = uid("bad")

    async def body():
        a = await cluster.client(uid("a"), gw=0)
        await a.join(joined)
        failures = []
        for case in raw_cases(None, joined):
            obj = dict(case)
            obj.setdefault("rid", a.next_rid())
            try:
                await a.expect_error(obj, "bad_request")
            except AssertionError as e:
                failures.append(f"{json.dumps(case)[:120]} -> {e}")
        # frames that are not a JSON object: error without (or with null) rid
        for raw in ["not json", "{\"op\":", "[1,2,3]", "42", "\"join\"", "null", "{}"]:
            await a.ws.send(raw)
            try:
                e = await a.wait_event(lambda e: e.get("op") == "error", timeout=5,
                                       what=f"error for {raw!r}")
                if e.get("code") != "bad_request" or e.get("rid") is not None:
                    failures.append(f"{raw!r} -> {e}")
            except AssertionError as ex:
                failures.append(f"{raw!r} -> {ex}")
        # the connection stayed open and works
        r = await a.ok("rooms")
        assert [x["room"] for x in r["rooms"]] == [joined], r
        h = await a.sync(joined)
        assert h["messages"] == [], f"a bad send was stored: {h}"
        assert not a.closed.is_set()
        await a.close()
        assert not failures, "bad requests not answered with bad_request:\n" + "\n".join(failures)
    arun(body(), timeout=90)


def test_valid_room_ids(cluster):
    async def body():
        a = await cluster.client(uid("a"))
        sfx = uid("")
        for room in ["x" * (128 - len(sfx)) + sfx, "Ab9_.:-" + sfx, "a:b:c" + sfx,
                     "dmx" + sfx, "DM:x:y" + sfx]:
            assert await a.join(room) == 0, room
            await a.send(room, "ok")
        await a.close()
    arun(body())


def test_not_member(cluster):
    room = uid("nm")

    async def body():
        owner = await cluster.client(uid("o"), gw=0)
        await owner.join(room)
        await owner.send(room, "secret")
        a = await cluster.client(uid("a"), gw=1)
        for obj in [{"op": "send", "room": room, "text": "x"},
                    {"op": "sync", "room": room},
                    {"op": "typing", "room": room},
                    {"op": "read", "room": room, "seq": 1},
                    {"op": "presence", "room": room},
                    {"op": "send", "room": uid("never"), "text": "x"}]:
            await a.expect_error(obj, "not_member")
        assert not a.closed.is_set()
        await owner.close()
        await a.close()
    arun(body())


def test_joined_left_and_leave(cluster):
    room = uid("jl")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        await a.join(room)
        await b.join(room)
        ev = await a.wait_event(lambda e: e.get("op") == "joined" and e.get("user") == ub,
                                what="joined event")
        assert ev == {"op": "joined", "room": room, "user": ub}, ev

        await b.send(room, "before leave")
        await a.wait_seqs(room, [1])

        r = await b.ok("leave", room=room)
        assert r == {"op": "ok", "rid": r["rid"], "room": room}, r
        ev = await a.wait_event(lambda e: e.get("op") == "left" and e.get("user") == ub,
                                what="left event")
        assert ev == {"op": "left", "room": room, "user": ub}, ev

        await b.expect_error({"op": "send", "room": room, "text": "x"}, "not_member")
        await b.expect_error({"op": "sync", "room": room}, "not_member")
        rb = await b.ok("rooms")
        assert room not in [x["room"] for x in rb["rooms"]], rb

        await a.send(room, "after leave")
        await a.wait_seqs(room, [2])
        await asyncio.sleep(0.5)
        assert 2 not in b.seqs(room), "message delivered to a user who left"

        # rejoin: head is 2, later messages arrive again
        assert await b.join(room) == 2
        await a.send(room, "after rejoin")
        await b.wait_seqs(room, [3])
        await a.close()
        await b.close()
    arun(body())


def test_typing(cluster):
    room = uid("typ")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        await a.join(room)
        await b.join(room)
        await a.send_obj({"op": "typing", "room": room})
        ev = await b.wait_event(lambda e: e.get("op") == "typing", what="typing event")
        assert ev == {"op": "typing", "room": room, "from": ua}, ev
        # with a rid: still no reply on success (and no error)
        await a.send_obj({"op": "typing", "room": room, "rid": 777})
        ev = await b.wait_event(lambda e: e.get("op") == "typing", what="typing event 2")
        assert ev["from"] == ua
        await asyncio.sleep(0.3)
        errs = [e for e in a.history if e.get("op") == "error"]
        assert not errs, errs
        # not stored
        h = await b.sync(room)
        assert h["messages"] == [], h
        await a.close()
        await b.close()
    arun(body())


def test_read_marks_and_rooms(cluster):
    r1, r2 = uid("rd1"), uid("rd2")
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        r = await a.ok("rooms")
        assert r == {"op": "rooms", "rid": r["rid"], "rooms": []}, r
        await a.join(r1)
        await a.join(r2)
        await b.join(r1)
        await a.send_many(r1, ["1", "2", "3"])
        await a.wait_seqs(r1, [1, 2, 3])

        r = await a.ok("read", room=r1, seq=2)
        assert r == {"op": "ok", "rid": r["rid"]} or (r["op"] == "ok" and r.get("room") in (None, r1)), r
        ev = await b.wait_event(lambda e: e.get("op") == "read", what="read event")
        assert ev == {"op": "read", "room": r1, "from": ua, "seq": 2}, ev

        def by_room(resp):
            assert resp["op"] == "rooms", resp
            return {x["room"]: (x["seq"], x["read"]) for x in resp["rooms"]}

        assert by_room(await a.ok("rooms")) == {r1: (3, 2), r2: (0, 0)}
        # never backwards
        await a.ok("read", room=r1, seq=1)
        assert by_room(await a.ok("rooms"))[r1] == (3, 2)
        await a.ok("read", room=r1, seq=3)
        assert by_room(await a.ok("rooms"))[r1] == (3, 3)
        assert by_room(await b.ok("rooms")) == {r1: (3, 0)}
        await a.close()
        # persistent, seen from the other gateway
        a2 = await cluster.client(ua, gw=1)
        assert by_room(await a2.ok("rooms")) == {r1: (3, 3), r2: (0, 0)}
        await a2.close()
        await b.close()
    arun(body())


def test_presence(cluster):
    room = uid("pres")
    ua, ub, uc = uid("a"), uid("b"), uid("c")

    async def body():
        c = await cluster.client(uc, gw=0)
        await c.join(room)
        await c.close()
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        await a.join(room)
        await b.join(room)

        async def online(cl):
            r = await cl.ok("presence", room=room)
            assert r["op"] == "presence" and r["room"] == room, r
            assert isinstance(r["online"], list)
            assert len(r["online"]) == len(set(r["online"])), f"duplicates: {r}"
            return set(r["online"])

        deadline = asyncio.get_event_loop().time() + 5
        while True:
            got = await online(a)
            if got == {ua, ub} or asyncio.get_event_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert got == {ua, ub}, f"presence {got}, expected {{{ua}, {ub}}} (c is offline)"
        assert await online(b) == {ua, ub}

        await b.close()
        deadline = asyncio.get_event_loop().time() + 10
        while True:
            got = await online(a)
            if got == {ua} or asyncio.get_event_loop().time() > deadline:
                break
            await asyncio.sleep(0.25)
        assert got == {ua}, f"presence after b disconnected: {got}"
        await a.close()
    arun(body())


def test_dm_rooms(cluster):
    sfx = uid("")
    ua, ub, uc = "a" + sfx, "b" + sfx, "c" + sfx
    room = f"dm:{ua}:{ub}"

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        c = await cluster.client(uc, gw=0)
        assert await a.join(room) == 0
        assert await b.join(room) == 0
        await c.expect_error({"op": "join", "room": room}, "forbidden")
        await c.expect_error({"op": "join", "room": f"dm:{ub}:{ua}"}, "bad_request")
        # both codes describe this case; either is acceptable
        r = await c.req("sync", room=room)
        assert r.get("op") == "error" and r.get("code") in ("not_member", "forbidden"), r
        # the dm room of c with a is fine for c
        assert await c.join(f"dm:{ua}:{uc}") == 0
        await a.send(room, "hi b")
        await b.send(room, "hi a")
        for cl in (a, b):
            await cl.wait_seqs(room, [1, 2])
            ms = cl.msgs(room)
            assert [(m["seq"], m["from"], m["text"]) for m in ms] == \
                [(1, ua, "hi b"), (2, ub, "hi a")], ms
        await asyncio.sleep(0.3)
        assert not c.msgs(room)
        for cl in (a, b, c):
            await cl.close()
    arun(body())


def test_dm_first_join_makes_the_other_user_a_member(cluster):
    """Starting a direct message reaches the recipient without them joining:
    online, they get `joined` (user = themselves), the room in `rooms` and its
    messages live; offline, the room is theirs at the next connect."""
    sfx = uid("")
    ua, ub, uc = "a" + sfx, "b" + sfx, "c" + sfx
    room, room_c = f"dm:{ua}:{ub}", f"dm:{ua}:{uc}"

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        assert await a.join(room) == 0
        await b.wait_event(lambda e: e.get("op") == "joined" and e.get("room") == room
                           and e.get("user") == ub, what="b's own joined")
        r = await b.ok("rooms")
        assert {"room": room, "seq": 0, "read": 0} in r["rooms"], r
        await a.send(room, "hi b", cid="c1")
        await b.wait_seqs(room, [1])
        assert [m["text"] for m in await b.sync_all(room)] == ["hi b"]
        # b's own join later is answered like any join and announces nothing
        assert await b.join(room) == 1
        # c is offline when a starts the DM: the room is waiting at c's connect
        assert await a.join(room_c) == 0
        await a.send(room_c, "hi c")
        c = None
        for _ in range(50):  # the peer's membership is written just after a's join reply
            c = await cluster.client(uc, gw=1)
            r = await c.ok("rooms")
            if any(x["room"] == room_c for x in r["rooms"]):
                break
            await c.close()
            c = None
            await asyncio.sleep(0.1)
        assert c is not None, "c never became a member of its DM"
        for _ in range(100):  # acked means in Kafka; sequenced and stored just after
            texts = [m["text"] for m in await c.sync_all(room_c)]
            if texts:
                break
            await asyncio.sleep(0.1)
        assert texts == ["hi c"], texts
        for cl in (a, b, c):
            await cl.close()
    arun(body())


def test_read_mark_is_capped_at_the_head(cluster):
    room, user = uid("rdcap"), uid("a")

    async def body():
        a = await cluster.client(user, gw=0)
        await a.join(room)
        await a.send_many(room, ["1", "2"])
        await a.wait_seqs(room, [1, 2])
        await a.ok("read", room=room, seq=10 ** 12)
        ev = await a.wait_event(lambda e: e.get("op") == "read" and e.get("room") == room,
                                what="read event")
        assert ev["seq"] == 2, ev
        await a.send(room, "3")
        await a.wait_seqs(room, [3])
        rooms = {x["room"]: (x["seq"], x["read"]) for x in (await a.ok("rooms"))["rooms"]}
        assert rooms[room] == (3, 2), rooms
        # a mark stored beyond the head before the cap: shown capped, repaired by a read
        cluster.pg.query("UPDATE members SET read_seq = 1000000000000 WHERE room = %s RETURNING 1", (room,))
        rooms = {x["room"]: (x["seq"], x["read"]) for x in (await a.ok("rooms"))["rooms"]}
        assert rooms[room] == (3, 3), rooms
        await a.ok("read", room=room, seq=1)
        assert cluster.pg.query("SELECT read_seq FROM members WHERE room = %s", (room,)) == [(3,)]
        await a.close()
    arun(body())
