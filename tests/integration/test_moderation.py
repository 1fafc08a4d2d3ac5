"""Edits and deletes (docs/PROTOCOL.md, extension 3; docs/API.md): events of
the room's seq stream, delivered live across gateways, returned by sync in
order, applied to the stored message (history shows the current state, a
deleted text is gone from PostgreSQL), only the sender's (or the server
API's), a retried change applied once. Each test runs on whichever broker
the session uses (CHATD_TEST_KAFKA=real: Apache Kafka)."""
import json
import urllib.parse

from chatlib import arun, http_request, uid
from itconf import API_KEY


def rest_history(cluster, user, room):
    h = {"Authorization": f"Bearer {cluster.token(user)}"}
    st, _, body = http_request(cluster.gw_ports[0], "GET",
                               f"/api/rooms/{urllib.parse.quote(room)}/messages?after=0&limit=100",
                               headers=h)
    assert st == 200, body
    return json.loads(body)["messages"]


def stored_bodies(cluster, room):
    return [r[0] for r in cluster.pg.query("SELECT body FROM messages WHERE room = %s", (room,))]


def test_edit_delete_own_messages(cluster):
    room, amy, bob = uid("mod"), uid("amy"), uid("bob")

    async def body():
        a = await cluster.client(amy, gw=0)
        b = await cluster.client(bob, gw=1)
        await a.join(room)
        await b.join(room)
        m1 = await a.send(room, "hello", cid="m1")
        m2 = await a.send(room, "my secret-pin 4711", cid="m2")
        m3 = await b.send(room, "bob here", cid="m3")
        await b.wait_seqs(room, [1, 2, 3])
        # amy edits m1; the retry (same cid) is answered with the same id
        e = {"room": room, "id": m1["id"], "text": "hello, edited", "cid": "e1"}
        r1 = await a.ok("edit", **e)
        r2 = await a.ok("edit", **e)
        assert r1["op"] == "ack" and r1["target"] == m1["id"] and r2["id"] == r1["id"], (r1, r2)
        d = await a.ok("delete", room=room, id=m2["id"], cid="d1")
        assert d["op"] == "ack" and d["target"] == m2["id"], d
        # live, on the other gateway: the edit once (seq 4), then the delete (seq 5)
        ev = await b.wait_event(lambda x: x.get("op") == "edit", what="edit event")
        assert (ev["seq"], ev["target"], ev["text"], ev["from"]) == (4, m1["id"], "hello, edited", amy), ev
        dv = await b.wait_event(lambda x: x.get("op") == "delete", what="delete event")
        assert (dv["seq"], dv["target"], dv["from"]) == (5, m2["id"], amy) and "text" not in dv, dv
        # only the sender: bob may neither edit nor delete amy's message
        await b.expect_error({"op": "edit", "room": room, "id": m1["id"], "text": "pwned"}, "forbidden")
        await b.expect_error({"op": "delete", "room": room, "id": m1["id"]}, "forbidden")
        # an edit of a deleted message; a target of another room (after the wait for it)
        await a.expect_error({"op": "edit", "room": room, "id": m2["id"], "text": "x"}, "not_found")
        await a.expect_error({"op": "delete", "room": room, "id": "0" * 32}, "not_found")
        # a delete again: ack, nothing more in the room
        d2 = await a.ok("delete", room=room, id=m2["id"], cid="d1")
        assert d2["id"] == d["id"], d2
        # an edit then a delete of one message: none of its texts stays
        m6 = await a.send(room, "draft with token abc123", cid="m6")
        await a.ok("edit", room=room, id=m6["id"], text="token abc123 again", cid="e6")
        await a.ok("delete", room=room, id=m6["id"], cid="d6")
        await b.wait_event(lambda x: x.get("op") == "delete" and x.get("seq") == 8, what="delete of m6")
        # sync from an older seq: the changes it missed, in order
        later = (await b.sync(room, after=3))["messages"]
        assert [(x["op"], x["seq"]) for x in later] == \
            [("edit", 4), ("delete", 5), ("msg", 6), ("edit", 7), ("delete", 8)], later
        # history: each message as it is now; dense seqs, the retried edit not stored twice
        for hist in ((await b.sync(room, after=0))["messages"], rest_history(cluster, bob, room)):
            assert [x["seq"] for x in hist] == list(range(1, 9)), hist
            h1, h2, h3, h6 = hist[0], hist[1], hist[2], hist[5]
            assert (h1["op"], h1["text"], h1.get("edited")) == ("msg", "hello, edited", True), h1
            assert (h2["text"], h2.get("deleted")) == ("", True), h2
            assert h3["text"] == "bob here" and "edited" not in h3 and "deleted" not in h3, h3
            assert (h6["text"], h6.get("deleted")) == ("", True), h6
            assert hist[6]["op"] == "edit" and hist[6]["text"] == "", hist[6]
        await b.drain_events(0.3)
        assert len([x for x in b.history if x.get("op") == "edit" and x.get("seq") == 4]) == 1
        # gone from PostgreSQL, not hidden
        bodies = stored_bodies(cluster, room)
        assert len(bodies) == 8 and not [x for x in bodies if "4711" in x or "abc123" in x], bodies
        await a.close()
        await b.close()
    arun(body())


