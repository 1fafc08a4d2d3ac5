"""Amplification (issue 16): what one client, signed in or not, can make a
gateway hold. For every request type of the client port and of the admin
port, a few sockets that never read send requests pipelined back to back;
the gateway's VmRSS must stay within the documented per-connection bound
(docs/SECURITY.md, "What a client can make a process hold") and the
requests it handles (each a backend call for the REST history) within the
per-connection rate limit. Before issue 16 one such socket answering
/app.js took a gateway to hundreds of MiB."""
import socket
import time

import chatlib
import harness
import pytest
import seclib
from chatlib import uid
from secconf import LIMITS, token

CONNS = 4                  # sockets per request type
FLOOD_BYTES = 256 * 1024   # pipelined request bytes each tries to send
# A flood ends after QUIET_S with no byte sent, no new RSS peak and no
# request handled (the gateway reads no more, or has answered what it will),
# FLOOD_S at most (what every flood took before: 18 cases x 3.5 s a pass).
FLOOD_S = 3.0
QUIET_S = 0.5
# Per connection: 64 KiB of unsent output (HTTP_OUT_MAX) + one response (the
# largest here is app.js, 30 KiB) + a read's leftover (64 KiB) + a request
# buffer; the rest is the allocator's slack, larger under ASan.
PER_CONN_KB = 256
SLACK_KB = (48 if harness.SANITIZED else 12) * 1024


