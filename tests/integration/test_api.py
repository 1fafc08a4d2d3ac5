"""The server API (roles/api.h, docs/API.md, docs/api.yaml) on the cluster's
two gateways: keys and rotation, publish with an idempotency key, rooms,
members, private rooms in the client protocol, disconnect and ban on every
gateway."""
import json
import time
import urllib.parse

from chatlib import arun, http_request, uid
from itconf import API_KEY, API_KEY_PREVIOUS

# Member changes and disconnects reach every gateway within a second; the
# margin is for a loaded CI machine.
WITHIN = 5.0


def api(cluster, method, path, body=None, gw=0, key=API_KEY, headers=None):
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    st, hdrs, data = http_request(cluster.api_ports[gw], method, path, body=body, headers=h)
    obj = json.loads(data) if data else None
    return st, hdrs, obj


def q(s):
    return urllib.parse.quote(s, safe="")


def test_api_key_required(cluster):
    for key in (None, "", "wrong-key-of-some-length", API_KEY + "x", API_KEY[:-1]):
        st, hdrs, body = api(cluster, "GET", "/v1/users/someone/rooms", key=key)
        assert st == 401, (key, st, body)
        assert body["error"] == "unauthorized" and hdrs.get("www-authenticate") == "Bearer"
    # Basic instead of Bearer
    st, _, body = api(cluster, "GET", "/v1/users/someone/rooms", key=None,
                      headers={"Authorization": "Basic " + API_KEY})
    assert st == 401
    # The key is never logged, neither a right nor a wrong one.
    logs = "".join(open(p.logpath, errors="replace").read() for p, _ in cluster.procs)
    assert API_KEY not in logs and API_KEY_PREVIOUS not in logs
    assert "wrong-key-of-some-length" not in logs


def test_api_key_rotation(cluster):
    """The current and the previous key both work, on both gateways."""
    for gw in (0, 1):
        for key in (API_KEY, API_KEY_PREVIOUS):
            st, _, body = api(cluster, "GET", "/v1/users/nobody/rooms", gw=gw, key=key)
            assert st == 200 and body == {"user": "nobody", "rooms": []}, (gw, key, st, body)


def test_api_not_on_the_client_port(cluster):
    st, _, _ = http_request(cluster.gw_ports[0], "GET", "/v1/users/x/rooms",
                            headers={"Authorization": f"Bearer {API_KEY}"})
    assert st == 404


def test_publish_idempotent_and_seq(cluster):
    room, user = uid("apipub"), uid("u")

    async def body():
        c = await cluster.client(user, gw=1)
        await c.join(room)
        # a retry with the same key: one id, stored once
        req = {"text": "order #42 shipped", "from": "shop-bot", "idempotency_key": "order-42"}
        st, _, r1 = api(cluster, "POST", f"/v1/rooms/{room}/messages", req)
        assert st == 201, r1
        st, _, r2 = api(cluster, "POST", f"/v1/rooms/{room}/messages", req, gw=1)
        assert st == 201 and r2["id"] == r1["id"], (r1, r2)
        assert r1["from"] == "shop-bot" and r1["idempotency_key"] == "order-42"
        # a system message (no from)
        st, _, r3 = api(cluster, "POST", f"/v1/rooms/{room}/messages", {"text": "maintenance at 5"})
        assert st == 201 and r3["from"] == "system" and r3["id"] != r1["id"], r3
        await c.wait_seqs(room, [1, 2])
        await c.drain_events(0.5)
        msgs = c.msgs(room)
        assert [m["text"] for m in msgs] == ["order #42 shipped", "maintenance at 5"], msgs
        assert msgs[0]["from"] == "shop-bot" and msgs[0]["id"] == r1["id"]
        # its seq, by id
        deadline = time.monotonic() + WITHIN
        while True:
            st, _, m = api(cluster, "GET", f"/v1/rooms/{room}/messages/{r1['id']}")
            if st == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st == 200 and m["seq"] == 1 and m["from"] == "shop-bot", m
        # the retry stored nothing: history has exactly two messages
        st, _, h = api(cluster, "GET", f"/v1/rooms/{room}/messages?after=0&limit=10")
        assert st == 200 and [x["seq"] for x in h["messages"]] == [1, 2] and h["more"] is False, h
        assert cluster.pg.query("SELECT count(*) FROM messages WHERE room = %s",
                                (room,))[0][0] == 2
        await c.close()
    arun(body())