def api(cluster, method, path, body=None):
    st, _, data = http_request(cluster.api_ports[1], method, path, body=body,
                               headers={"Authorization": f"Bearer {API_KEY}"})
    return st, json.loads(data) if data else None


def test_api_edits_and_deletes_any_message(cluster):
    room, amy = uid("apimod"), uid("amy")

    async def body():
        a = await cluster.client(amy, gw=0)
        await a.join(room)
        m1 = await a.send(room, "rude words", cid="x1")
        m2 = await a.send(room, "more rude words", cid="x2")
        await a.wait_seqs(room, [1, 2])
        p = f"/v1/rooms/{room}/messages/{m1['id']}"
        st, r = api(cluster, "PATCH", p, {"text": "[removed by a moderator]", "idempotency_key": "k1"})
        assert st == 200 and r["kind"] == "edit" and r["target"] == m1["id"], r
        st, r2 = api(cluster, "PATCH", p, {"text": "[removed by a moderator]", "idempotency_key": "k1"})
        assert st == 200 and r2["id"] == r["id"], r2
        st, r = api(cluster, "DELETE", f"/v1/rooms/{room}/messages/{m2['id']}")
        assert st == 200 and r["kind"] == "delete", r
        ev = await a.wait_event(lambda x: x.get("op") == "edit", what="edit event")
        assert (ev["seq"], ev["from"], ev["target"]) == (3, "system", m1["id"]), ev
        dv = await a.wait_event(lambda x: x.get("op") == "delete", what="delete event")
        assert (dv["seq"], dv["from"]) == (4, "system"), dv
        # a deleted message: delete again is 200 and adds nothing, an edit 404
        st, _ = api(cluster, "DELETE", f"/v1/rooms/{room}/messages/{m2['id']}")
        assert st == 200
        st, r = api(cluster, "PATCH", f"/v1/rooms/{room}/messages/{m2['id']}", {"text": "x"})
        assert st == 404 and r["error"] == "not_found", r
        st, r = api(cluster, "PATCH", f"/v1/rooms/{room}/messages/{'0' * 32}", {"text": "x"})
        assert st == 404, r
        st, r = api(cluster, "PATCH", p, {"text": ""})
        assert st == 400 and r["error"] == "bad_request", r
        st, h = api(cluster, "GET", f"/v1/rooms/{room}/messages")
        assert [(x["op"], x["seq"]) for x in h["messages"]] == \
            [("msg", 1), ("msg", 2), ("edit", 3), ("delete", 4)], h
        assert h["messages"][0]["text"] == "[removed by a moderator]" and h["messages"][0]["edited"]
        assert "rude" not in "".join(stored_bodies(cluster, room))
        await a.close()
    arun(body())


def test_change_cid_shared_with_a_message_or_another_change(cluster):
    """A change whose cid the user gave a message, or a change of another
    message, is a change of its own (its id is derived from its kind and
    target too): before, it got that record's id and was acked, then dropped
    by the classifier as a duplicate (nothing stored, nothing changed). The
    server API's keys likewise: a publish, the edit of it and a delete of
    another message with one key."""
    room, amy = uid("modcid"), uid("amy")

    async def body():
        a = await cluster.client(amy, gw=0)
        await a.join(room)
        m1 = await a.send(room, "one", cid="c1")
        m2 = await a.send(room, "two", cid="c2")
        await a.ok("edit", room=room, id=m2["id"], text="two v2", cid="e")
        r1 = await a.ok("edit", room=room, id=m1["id"], text="one v2", cid="c1")
        r2 = await a.ok("edit", room=room, id=m1["id"], text="one v3", cid="e")
        assert r1["id"] != m1["id"] and r2["id"] != r1["id"], (m1, r1, r2)
        st, p = api(cluster, "POST", f"/v1/rooms/{room}/messages", {"text": "shipped", "idempotency_key": "k"})
        assert st == 201, p
        await a.wait_event(lambda x: x.get("seq") == 6, what="the publish at seq 6")
        st, r = api(cluster, "PATCH", f"/v1/rooms/{room}/messages/{p['id']}",
                    {"text": "delivered", "idempotency_key": "k"})
        assert st == 200 and r["id"] != p["id"], r
        st, d = api(cluster, "DELETE", f"/v1/rooms/{room}/messages/{m2['id']}", {"idempotency_key": "k"})
        assert st == 200 and d["id"] not in (p["id"], r["id"]), d
        await a.wait_event(lambda x: x.get("seq") == 8, what="the API's delete at seq 8")
        hist = (await a.sync(room, after=0))["messages"]
        assert [(x["op"], x["seq"]) for x in hist] == [("msg", 1), ("msg", 2), ("edit", 3), ("edit", 4),
                                                       ("edit", 5), ("msg", 6), ("edit", 7), ("delete", 8)], hist
        assert [hist[i]["text"] for i in (0, 1, 5)] == ["one v3", "", "delivered"], hist
        await a.close()
    arun(body())


