"""rate_limited on a --role=all instance with --rate=2 --rate-burst=3, and
/api/dev/token without --dev-tokens (404)."""
import asyncio

import pytest

from chatlib import arun, http_request, uid


@pytest.fixture(scope="module")
def slow(start_all_instance):
    return start_all_instance("ratelimited", ["--rate=2", "--rate-burst=3"])


def test_rate_limited(slow):
    async def body():
        a = await slow.client(uid("rl"))
        objs = [{"op": "rooms", "rid": a.next_rid()} for _ in range(8)]
        futs = [a.issue(o) for o in objs]
        for o in objs:
            await a.send_obj(o)
        replies = await asyncio.wait_for(asyncio.gather(*futs), 10)
        ok = [r for r in replies if r.get("op") == "rooms"]
        limited = [r for r in replies if r.get("op") == "error"]
        assert all(r.get("code") == "rate_limited" for r in limited), replies
        assert 3 <= len(ok) <= 4 and len(limited) >= 4, replies
        assert [r["op"] for r in replies[:3]] == ["rooms"] * 3, replies
        for o, r in zip(objs, replies):
            assert r["rid"] == o["rid"]
        assert not a.closed.is_set()
        await asyncio.sleep(1.2)  # refill at 2/s
        r = await a.req("rooms")
        assert r.get("op") == "rooms", r
        await a.close()
    arun(body())


def test_dev_token_disabled_404(slow):
    st, _, body = http_request(slow.port, "POST", "/api/dev/token", body={"user": uid("x")})
    assert st == 404, (st, body)