def test_publish_bad_input(cluster):
    room = uid("apibad")
    st, _, _ = api(cluster, "PUT", f"/v1/rooms/{room}", {})
    assert st == 201
    cases = [
        ("POST", f"/v1/rooms/{room}/messages", b"not json", 400, "bad_request"),
        ("POST", f"/v1/rooms/{room}/messages", {"text": ""}, 400, "bad_request"),
        ("POST", f"/v1/rooms/{room}/messages", {"text": 5}, 400, "bad_request"),
        ("POST", f"/v1/rooms/{room}/messages", {"text": "x", "from": "a b"}, 400, "bad_request"),
        ("POST", f"/v1/rooms/{room}/messages", {"text": "x", "idempotency_key": "k" * 65}, 400, "bad_request"),
        ("POST", f"/v1/rooms/{room}/messages", {"text": "x" * 70000}, 413, "too_large"),
        ("POST", f"/v1/rooms/{uid('nosuch')}/messages", {"text": "x"}, 404, "room_not_found"),
        ("POST", "/v1/rooms/bad%20room/messages", {"text": "x"}, 400, "bad_request"),
        ("POST", "/v1/rooms/dm:b:a/messages", {"text": "x"}, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/messages/xyz", None, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/messages/{'0' * 32}", None, 404, "not_found"),
        ("GET", f"/v1/rooms/{room}/messages?limit=0", None, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/messages?after=-1", None, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/messages?after=" + "9" * 40, None, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/members?after=" + "a" * 65, None, 400, "bad_request"),
        ("PATCH", f"/v1/rooms/{room}", {}, 405, "method_not_allowed"),
        ("GET", "/v1/nothing/here/at/all", None, 404, "not_found"),
        ("GET", "/v2/rooms/x", None, 404, "not_found"),
        ("PUT", f"/v1/rooms/{room}", {"private": "yes"}, 400, "bad_request"),
        ("PUT", f"/v1/rooms/{room}", {"name": "n" * 201}, 400, "bad_request"),
        ("PUT", f"/v1/rooms/{room}", [], 400, "bad_request"),
        ("PUT", "/v1/rooms/dm:a:b", {}, 400, "bad_request"),
        ("PUT", f"/v1/rooms/{room}/members/bad%2Fuser", None, 400, "bad_request"),
        ("POST", "/v1/users/u1/disconnect", {"ban_until": -5}, 400, "bad_request"),
        ("POST", "/v1/users/u1/disconnect", {"ban_until": 1.5}, 400, "bad_request"),
        ("GET", f"/v1/rooms/{room}/members?limit=1001", None, 400, "bad_request"),
    ]
    for method, path, body, want, code in cases:
        st, hdrs, r = api(cluster, method, path, body)
        assert (st, r and r.get("error")) == (want, code), (method, path, st, r)
        assert hdrs["content-type"] == "application/json"
    # text with invalid UTF-8 never reaches Kafka (PostgreSQL would refuse it)
    st, _, r = api(cluster, "POST", f"/v1/rooms/{room}/messages",
                   b'{"text":"\xff\xfe"}', headers={"Content-Type": "application/json"})
    assert st == 400, r


def test_rooms_and_members(cluster):
    room, owner, u1, u2 = uid("apiroom"), uid("own"), uid("m1"), uid("m2")
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True, "name": "Team ✓", "owner": owner})
    assert st == 201 and r == {"room": room, "private": True, "name": "Team ✓", "owner": owner,
                               "archived": False, "retention_seconds": None}, r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True})
    assert st == 200 and r["name"] == "Team ✓", r  # an update keeps the name
    for u in (u1, u2):
        st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}/members/{u}")
        assert st == 200 and r == {"room": room, "user": u, "added": True}, r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}/members/{u1}", gw=1)
    assert st == 200 and r["added"] is False
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}/members")
    assert st == 200 and r == {"room": room, "members": sorted([owner, u1, u2]), "more": False}, r
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}/members?limit=1")
    assert r["members"] == sorted([owner, u1, u2])[:1] and r["more"] is True
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}/members?limit=2&after={q(r['members'][0])}")
    assert r["members"] == sorted([owner, u1, u2])[1:] and r["more"] is False, r
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}")
    assert st == 200 and r["members"] == 3 and r["private"] is True
    st, _, r = api(cluster, "GET", f"/v1/users/{u1}/rooms")
    assert st == 200 and [x["room"] for x in r["rooms"]] == [room], r
    st, _, r = api(cluster, "DELETE", f"/v1/rooms/{room}/members/{u2}")
    assert st == 200 and r["removed"] is True
    st, _, r = api(cluster, "DELETE", f"/v1/rooms/{room}/members/{u2}")
    assert st == 200 and r["removed"] is False
    st, _, r = api(cluster, "GET", f"/v1/rooms/{uid('none')}/members")
    assert st == 404 and r["error"] == "room_not_found"
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{uid('none')}/members/{u1}")
    assert st == 404 and r["error"] == "room_not_found"
    # archive: members gone, no publish, no member add; history stays
    st, _, r = api(cluster, "DELETE", f"/v1/rooms/{room}")
    assert st == 200 and r == {"room": room, "archived": True, "removed": 2}, r
    st, _, r = api(cluster, "POST", f"/v1/rooms/{room}/messages", {"text": "x"})
    assert st == 409 and r["error"] == "archived"
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}/members/{u1}")
    assert st == 409 and r["error"] == "archived"
    st, _, r = api(cluster, "DELETE", f"/v1/rooms/{uid('none')}")
    assert st == 404