def _requests(sec):
    canary = token("canary-a")
    auth = f"Authorization: Bearer {canary}\r\n"
    client = sec.gw_ports[0]
    return [
        ("client GET /app.js", client, "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("client GET /", client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("client GET /healthz", client, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("client GET /nothing (404)", client, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("client REST history", client,
         f"GET /api/rooms/canary/messages?limit=1000 HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
        ("client POST /api/dev/token", client,
         'POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
         'Content-Length: 12\r\n\r\n{"user":"a"}'),
        ("client GET /metrics (gateway 1)", sec.gw_ports[1], "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("admin GET /metrics", sec.admin_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("admin GET /healthz", sec.admin_port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("admin GET /readyz", sec.admin_port, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]


def _requests_total(port):
    return chatlib.metric_sum(chatlib.read_metrics(port), "chatd_http_requests_total")


def _handled_counter(port):
    """The gateway's requests handled so far, less our own /metrics reads."""
    reads = [0]

    def handled():
        reads[0] += 1
        return _requests_total(port) - reads[0]
    return handled


def _pump(socks, payload, rss, handled):
    """Send payload on every non-blocking socket, never reading, until the
    flood is quiet (for QUIET_S: no byte sent, no new RSS peak, no more
    requests handled by the gateway: handled() counts them) or FLOOD_S old.
    A quiet flood is over: the old http.c kept reading and answering every
    pipelined request, its RSS and its request count rising all along.
    Returns (peak RSS, bytes sent)."""
    sent = [0] * len(socks)
    peak = rss()
    count = handled()
    t0 = last = polled = time.monotonic()
    while True:
        now = time.monotonic()
        if now - t0 >= FLOOD_S or now - last >= QUIET_S:
            break
        moved = False
        for i, s in enumerate(socks):
            if sent[i] >= len(payload):
                continue
            try:
                n = s.send(payload[sent[i]:sent[i] + 65536])
                sent[i] += n
                moved = moved or n > 0
            except BlockingIOError:
                pass
            except OSError:
                sent[i] = len(payload)  # closed by the gateway
        cur = rss()
        if now - polled >= 0.1:
            polled = now
            c = handled()
            moved = moved or c != count
            count = c
        if moved or cur > peak:
            last = time.monotonic()
        peak = max(peak, cur)
        if not moved:
            time.sleep(0.02)
    return peak, sum(sent)


def _flood(sec, name, port, one, handled):
    """CONNS sockets with a 4 KiB receive buffer send up to FLOOD_BYTES of
    pipelined requests each, never reading. Returns (peak RSS growth KiB,
    bytes sent)."""
    payload = one.encode() * (FLOOD_BYTES // len(one) + 1)
    payload = payload[:FLOOD_BYTES]
    base = sec.rss(name)
    socks = [seclib.raw_connect(port, rcvbuf=4096) for _ in range(CONNS)]
    try:
        for s in socks:
            s.setblocking(False)
        peak, sent = _pump(socks, payload, lambda: sec.rss(name), handled)
    finally:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()
    return peak - base, sent


@pytest.mark.parametrize("which", range(10))
def test_pipelined_requests_without_reading(sec, which):
    label, port, one = _requests(sec)[which]
    gw = "gateway1" if port == sec.gw_ports[1] else "gateway0"
    mport = sec.admin_port if gw == "gateway0" else sec.gw_ports[1]
    t0 = time.monotonic()
    count = _handled_counter(mport)
    before = count()
    grew, sent = _flood(sec, gw, port, one, count)
    handled = count() - before
    took = time.monotonic() - t0
    bound_kb = CONNS * PER_CONN_KB + SLACK_KB
    # Each connection: at most --rate-burst requests at once, then --rate/s
    # over the flood's own time (+1 s: requests read before the sockets closed).
    max_handled = CONNS * (LIMITS["rate_burst"] + LIMITS["rate"] * (took + 1)) + 2
    print(f"{label}: {sent} bytes pipelined on {CONNS} sockets in {took:.1f} s, {handled:.0f} "
          f"handled (bound {max_handled:.0f}), {gw} RSS +{grew} KiB (bound {bound_kb} KiB)")
    assert grew <= bound_kb, f"{label}: {gw} RSS grew {grew} KiB (bound {bound_kb} KiB)"
    assert handled <= max_handled, f"{label}: {handled:.0f} requests handled (bound {max_handled})"


def test_http_rate_limit_per_connection(sec):
    """A connection that reads its answers gets --rate-burst of them, then
    429 + Retry-After and a close: REST and admin requests cost a token of a
    bucket like WebSocket frames do."""
    for port in (sec.gw_ports[0], sec.admin_port):
        s = seclib.raw_connect(port)
        try:
            n = LIMITS["rate_burst"] * 3
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            statuses, rest = [], b""
            while True:
                st, hdrs, _, rest = _read_one(s, rest)
                if st is None:
                    break
                statuses.append(st)
                if st == 429:
                    assert hdrs.get("retry-after") == "1", hdrs
                    break
            ok = statuses.count(200)
            assert statuses and statuses[-1] == 429, f"port {port}: no 429 in {len(statuses)} answers"
            assert LIMITS["rate_burst"] - 1 <= ok <= LIMITS["rate_burst"] + 5, (port, ok)
            assert seclib.closed_by_peer(s, 5)
        finally:
            s.close()


def _read_one(sock, buf):
    """One response from buf + the socket: (status, headers, body, rest)."""
    sock.settimeout(10)
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
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), hdrs, rest[:n], rest[n:]


WS_OPS = {
    "sync": lambda room: {"op": "sync", "room": room, "limit": 1000},
    "rooms": lambda room: {"op": "rooms"},
    "presence": lambda room: {"op": "presence", "room": room},
    "typing": lambda room: {"op": "typing", "room": room},
    "read": lambda room: {"op": "read", "room": room, "seq": 1},
    "join": lambda room: {"op": "join", "room": room},
    "send": lambda room: {"op": "send", "room": room, "text": "\x01" * 4000},
    "garbage": lambda room: "{not json",
}


@pytest.mark.parametrize("op", sorted(WS_OPS))
def test_ws_requests_without_reading(sec, op):
    """The same for every WebSocket request: CONNS signed-in sockets with a
    4 KiB receive buffer send FLOOD_BYTES of one request each and never
    read. Each holds at most --send-queue of replies (then it is cut) and
    --max-frame of input; requests past the rate limit are refused."""
    import json
    port = sec.gw_ports[1]
    room = uid("wsamp")
    base = sec.rss("gateway1")
    socks = []
    try:
        for i in range(CONNS):
            w = seclib.WS(port, token(uid(f"wsamp{i}")), rcvbuf=4096)
            w.read_until({0x1})
            w.send(seclib.frame(0x1, json.dumps({"op": "join", "room": room, "rid": 0}).encode()))
            w.read_until({0x1})
            socks.append(w)
        obj = WS_OPS[op](room)
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        one = seclib.frame(0x1, data)
        payload = one * (FLOOD_BYTES // len(one) + 1)
        for w in socks:
            w.sock.setblocking(False)
        peak, sent = _pump([w.sock for w in socks], payload, lambda: sec.rss("gateway1"),
                           lambda: chatlib.metric_sum(chatlib.read_metrics(port),
                                                      "chatd_ws_frames_in_total"))
    finally:
        for w in socks:
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            w.close()
    grew = peak - base
    bound_kb = CONNS * (LIMITS["send_queue"] + LIMITS["max_frame"]) // 1024 + CONNS * PER_CONN_KB + SLACK_KB
    print(f"ws {op}: {sent} bytes on {CONNS} sockets, gateway1 RSS +{grew} KiB (bound {bound_kb} KiB)")
    assert grew <= bound_kb, f"ws {op}: RSS grew {grew} KiB (bound {bound_kb} KiB)"
