"""Rooms per user (issue 16, finding 3): nothing capped how many rooms one
user joined (30,000 made every upgrade of that user issue 150,000 Redis
commands and a 1 MB `rooms` reply). --max-rooms-per-user (50 here) now
refuses a join beyond it with `forbidden`, on every path that adds a
member: a join, and the first join of a dm, which adds its peer."""
import asyncio

from chatlib import Client, uid
from secconf import LIMITS, token

import seclib

CAP = LIMITS["max_rooms_per_user"]


async def _join_many(c, rooms):
    for i, room in enumerate(rooms):
        await c.join(room)
        await asyncio.sleep(1.2 / LIMITS["rate"])


def test_rooms_per_user_cap(sec):
    user, other = uid("hoarder"), uid("dmfrom")
    dm = "dm:" + ":".join(sorted([user, other]))

    async def run():
        c = await Client.connect(sec.gw_ports[0], token(user))
        try:
            await _join_many(c, [uid(f"cap{i}") for i in range(CAP)])
            # One more room: refused, and neither the room nor the membership is stored.
            extra = uid("over")
            await c.expect_error({"op": "join", "room": extra}, "forbidden")
            assert not sec.query("SELECT 1 FROM rooms WHERE room = %s", (extra,))
            # Joining a room it is already in stays fine at the cap.
            r = await c.req("rooms")
            assert r.get("op") == "rooms" and len(r["rooms"]) == CAP, r
            await c.join(r["rooms"][0]["room"])
            # A dm to this user does not add it past its cap either.
            d = await Client.connect(sec.gw_ports[1], token(other))
            try:
                await d.join(dm)
                await d.send(dm, "hello over the cap")
            finally:
                await d.close()
            await asyncio.sleep(0.5)
            n = sec.query("SELECT count(*) FROM members WHERE user_id = %s", (user,))[0][0]
            assert n == CAP, f"{user} is in {n} rooms (cap {CAP})"
            assert not sec.query("SELECT 1 FROM members WHERE room = %s AND user_id = %s", (dm, user))
            # After leaving one room, a join works again (the dm too).
            await c.ok("leave", room=r["rooms"][1]["room"])
            await c.join(dm)
        finally:
            await c.close()

    seclib.arun(run(), timeout=180)