def test_room_retention_set_kept_cleared_and_bad_values(cluster):
    """A room's own retention (migrations/008; enforced by the classifiers'
    upkeep: tests/faults test_room_retention_deletes_that_rooms_old_messages):
    set on create, kept by an update without it (or with null), cleared by
    0; anything but an integer 0..3155760000 is a 400 and changes nothing."""
    room = uid("apiret")

    def stored():
        return cluster.pg.query("SELECT retention_s FROM rooms WHERE room = %s", (room,))[0][0]
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"retention_seconds": 7 * 86400})
    assert st == 201 and r["retention_seconds"] == 7 * 86400, r
    for body in ({"name": "kept"}, {"retention_seconds": None}, None):
        st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", body, gw=1)
        assert st == 200 and r["retention_seconds"] == 7 * 86400, (body, r)
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}")
    assert st == 200 and r["retention_seconds"] == 7 * 86400 and r["name"] == "kept", r
    for bad in (-1, 1.5, "30d", True, [], {}, 3155760001, 1e300, -1e300):
        st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"retention_seconds": bad})
        assert st == 400 and r["error"] == "bad_request", (bad, st, r)
        assert "retention_seconds" in r["message"], r
    assert stored() == 7 * 86400
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"retention_seconds": 3155760000})
    assert st == 200 and r["retention_seconds"] == 3155760000, r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"retention_seconds": 0})
    assert st == 200 and r["retention_seconds"] is None, r
    assert stored() is None


def test_put_without_private_keeps_the_room_private(cluster):
    """A PUT that only renames (or sets the retention of) a private room
    keeps it private: `private` absent keeps the room's, as `name` and
    `owner` do (it used to reset it to false and open the room)."""
    room, owner, outsider = uid("privkeep"), uid("own"), uid("out")
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True, "owner": owner})
    assert st == 201 and r["private"] is True, r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"name": "renamed"})
    assert st == 200 and r["private"] is True and r["name"] == "renamed", r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"retention_seconds": 86400})
    assert st == 200 and r["private"] is True, r
    st, _, r = api(cluster, "GET", f"/v1/rooms/{room}")
    assert st == 200 and r["private"] is True, r

    async def body():
        x = await cluster.client(outsider, gw=1)
        await x.expect_error({"op": "join", "room": room}, "forbidden")
        await x.close()
    arun(body())
    # an explicit false still opens it, and a new room without it is open
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": False})
    assert st == 200 and r["private"] is False, r
    st, _, r = api(cluster, "PUT", f"/v1/rooms/{uid('open')}", {"name": "x"})
    assert st == 201 and r["private"] is False, r