def test_system_sender_is_reserved(cluster):
    """No client token may name the server API's sender: its messages
    (and edits and deletes) cannot be forged or changed by a client."""
    for sub, want in (("system", 401), (uid("sys"), 403)):
        h = {"Authorization": f"Bearer {cluster.token(sub)}"}
        st, _, body = http_request(cluster.gw_ports[0], "GET", f"/api/rooms/{uid('r')}/messages",
                                   headers=h)
        assert st == want, (sub, st, body)


def test_edit_waits_for_a_target_not_stored_yet(cluster):
    """An edit right after its message's ack, while the classifiers are held
    (the message is in Kafka, not in PostgreSQL): the gateway looks for the
    target again until it is stored, then produces the edit."""
    import asyncio
    import signal
    room, amy = uid("modwait"), uid("amy")

    async def body():
        a = await cluster.client(amy, gw=0)
        await a.join(room)
        cls = [cluster.proc(f"classifier{i}") for i in range(2)]
        for p in cls:
            p.send_signal(signal.SIGSTOP)
        try:
            m = await a.send(room, "typo", cid="w1")
            edit = asyncio.ensure_future(a.req("edit", room=room, id=m["id"], text="fixed", cid="w2"))
            await asyncio.sleep(0.5)
            assert not edit.done(), edit.result()
        finally:
            for p in cls:
                p.send_signal(signal.SIGCONT)
        r = await asyncio.wait_for(edit, 10)
        assert r["op"] == "ack" and r["target"] == m["id"], r
        ev = await a.wait_event(lambda x: x.get("op") == "edit", what="edit event")
        assert (ev["seq"], ev["text"]) == (2, "fixed"), ev
        await a.close()
    arun(body())


def test_old_month_message_found_and_edited_reading_no_older_month(cluster):
    """A message of an old month (a row put into March 2001 by hand) is
    found by the server API's GET and edited by its sender; the lookups by
    id read the months newest first and stop at the message's
    (migrations/012, issue 24): February 2001 is not read, by the GETs of
    the old message nor of a recent one (scans counted from
    pg_stat_user_tables). Before, each probed every month kept."""
    import time
    import uuid
    room, room2, amy = uid("modold"), uid("modnew"), uid("amy")
    ts_old = 983437200000          # 2001-03-01 09:00 UTC
    pg = cluster.pg

    def scans(part):
        return pg.query("SELECT COALESCE(idx_scan, 0) + seq_scan FROM pg_stat_user_tables "
                        "WHERE relname = %s", (part,))[0][0]

    async def body():
        a = await cluster.client(amy, gw=0)
        await a.join(room2)
        m2 = await a.send(room2, "recent", cid="n1")
        await a.wait_seqs(room2, [1])
        # the old months made after it: nothing chatd did for the recent
        # message (its sequencing reads every month) reads them
        for ts in (ts_old, ts_old - 20 * 86400000):
            pg.query("SELECT chatd_messages_partition(%s)", (ts,))
        old_id = uuid.uuid4().hex
        pg.query("INSERT INTO messages (room, seq, id, user_id, body, ts) "
                 "VALUES (%s, 1, %s, %s, 'old text', %s) RETURNING 1", (room, old_id, amy, ts_old))
        older0, old0 = scans("messages_p200102"), scans("messages_p200103")
        gets = [(room2, m2["id"], 1, None), (room, old_id, 1, ts_old)]
        for i, (r, mid, seq, ts) in enumerate(gets * 3):
            if i == 4:
                # a backend reports its counts when idle, at most once a
                # second (else 10 s later): these last two, after a pause
                time.sleep(1.1)
            st, m = api(cluster, "GET", f"/v1/rooms/{r}/messages/{mid}")
            assert st == 200 and m["seq"] == seq and m["from"] == amy, (mid, st, m)
            assert ts is None or m["ts"] == ts, m
        # the last GET's backend may hold its counts for the idle interval
        # (10 s) when it reported less than a second before: wait past it
        deadline = time.monotonic() + 12
        while scans("messages_p200103") < old0 + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        older, old = scans("messages_p200102"), scans("messages_p200103")
        assert old >= old0 + 3 and older == older0, (older0, older, old0, old)
        # the sender edits it: stored, and applied to the row in its month
        await a.join(room)
        r = await a.req("edit", room=room, id=old_id, text="old text, edited", cid="e1")
        assert r["op"] == "ack" and r["target"] == old_id, r
        ev = await a.wait_event(lambda x: x.get("op") == "edit", what="edit event")
        assert (ev["seq"], ev["target"]) == (2, old_id), ev
        h = rest_history(cluster, amy, room)
        assert (h[0]["seq"], h[0]["text"], h[0].get("edited")) == (1, "old text, edited", True), h
        await a.close()
    try:
        arun(body())
    finally:
        # the two months go (the message; its edit stays in this month)
        pg.query("DROP TABLE IF EXISTS messages_p200102, messages_p200103; SELECT 1")
