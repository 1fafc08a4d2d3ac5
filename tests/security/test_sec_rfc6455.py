"""RFC 6455, section by section, against a running gateway.

No WebSocket conformance suite could be installed here: Autobahn|Testsuite
is a Python 2 program on PyPI (unreachable from these machines), Debian has
only the Autobahn *library*, and npm has no maintained RFC 6455 fuzzing
client (checked: the `websocket` and `ws` packages are implementations, not
conformance suites). So this table follows the RFC instead; each row names
its section, sends raw frames and checks the server's answer: a close code
(then TCP closed), an echo, or a message served normally.
"""
import json
import struct

import pytest

import seclib
from chatlib import uid
from secconf import LIMITS, token

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
F = seclib.frame


def rooms_req(rid=1):
    return json.dumps({"op": "rooms", "rid": rid}).encode()


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def long_form(opcode, payload, ext):
    """A masked frame whose length uses the 16-bit (ext=126) or 64-bit
    (ext=127) form even where a shorter one fits (RFC 6455 5.2: the minimal
    number of bytes MUST be used)."""
    import os
    key = os.urandom(4)
    n = len(payload)
    ln = struct.pack("!H", n) if ext == 126 else struct.pack("!Q", n)
    return (bytes([0x80 | opcode, 0x80 | ext]) + ln + key +
            bytes(b ^ key[i % 4] for i, b in enumerate(payload)))


# (section, label, frames to send, expected close code)
PROTOCOL_ERRORS = [
    ("5.1", "unmasked client frame", [F(TEXT, rooms_req(), mask=False)], 1002),
    ("5.1", "unmasked close frame", [F(CLOSE, close_payload(1000), mask=False)], 1002),
    ("5.2", "RSV1 set, no extension", [F(TEXT, rooms_req(), rsv=4)], 1002),
    ("5.2", "RSV2 set", [F(TEXT, rooms_req(), rsv=2)], 1002),
    ("5.2", "RSV3 set", [F(TEXT, rooms_req(), rsv=1)], 1002),
    ("5.2", "reserved data opcode 0x3", [F(0x3, b"x")], 1002),
    ("5.2", "reserved data opcode 0x7", [F(0x7, b"x")], 1002),
    ("5.2", "reserved control opcode 0xB", [F(0xB, b"")], 1002),
    ("5.2", "reserved control opcode 0xF", [F(0xF, b"")], 1002),
    ("5.4", "continuation without a start", [F(CONT, b"x")], 1002),
    ("5.4", "new text frame inside a fragmented message",
     [F(TEXT, b'{"op":', fin=False), F(TEXT, b'"rooms"}')], 1002),
    ("5.5", "control frame payload of 126 bytes", [F(PING, b"p" * 126)], 1002),
    ("5.5", "fragmented control frame (ping, FIN=0)", [F(PING, b"p", fin=False)], 1002),
    ("5.5.1", "close with a 1-byte payload", [F(CLOSE, b"\x03")], 1002),
    ("7.4.1", "close code 0", [F(CLOSE, close_payload(0))], 1002),
    ("7.4.1", "close code 999", [F(CLOSE, close_payload(999))], 1002),
    ("7.4.1", "close code 1004 (reserved)", [F(CLOSE, close_payload(1004))], 1002),
    ("7.4.1", "close code 1005 (never on the wire)", [F(CLOSE, close_payload(1005))], 1002),
    ("7.4.1", "close code 1006 (never on the wire)", [F(CLOSE, close_payload(1006))], 1002),
    ("7.4.1", "close code 1015 (never on the wire)", [F(CLOSE, close_payload(1015))], 1002),
    ("7.4.2", "close code 1100 (unassigned)", [F(CLOSE, close_payload(1100))], 1002),
    ("7.4.2", "close code 2999 (unassigned)", [F(CLOSE, close_payload(2999))], 1002),
    ("7.4.2", "close code 5000 (out of range)", [F(CLOSE, close_payload(5000))], 1002),
    ("5.6/8.1", "invalid UTF-8 in a text frame", [F(TEXT, b'{"op":"rooms","x":"\xc3\x28"}')], 1007),
    ("5.6/8.1", "overlong encoding", [F(TEXT, b'{"x":"\xc0\xaf"}')], 1007),
    ("5.6/8.1", "UTF-16 surrogate encoded in UTF-8", [F(TEXT, b'{"x":"\xed\xa0\x80"}')], 1007),
    ("5.6/8.1", "code point above U+10FFFF", [F(TEXT, b'{"x":"\xf4\x90\x80\x80"}')], 1007),
    ("5.6/8.1", "invalid UTF-8 across fragments",
     [F(TEXT, b'{"x":"\xce', fin=False), F(CONT, b'\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"}')], 1007),
    ("5.5.1/8.1", "close reason that is not UTF-8", [F(CLOSE, close_payload(1000, b"\xff\xfe"))], 1007),
    ("10.4", "message over the limit in one frame", [F(TEXT, b"a" * (LIMITS["max_frame"] + 1))], 1009),
    ("10.4", "message over the limit across fragments",
     [F(TEXT, b"a" * 40000, fin=False), F(CONT, b"a" * 40000)], 1009),
    ("10.4", "announced length of 2^62 bytes", [F(TEXT, b"", length=1 << 62)], 1009),
    ("5.2", "64-bit length with its top bit set", [F(TEXT, b"", length=(1 << 63) + 5)], 1002),
    ("5.2", "16-bit length form for 10 bytes", [long_form(TEXT, rooms_req(), 126)], 1002),
    ("5.2", "64-bit length form for 200 bytes", [long_form(TEXT, b" " * 170 + rooms_req(), 127)], 1002),
    ("chatd", "binary frame (PROTOCOL.md: 1003)", [F(BINARY, b"\x00\x01")], 1003),
]


