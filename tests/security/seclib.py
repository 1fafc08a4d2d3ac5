"""Hostile-client helpers for tests/security: raw HTTP, raw WebSocket frames
(unmasked, reserved bits, lying lengths), and the after-attack check that
every test runs: the server is alive, serves another client within its
normal latency, its memory comes back near its baseline and no stored
message changed.

Everything is bounded in time and runs on 127.0.0.1 only.
"""
import asyncio
import base64
import hashlib
import os
import socket
import statistics
import struct
import time
import urllib.parse

import chatlib
from chatlib import Client, uid

# --------------------------------------------------------------------------
# raw HTTP


def raw_connect(port, timeout=10, rcvbuf=None):
    """rcvbuf: a small receive buffer, set before connecting (window scaling
    is negotiated then), makes a client that stops reading fill up fast."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(sock, timeout=10):
    """Reads one HTTP response head (+ Content-Length body).
    Returns (status, headers lower-cased, body, leftover bytes); status is
    None if the server closed the socket without answering."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return None, {}, b"", buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, hdrs, rest[:n], rest[n:]


def closed_by_peer(sock, timeout=10):
    """True once the server closed the socket (EOF or RST) within timeout;
    whatever else it sends meanwhile is discarded."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def raw_request(port, data, timeout=10):
    """Sends bytes, returns (status, headers, body, closed-after)."""
    s = raw_connect(port, timeout)
    try:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
        status, hdrs, body, _ = read_response(s, timeout)
        closed = status is None or closed_by_peer(s, timeout)
        return status, hdrs, body, closed
    finally:
        s.close()


# --------------------------------------------------------------------------
# raw WebSocket

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def upgrade_request(port, token=None, headers=None, path="/ws"):
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def try_upgrade(port, token=None, headers=None, timeout=10, rcvbuf=None):
    """Returns (status, headers, sock, leftover); sock is open (caller closes)."""
    s = raw_connect(port, timeout, rcvbuf)
    req, key = upgrade_request(port, token, headers)
    s.sendall(req)
    status, hdrs, body, rest = read_response(s, timeout)
    if status == 101:
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert hdrs.get("sec-websocket-accept") == want, hdrs
    return status, hdrs, s, (rest if status == 101 else body)


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """One client frame; length overrides the encoded payload length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WS:
    """A raw WebSocket after a successful upgrade (hello not yet read)."""

    def __init__(self, port, token, headers=None, timeout=10, rcvbuf=None):
        status, hdrs, self.sock, self.buf = try_upgrade(port, token, headers, timeout, rcvbuf)
        assert status == 101, f"upgrade refused: {status} {hdrs} {self.buf[:200]!r}"
        self.sock.settimeout(timeout)

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError("closed by the server without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "server frames must not be masked (RFC 6455 5.1)"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def read_until(self, opcodes, max_frames=100, deadline=None):
        """Frames until one of opcodes; answers pings. Returns (op, data).
        deadline (time.monotonic()): fail then, even while pings keep coming."""
        for _ in range(max_frames):
            if deadline is not None and time.monotonic() > deadline:
                raise AssertionError(f"none of {opcodes} before the deadline")
            op, data = self.read_frame()
            if op in opcodes:
                return op, data
            if op == 0x9:
                self.send(frame(0xA, data))
        raise AssertionError(f"none of {opcodes} within {max_frames} frames")

    def close_code(self, deadline=None):
        """Reads up to the server's close frame; its code (None if empty)."""
        _, data = self.read_until({0x8}, deadline=deadline)
        return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None

    def expect_close(self, code, timeout=10):
        self.sock.settimeout(timeout)
        got = self.close_code(deadline=time.monotonic() + timeout)
        assert got == code, f"expected close {code}, got {got}"
        # The server closes TCP after its close frame (RFC 6455 7.1.1).
        try:
            self.send(frame(0x8, struct.pack("!H", 1000)))
        except OSError:
            pass
        assert closed_by_peer(self.sock, timeout), "TCP not closed after the close frame"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# the after-attack check


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def probe_latency(cluster, token, sends=3, timeout=15):
    """Median send -> delivery time between two fresh users on two gateways."""
    a = await Client.connect(cluster.gw_ports[0], token(uid("pa")), timeout=timeout)
    b = await Client.connect(cluster.gw_ports[1], token(uid("pb")), timeout=timeout)
    try:
        room = uid("probe")
        await a.join(room, timeout=timeout)
        await b.join(room, timeout=timeout)
        lats = []
        for i in range(sends):
            text = f"probe {i} {uid()}"
            t0 = time.monotonic()
            await a.send(room, text, timeout=timeout)
            await b.wait_event(lambda e: e.get("op") == "msg" and e.get("text") == text,
                               timeout=timeout, what="probe delivery")
            lats.append(time.monotonic() - t0)
        return statistics.median(lats)
    finally:
        await a.close()
        await b.close()


def snapshot(cluster):
    return {(r[0], r[1]): r[2:] for r in cluster.query(
        "SELECT room, seq, id, user_id, cid, body, ts FROM messages ORDER BY room, seq")}


def healthz_all(cluster):
    for name, port in cluster.ports.items():
        st, _, _ = chatlib.http_request(port, "GET", "/healthz", timeout=5)
        assert st == 200, f"{name}: /healthz {st}"


def query_param(token):
    return urllib.parse.quote(token, safe="")


def arun(coro, timeout=120):
    return chatlib.arun(coro, timeout)


async def gather_bounded(coros, limit=50):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c
    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
