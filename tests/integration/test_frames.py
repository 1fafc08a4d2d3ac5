"""WebSocket framing rules: size limit (1009), binary (1003), invalid UTF-8
(1007), fragmentation and pings."""
import asyncio
import json

import pytest

from chatlib import RawWS, arun, uid


def test_frame_too_large_1009(cluster):
    async def body():
        a = await cluster.client(uid("big"), gw=0)
        room = uid("big")
        await a.join(room)
        await a.ws.send(json.dumps({"op": "send", "rid": 1, "room": room,
                                    "text": "x" * (70 * 1024)}))
        code = await a.wait_closed(10)
        assert code == 1009, f"close code {code}, reason {a.ws.close_reason!r}"
    arun(body())


def test_large_frame_under_limit_is_too_large_message(cluster):
    async def body():
        a = await cluster.client(uid("big"), gw=1)
        room = uid("big")
        await a.join(room)
        await a.expect_error({"op": "send", "room": room, "text": "y" * 60000}, "too_large")
        assert not a.closed.is_set()
        await a.send(room, "still open")
        await a.close()
    arun(body())


def test_binary_frame_1003(cluster):
    async def body():
        a = await cluster.client(uid("bin"), gw=0)
        await a.ws.send(b'{"op":"rooms","rid":1}')
        code = await a.wait_closed(10)
        assert code == 1003, f"close code {code}, reason {a.ws.close_reason!r}"
    arun(body())


@pytest.mark.parametrize("payload", [
    b"\xff\xfe",
    b'{"op":"rooms","rid":1,"x":"\xc3\x28"}',
    b'{"op":"rooms","rid":1,"x":"\xed\xa0\x80"}',   # UTF-16 surrogate
    b'{"op":"rooms","rid":1,"x":"\xc0\xaf"}',       # overlong
], ids=["ff", "bad-2byte", "surrogate", "overlong"])
def test_invalid_utf8_1007(cluster, payload):
    ws = RawWS(cluster.gw_ports[1], cluster.token(uid("utf")))
    try:
        op, data = ws.read_frame()
        assert op == 0x1 and json.loads(data)["op"] == "hello", (op, data)
        ws.send_frame(0x1, payload)
        code = ws.read_close_code()
        assert code == 1007, f"close code {code} for {payload!r}"
    finally:
        ws.close()


def test_fragmented_text_message(cluster):
    ws = RawWS(cluster.gw_ports[0], cluster.token(uid("frag")))
    try:
        op, data = ws.read_frame()
        assert json.loads(data)["op"] == "hello"
        msg = json.dumps({"op": "rooms", "rid": 42}).encode()
        ws.send_frame(0x1, msg[:7], fin=False)
        ws.send_frame(0x0, msg[7:12], fin=False)
        ws.send_frame(0x9, b"ping-in-between")  # control frames may interleave
        ws.send_frame(0x0, msg[12:], fin=True)
        got_pong = False
        for _ in range(10):
            op, data = ws.read_frame()
            if op == 0xA:
                assert data == b"ping-in-between"
                got_pong = True
                continue
            if op == 0x1:
                r = json.loads(data)
                assert r == {"op": "rooms", "rid": 42, "rooms": []}, r
                break
        else:
            raise AssertionError("no reply to fragmented message")
        if not got_pong:
            op, data = ws.read_frame()
            assert op == 0xA and data == b"ping-in-between", (op, data)
        ws.send_frame(0x8, b"\x03\xe8")
        assert ws.read_close_code() == 1000
    finally:
        ws.close()


def test_client_ping(cluster):
    async def body():
        a = await cluster.client(uid("ping"), gw=1)
        waiter = await a.ws.ping(b"hi")
        await asyncio.wait_for(waiter, 5)
        await a.close()
    arun(body())