def test_private_room_forbidden_and_member_removal_on_other_gateway(cluster):
    """A private room refuses a join (forbidden) of a non-member; a member
    added by the API joins; removed by the API through gateway 0, its
    connection on gateway 1 stops receiving the room."""
    room, owner, outsider, member = uid("priv"), uid("own"), uid("out"), uid("mem")
    st, _, _ = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True, "owner": owner})
    assert st == 201

    async def body():
        o = await cluster.client(owner, gw=0)
        x = await cluster.client(outsider, gw=0)
        await x.expect_error({"op": "join", "room": room}, "forbidden")
        # an open room still takes anyone
        await x.join(uid("open"))
        st, _, _ = api(cluster, "PUT", f"/v1/rooms/{room}/members/{member}")
        assert st == 200
        m = await cluster.client(member, gw=1)
        await m.join(room)
        await o.send(room, "one")
        await m.wait_seqs(room, [1])
        # the owner's connection (open since before) sees the room's messages
        await o.wait_seqs(room, [1])
        st, _, r = api(cluster, "DELETE", f"/v1/rooms/{room}/members/{member}", gw=0)
        assert st == 200 and r["removed"] is True
        await m.wait_event(lambda e: e.get("op") == "left" and e.get("room") == room
                           and e.get("user") == member, timeout=WITHIN, what="left")
        t0 = time.monotonic()
        await o.send(room, "two")
        await o.wait_seqs(room, [2])
        await m.drain_events(1.0)
        assert m.seqs(room) == {1}, m.msgs(room)
        assert time.monotonic() - t0 < 30
        # and cannot join again
        await m.expect_error({"op": "join", "room": room}, "forbidden")
        await x.expect_error({"op": "sync", "room": room, "after": 0}, "not_member")
        for c in (o, x, m):
            await c.close()
    arun(body())


def test_removed_member_gets_nothing_sent_after_the_removal(cluster):
    """Messages the owner sends right after the removal's 200: its `left`
    comes first in the room's log, and the member's gateway holds the room
    from it until PostgreSQL confirms (before, it delivered on while its
    check was in flight: every run leaked the next message)."""
    room, owner, member = uid("privrm"), uid("own"), uid("mem")
    assert api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True, "owner": owner})[0] == 201
    assert api(cluster, "PUT", f"/v1/rooms/{room}/members/{member}")[0] == 200

    async def body():
        o = await cluster.client(owner, gw=0)
        m = await cluster.client(member, gw=1)
        await m.join(room)
        await o.send(room, "one")
        await m.wait_seqs(room, [1])
        st, _, r = api(cluster, "DELETE", f"/v1/rooms/{room}/members/{member}", gw=0)
        assert st == 200 and r["removed"] is True, r
        for i in range(3):
            await o.send(room, f"after the removal {i}")
        await o.wait_seqs(room, [1, 2, 3, 4])
        # Its `left` comes from the record, or, when a membership check in
        # flight from its join answered after the removal and removed it
        # first, from that check (seen in CI before the gateway said so).
        await m.wait_event(lambda e: e.get("op") == "left" and e.get("user") == member, what="left")
        await m.drain_events(0.5)
        assert m.seqs(room) == {1}, m.msgs(room)
        await o.close()
        await m.close()
    arun(body())