@pytest.mark.parametrize("section,label,frames,code", PROTOCOL_ERRORS,
                         ids=[f"{s}-{lbl}" for s, lbl, _, _ in PROTOCOL_ERRORS])
def test_protocol_error_closes(sec, section, label, frames, code):
    w = seclib.WS(sec.gw_ports[0], token(uid("rfc")))
    try:
        w.read_until({TEXT})  # hello
        for f in frames:
            try:
                w.send(f)
            except OSError:
                break
        w.expect_close(code)
    finally:
        w.close()


VALID_CLOSE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999]


@pytest.mark.parametrize("code", VALID_CLOSE)
def test_close_handshake_valid_codes(sec, code):
    """7.1.5/7.4: a valid close code is answered with a close frame (the
    same code), then the server closes TCP."""
    w = seclib.WS(sec.gw_ports[1], token(uid("cl")))
    try:
        w.read_until({TEXT})
        w.send(F(CLOSE, close_payload(code, b"bye")))
        got = w.close_code()
        assert got == code, got
        assert seclib.closed_by_peer(w.sock, 5)
    finally:
        w.close()


def test_close_empty_payload(sec):
    """5.5.1: a close without a body is answered and the socket closed."""
    w = seclib.WS(sec.gw_ports[0], token(uid("cl")))
    try:
        w.read_until({TEXT})
        w.send(F(CLOSE, b""))
        op, data = w.read_until({CLOSE})
        assert len(data) in (0, 2), data
        assert seclib.closed_by_peer(w.sock, 5)
    finally:
        w.close()


def test_valid_framing_is_served(sec):
    """What the RFC allows must work: ping with payload -> pong with it
    (5.5.2), unsolicited pong ignored (5.5.3), control frames between
    fragments (5.4), UTF-8 split inside a code point across fragments
    (5.6), an empty continuation, a 125-byte ping, lengths in 16-bit form."""
    w = seclib.WS(sec.gw_ports[0], token(uid("ok")))
    try:
        w.read_until({TEXT})
        w.send(F(PING, b"p" * 125))
        op, data = w.read_until({PONG})
        assert data == b"p" * 125
        w.send(F(PONG, b"unsolicited"))
        w.send(F(TEXT, b'{"op":"rooms",', fin=False))
        w.send(F(PING, b"mid"))
        w.send(F(CONT, b'"rid":"\xce', fin=False))     # first byte of U+03BA
        w.send(F(CONT, b"", fin=False))
        w.send(F(CONT, b'\xba"}'))
        op, data = w.read_until({PONG})
        assert data == b"mid"
        op, data = w.read_until({TEXT})
        reply = json.loads(data)
        assert reply["op"] == "rooms" and reply["rid"] == "\u03ba", reply
        # 16-bit length form for a 200-byte request.
        req = json.dumps({"op": "rooms", "rid": "x" * 60, "pad": "y" * 120}).encode()
        assert 126 <= len(req) < 65536
        w.send(F(TEXT, req))
        op, data = w.read_until({TEXT})
        assert json.loads(data)["rid"] == "x" * 60
        w.send(F(CLOSE, close_payload(1000)))
        assert w.close_code() == 1000
    finally:
        w.close()


def test_frames_split_byte_by_byte(sec):
    """A frame delivered one byte per TCP segment parses the same."""
    w = seclib.WS(sec.gw_ports[1], token(uid("split")))
    try:
        w.read_until({TEXT})
        data = F(TEXT, rooms_req(42))
        for i in range(len(data)):
            w.send(data[i:i + 1])
        op, reply = w.read_until({TEXT})
        assert json.loads(reply) == {"op": "rooms", "rid": 42, "rooms": []}
    finally:
        w.close()
