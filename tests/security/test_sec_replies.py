"""Replies bounded by --send-queue (issue 16, finding 2): a room of messages
made of control characters (each escaped to six bytes) made one `sync` page
about 24 MB, queued whole however small --send-queue was. Every reply is
now paged within half the bound (more=true), and the whole history is still
reachable page by page, through `sync` and REST alike."""
import json

import chatlib
import seclib
from chatlib import Client, uid
from secconf import LIMITS, token

N_MSGS = 6


async def _fill(port, room, user):
    c = await Client.connect(port, token(user))
    try:
        await c.join(room)
        text = "\x01" * LIMITS["max_text"]   # 4 KiB, 24 KiB escaped
        for i in range(N_MSGS):
            await c.send(room, text[:-1] + chr(0x41 + i))
    finally:
        await c.close()


def test_sync_page_within_send_queue(sec):
    room, user = uid("ctl"), uid("ctl")
    seclib.arun(_fill(sec.gw_ports[0], room, user))
    bound = LIMITS["send_queue"]

    # A raw client with a small receive buffer asks for everything at once.
    w = seclib.WS(sec.gw_ports[0], token(user), rcvbuf=4096)
    try:
        w.read_until({0x1})  # hello
        got, after, pages = [], 0, 0
        while True:
            req = {"op": "sync", "rid": pages + 1, "room": room, "after": after, "limit": 1000}
            w.send(seclib.frame(0x1, json.dumps(req).encode()))
            while True:  # live deliveries of the messages may still arrive
                _, data = w.read_until({0x1})
                assert len(data) <= bound, f"a frame of {len(data)} bytes (--send-queue {bound})"
                page = json.loads(data)
                if page.get("op") != "msg":
                    break
            assert page.get("op") == "history" and page.get("rid") == pages + 1, page
            pages += 1
            got.extend(page["messages"])
            if not page["more"]:
                break
            assert page["messages"], "more=true with an empty page"
            after = page["messages"][-1]["seq"]
            assert pages <= N_MSGS, "more pages than messages"
        assert len(got) == N_MSGS and pages > 1, (len(got), pages)
        assert [m["text"][-1] for m in got] == [chr(0x41 + i) for i in range(N_MSGS)]
    finally:
        w.close()

    # REST: the same page limit, the same messages.
    auth = {"Authorization": f"Bearer {token(user)}"}
    got, after = [], 0
    while True:
        st, _, body = chatlib.http_request(
            sec.gw_ports[1], "GET", f"/api/rooms/{room}/messages?after={after}&limit=1000",
            headers=auth)
        assert st == 200, (st, body[:200])
        assert len(body) <= bound, f"a REST page of {len(body)} bytes (bound {bound})"
        page = json.loads(body)
        got.extend(page["messages"])
        if not page["more"]:
            break
        after = page["messages"][-1]["seq"]
    assert len(got) == N_MSGS


def test_rooms_reply_over_budget_refused(sec):
    """Memberships from before --max-rooms-per-user (written here straight
    into PostgreSQL: 400 rooms with 120-character names, ~75 KB of `rooms`
    reply against --send-queue 64 KiB) make a `rooms` reply larger than the
    bound: it is refused with too_large, not queued whole; the connection
    and its other requests go on."""
    user = uid("legacy")
    rooms = [f"{uid('legacy')}-{i:04d}-".ljust(120, "x") for i in range(400)]
    sec.query("INSERT INTO rooms (room) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING 1", (rooms,))
    sec.query("INSERT INTO members (room, user_id) SELECT unnest(%s::text[]), %s "
              "ON CONFLICT DO NOTHING RETURNING 1", (rooms, user))

    async def run():
        c = await Client.connect(sec.gw_ports[1], token(user))
        try:
            r = await c.req("rooms")
            assert r.get("op") == "error" and r.get("code") == "too_large", str(r)[:300]
            page = await c.sync(rooms[0])
            assert page["messages"] == []
        finally:
            await c.close()

    seclib.arun(run())


def test_presence_reply_within_budget(sec):
    """A room with more members online than one reply can list (1000 live
    route entries of 60-character users, added straight into Redis: ~62 KB)
    answers `presence` within half of --send-queue, marked truncated."""
    import redis as redislib
    user, room = uid("pres"), uid("presroom")

    async def run():
        c = await Client.connect(sec.gw_ports[0], token(user))
        try:
            await c.join(room)
            r = redislib.Redis(host="127.0.0.1", port=sec.c.redis.port, socket_timeout=5)
            key = f"{{room:{room}}}:on"
            mine = [m.decode() for m in r.smembers(key)]
            assert mine, f"no route entry under {key}"
            where = mine[0].split("@", 1)[1]   # "0:<epoch>": gateway 0, live
            r.sadd(key, *[f"{uid('p').ljust(58, 'p')}{i:04d}@{where}" for i in range(1000)])
            rep = await c.req("presence", room=room)
            assert rep.get("op") == "presence", str(rep)[:200]
            size = len(json.dumps(rep, separators=(",", ":")))
            assert size <= LIMITS["send_queue"] // 2, size
            assert rep.get("truncated") is True and 0 < len(rep["online"]) < 1001, len(rep["online"])
        finally:
            await c.close()

    seclib.arun(run())