def test_disconnect_everywhere_and_ban(cluster):
    user, other = uid("kick"), uid("stay")

    async def body():
        a = await cluster.client(user, gw=0)
        b = await cluster.client(user, gw=1)
        s = await cluster.client(other, gw=1)
        t0 = time.monotonic()
        st, _, r = api(cluster, "POST", f"/v1/users/{user}/disconnect")
        assert st == 200 and r == {"user": user, "disconnected": True}, r
        assert await a.wait_closed(WITHIN) == 1008
        assert await b.wait_closed(WITHIN) == 1008
        took = time.monotonic() - t0
        assert not s.closed.is_set()  # another user stays
        # no ban: the user may come back at once
        c = await cluster.client(user, gw=0)
        # with a ban: refused on every gateway until then
        until = int(time.time()) + 3600
        st, _, r = api(cluster, "POST", f"/v1/users/{user}/disconnect", {"ban_until": until}, gw=1)
        assert st == 200 and r["banned_until"] == until, r
        assert await c.wait_closed(WITHIN) == 1008
        for gw in (0, 1):
            st, _, body = http_request(cluster.gw_ports[gw], "GET", "/ws",
                                       headers={"Authorization": f"Bearer {cluster.token(user)}",
                                                "Connection": "Upgrade", "Upgrade": "websocket",
                                                "Sec-WebSocket-Version": "13",
                                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            assert st == 403 and json.loads(body)["error"] == "banned", (gw, st, body)
        # lifted (a time in the past): back in
        st, _, _ = api(cluster, "POST", f"/v1/users/{user}/disconnect", {"ban_until": 0})
        assert st == 200
        d = await cluster.client(user, gw=1)
        for x in (d, s):
            await x.close()
        return took
    took = arun(body())
    print(f"disconnect reached both gateways in {took:.3f} s")


def test_ban_refuses_rest_history(cluster):
    """A banned user's token is refused by REST history too (before: only
    the upgrade was, and a banned member went on reading the room)."""
    user, room = uid("banrest"), uid("banroom")

    async def body():
        a = await cluster.client(user, gw=0)
        await a.join(room)
        await a.close()
    arun(body())
    path = f"/api/rooms/{room}/messages"
    h = {"Authorization": f"Bearer {cluster.token(user)}"}
    assert http_request(cluster.gw_ports[1], "GET", path, headers=h)[0] == 200
    until = int(time.time()) + 3600
    assert api(cluster, "POST", f"/v1/users/{user}/disconnect", {"ban_until": until})[0] == 200
    for gw in (0, 1):
        st, _, body = http_request(cluster.gw_ports[gw], "GET", path, headers=h)
        assert st == 403 and json.loads(body)["error"] == "banned", (gw, st, body)
    assert api(cluster, "POST", f"/v1/users/{user}/disconnect", {"ban_until": 0})[0] == 200
    assert http_request(cluster.gw_ports[0], "GET", path, headers=h)[0] == 200


def test_ban_during_a_handshake(cluster):
    """A ban made while the user's upgrade loads its rooms (members locked):
    the ban check was passed, the disconnect found no connection (before,
    the connection then opened and stayed); now it is closed with 1008."""
    import asyncio
    user, room = uid("banhs"), uid("banhsr")

    async def body():
        a = await cluster.client(user, gw=0)
        await a.join(room)
        await a.close()
        conn = cluster.pg.connect()
        conn.autocommit = False
        try:
            conn.cursor().execute("LOCK TABLE members IN ACCESS EXCLUSIVE MODE")
            t = asyncio.ensure_future(cluster.client(user, gw=0))
            await asyncio.sleep(0.4)
            assert not t.done(), "the upgrade did not wait for the rooms"
            st, _, r = api(cluster, "POST", f"/v1/users/{user}/disconnect",
                           {"ban_until": int(time.time()) + 3600}, gw=1)
            assert st == 200, r
            await asyncio.sleep(1.0)  # the disconnect is delivered meanwhile
        finally:
            conn.rollback()
            conn.close()
        c = await asyncio.wait_for(t, 10)
        try:
            code = await c.wait_closed(5)
        except asyncio.TimeoutError:
            code = None
        assert code == 1008, "the connection stayed open 5 s after the ban"
    arun(body())


def test_owner_adds_and_removes_members_by_client_op(cluster):
    """The owner of a private room adds and removes members with the client
    ops add/remove (protocol extension 2); anyone else is forbidden."""
    room, owner, guest, other = uid("ownr"), uid("own"), uid("g"), uid("x")
    st, _, _ = api(cluster, "PUT", f"/v1/rooms/{room}", {"private": True, "owner": owner})
    assert st == 201

    async def body():
        o = await cluster.client(owner, gw=0)
        g = await cluster.client(guest, gw=1)
        x = await cluster.client(other, gw=1)
        await g.expect_error({"op": "join", "room": room}, "forbidden")
        await x.expect_error({"op": "add", "room": room, "user": other}, "forbidden")
        await o.expect_error({"op": "add", "room": room, "user": "not valid"}, "bad_request")
        r = await o.ok("add", room=room, user=guest)
        assert r == {"op": "ok", "rid": r["rid"], "room": room}, r
        # the guest's open connection on the other gateway gets the room
        await g.wait_event(lambda e: e.get("op") == "joined" and e.get("room") == room
                           and e.get("user") == guest, timeout=WITHIN, what="joined")
        await o.send(room, "welcome")
        await g.wait_seqs(room, [1])
        await x.expect_error({"op": "remove", "room": room, "user": guest}, "forbidden")
        await o.ok("remove", room=room, user=guest)
        await g.wait_event(lambda e: e.get("op") == "left" and e.get("user") == guest,
                           timeout=WITHIN, what="left")
        await o.send(room, "after")
        await o.wait_seqs(room, [2])
        await g.drain_events(1.0)
        assert g.seqs(room) == {1}
        for c in (o, g, x):
            await c.close()
    arun(body())


def test_publish_refuses_nul_in_strings(cluster):
    """cJSON would cut "a\\u0000b" to "a": refused, not stored cut."""
    room = uid("apinul")
    assert api(cluster, "PUT", f"/v1/rooms/{room}", {})[0] == 201
    for raw in (b'{"text":"a\\u0000b"}', b'{"text":"a\\u00g0b"}', b'{"text":"a\x00b"}'):
        st, _, r = api(cluster, "POST", f"/v1/rooms/{room}/messages", raw,
                       headers={"Content-Type": "application/json"})
        assert st == 400 and r["error"] == "bad_request", (raw, st, r)
