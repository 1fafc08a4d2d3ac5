"""Helpers for the chatd integration tests: processes, tokens, HTTP, a
WebSocket client with request ids, and a raw-socket WebSocket for frames the
websockets library refuses to send.

Everything here is bounded in time: a hang is a failure, never a wait forever.
"""
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.parse
import uuid

import redis as redislib
import websockets
import websockets.client
import websockets.exceptions

SAN_PATTERNS = (b"AddressSanitizer", b"runtime error:", b"LeakSanitizer",
                b"UndefinedBehaviorSanitizer")

# Every process the suite started; checked after every test and at teardown.
REGISTRY = []


def uid(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


_used_ports = set()



def producer_linger(proc):
    """linger.ms of the Kafka producer process `proc` started with (its
    kafka_producer_ready log line, --log-level=info)."""
    with open(proc.logpath, "rb") as f:
        found = re.findall(rb"event=kafka_producer_ready .* linger_ms=(\S+)", f.read())
    assert found, f"{proc.name}: no kafka_producer_ready line in {proc.logpath}"
    return found[-1].decode()

def free_port():
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


# --------------------------------------------------------------------------
# processes

class Proc:
    """A child process whose stdout+stderr go to a file in the temp dir."""

    def __init__(self, name, argv, logdir, env=None, user=None, sanitized=False,
                 expect_clean_exit=False):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.logdir = logdir
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.sanitized = sanitized          # scan the log for sanitizer reports
        self.expect_clean_exit = expect_clean_exit  # exit 0 on SIGTERM
        self.stopping = False
        self.stop_problem = None
        self._scan_off = 0
        self._reported = False
        kw = {}
        if user:
            kw["user"] = user
            kw["group"] = user
            kw["extra_groups"] = []
        self._logf = open(self.logpath, "ab")
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._logf,
                                  stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True, **kw)
        REGISTRY.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=40):
        try:
            with open(self.logpath, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read()
        except OSError as e:
            return f"<cannot read {self.logpath}: {e}>"
        lines = data.decode("utf-8", "replace").splitlines()[-n:]
        return "\n".join(lines)

    def _scan(self):
        """Sanitizer reports written since the last scan."""
        if not self.sanitized:
            return None
        try:
            with open(self.logpath, "rb") as f:
                f.seek(max(0, self._scan_off - 64))
                data = f.read()
                self._scan_off = f.tell()
        except OSError:
            return None
        for pat in SAN_PATTERNS:
            if pat in data:
                return pat.decode()
        return None

    def check(self):
        """A problem description, or None. Each problem is reported once."""
        if self._reported:
            return None
        problem = None
        san = self._scan()
        if san:
            problem = f"{self.name}: '{san}' in its log"
        elif not self.stopping and self.p.poll() is not None:
            problem = f"{self.name}: exited unexpectedly with code {self.p.returncode}"
        elif self.stop_problem:
            problem = f"{self.name}: {self.stop_problem}"
        if problem:
            self._reported = True
            return f"{problem}\n--- {self.logpath} (tail) ---\n{self.tail()}"
        return None

    def send_signal(self, sig):
        self.stopping = True
        if self.alive():
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(timeout=10)
            if self.expect_clean_exit:
                self.stop_problem = f"did not exit within {timeout}s of SIGTERM (SIGKILLed)"
            return
        if self.expect_clean_exit and self.p.returncode != 0 and self.stop_problem is None:
            self.stop_problem = f"exit code {self.p.returncode} after SIGTERM (expected 0)"

    def stop(self, sig=signal.SIGTERM, timeout=20):
        was_alive = self.alive()
        self.send_signal(sig)
        if was_alive:
            self.wait_exit(timeout)
        self._close_log()

    def _close_log(self):
        try:
            self._logf.close()
        except Exception:
            pass


def check_registry():
    problems = [p for p in (proc.check() for proc in REGISTRY) if p]
    return problems


def start_redis(logdir, name="redis", port=None, args=(), password=None, username=None):
    """args: more redis-server settings; password: its --requirepass, or
    with username an ACL user's password (for the start-up ping)."""
    port = port or free_port()
    auth = ["--requirepass", password] if password and not username else []
    proc = Proc(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no"] + auth + list(args), logdir)
    deadline = time.monotonic() + 15
    while True:
        try:
            if redislib.Redis(host="127.0.0.1", port=port, username=username, password=password,
                              socket_timeout=1).ping():
                break
        except Exception:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"redis did not start\n{proc.tail()}")
        time.sleep(0.05)
    proc.port = port
    proc.url = f"redis://127.0.0.1:{port}"
    return proc


# --------------------------------------------------------------------------
# HTTP

# port -> address of the server listening on it when not 127.0.0.1 (the
# partition tests run each server on a host of its own, tests/partitions).
ADDR = {}


def host_of(port):
    return ADDR.get(port, "127.0.0.1")


def http_request(port, method, path, body=None, headers=None, timeout=5.0):
    """Returns (status, headers dict lower-cased, body bytes)."""
    conn = http.client.HTTPConnection(host_of(port), port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def wait_ready(proc, port, timeout):
    """Polls GET /readyz until 200; fails with the process's log tail."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with code {proc.p.returncode} before "
                               f"becoming ready\n--- {proc.logpath} ---\n{proc.tail(60)}")
        try:
            st, _, body = http_request(port, "GET", "/readyz", timeout=2)
            if st == 200:
                return
            last = f"HTTP {st} {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready on port {port} after {timeout}s "
                       f"(last: {last})\n--- {proc.logpath} ---\n{proc.tail(60)}")


def read_metrics(port, timeout=5.0):
    """GET /metrics parsed into {(name, frozenset(labels.items())): value}."""
    st, _, body = http_request(port, "GET", "/metrics", timeout=timeout)
    assert st == 200, f"GET /metrics on {port}: HTTP {st}"
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k.strip()] = v.strip().strip('"')
        try:
            out[(name, frozenset(labels.items()))] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(metrics, name, **labels):
    """Sum of the samples of one metric whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def wait_http_status(port, path, want, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st, _, _ = http_request(port, "GET", path, timeout=2)
            last = st
            if st == want:
                return st
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise AssertionError(f"GET {path} on {port}: wanted {want}, last {last} after {timeout}s")


# --------------------------------------------------------------------------
# JWT (HS256, hand-made)

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64url_decode(s):
    s += "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s)


def make_token(sub, secret, exp_in=3600, name=None, with_exp=True, sign_secret=None,
               alg="HS256", extra=None):
    header = {"alg": alg, "typ": "JWT"}
    claims = {"sub": sub}
    if with_exp:
        claims["exp"] = int(time.time()) + exp_in
    if name is not None:
        claims["name"] = name
    if extra:
        claims.update(extra)
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing = f"{h}.{p}".encode()
    key = (sign_secret if sign_secret is not None else secret).encode()
    sig = b64url(hmac.new(key, signing, hashlib.sha256).digest())
    return f"{h}.{p}.{sig}"


def verify_token(token, secret):
    h, p, s = token.split(".")
    want = b64url(hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
    assert hmac.compare_digest(want, s), "dev token is not signed with CHATD_JWT_SECRET"
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


# --------------------------------------------------------------------------
# asyncio glue

def arun(coro, timeout=60):
    """Runs one test body with an overall deadline."""
    async def main():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


class ChatError(AssertionError):
    pass


def _rid_key(rid):
    return json.dumps(rid, sort_keys=True)


class Client:
    """One WebSocket connection. Replies are matched by rid; everything else
    (events) is kept in self.events (consumable) and self.history (all)."""

    def __init__(self, ws, hello, label, on_event=None):
        self.ws = ws
        self.hello = hello
        self.label = label
        self.user = hello.get("user")
        # Optional hook called with every event (not replies) as it arrives;
        # when it returns True the event is consumed and not kept in
        # self.events / self.history (long-running clients, fault tests).
        self.on_event = on_event
        self.events = []
        self.history = []
        self.pending = {}
        self._rid = 0
        self._cond = asyncio.Condition()
        self.closed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, port, token, via="header", timeout=10, label=None, on_event=None):
        url = f"ws://{host_of(port)}:{port}/ws"
        kw = {}
        if via == "header":
            kw["extra_headers"] = {"Authorization": f"Bearer {token}"}
        else:
            url += "?token=" + urllib.parse.quote(token, safe="")
        ws = await asyncio.wait_for(
            websockets.client.connect(url, open_timeout=timeout, close_timeout=5,
                                      max_size=2 ** 25, max_queue=None, compression=None, **kw),
            timeout + 1)
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except BaseException:
            await ws.close()
            raise
        hello = json.loads(raw)
        assert isinstance(hello, dict) and hello.get("op") == "hello", \
            f"first frame is not hello: {raw!r}"
        return cls(ws, hello, label or f"{hello.get('user')}@{port}", on_event=on_event)

    async def _read_loop(self):
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    obj = {"op": "__binary__", "data": raw}
                else:
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        obj = {"op": "__not_json__", "data": raw}
                if isinstance(obj, dict) and "rid" in obj and obj["rid"] is not None:
                    fut = self.pending.pop(_rid_key(obj["rid"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(obj)
                        continue
                if self.on_event is not None and self.on_event(obj):
                    continue
                async with self._cond:
                    self.events.append(obj)
                    self.history.append(obj)
                    self._cond.notify_all()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ChatError(
                        f"{self.label}: connection closed (code {self.ws.close_code}) "
                        f"while waiting for a reply"))
            self.pending.clear()
            async with self._cond:
                self._cond.notify_all()

    def next_rid(self):
        self._rid += 1
        return self._rid

    async def send_obj(self, obj):
        await self.ws.send(json.dumps(obj))

    async def request(self, obj, timeout=10):
        """Sends obj (must have a rid) and returns the reply with that rid."""
        fut = self.issue(obj)
        await self.ws.send(json.dumps(obj))
        return await self.await_reply(obj, fut, timeout)

    def issue(self, obj):
        key = _rid_key(obj["rid"])
        fut = asyncio.get_event_loop().create_future()
        self.pending[key] = fut
        return fut

    async def await_reply(self, obj, fut, timeout=10):
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.pending.pop(_rid_key(obj["rid"]), None)
            raise ChatError(f"{self.label}: no reply within {timeout}s to {obj!r}; "
                            f"recent events: {self.history[-5:]!r}") from None

    async def req(self, op, timeout=10, **fields):
        obj = {"op": op, "rid": self.next_rid()}
        obj.update(fields)
        return await self.request(obj, timeout)

    async def ok(self, op, timeout=10, **fields):
        """req() that must not fail."""
        r = await self.req(op, timeout=timeout, **fields)
        if r.get("op") == "error":
            raise ChatError(f"{self.label}: {op} {fields!r} failed: {r!r}")
        return r

    async def expect_error(self, obj, code, timeout=10):
        if "rid" not in obj:
            obj = dict(obj, rid=self.next_rid())
        r = await self.request(obj, timeout)
        assert r.get("op") == "error", f"{obj!r}: expected error {code}, got {r!r}"
        assert r.get("code") == code, f"{obj!r}: expected error {code}, got {r!r}"
        assert r.get("rid") == obj["rid"], f"{obj!r}: rid not echoed: {r!r}"
        assert isinstance(r.get("message"), str), f"error without message text: {r!r}"
        return r

    async def join(self, room, timeout=10):
        r = await self.ok("join", room=room, timeout=timeout)
        assert r.get("op") == "ok" and r.get("room") == room, r
        assert isinstance(r.get("seq"), int) and r["seq"] >= 0, r
        return r["seq"]

    async def send(self, room, text, cid=None, timeout=10):
        """One send that must be acked. No cid unless given: the protocol
        tests need cid-less sends, and this helper never resends (an
        `unavailable` fails the test), so nothing can be stored twice. A
        client that retries must send a cid (faults/harness.py FClient)."""
        f = {"room": room, "text": text}
        if cid is not None:
            f["cid"] = cid
        r = await self.ok("send", timeout=timeout, **f)
        assert r.get("op") == "ack" and r.get("room") == room, r
        assert isinstance(r.get("id"), str) and r["id"], r
        return r

    async def send_many(self, room, texts, cids=None, timeout=30):
        """Pipelines sends without waiting in between; returns acks in order."""
        objs, futs = [], []
        for i, t in enumerate(texts):
            o = {"op": "send", "rid": self.next_rid(), "room": room, "text": t}
            if cids is not None:
                o["cid"] = cids[i]
            objs.append(o)
            futs.append(self.issue(o))
        for o in objs:
            await self.ws.send(json.dumps(o))
        acks = await asyncio.wait_for(asyncio.gather(*futs), timeout)
        for o, a in zip(objs, acks):
            if a.get("op") != "ack":
                raise ChatError(f"{self.label}: send {o!r} -> {a!r}")
        return acks

    async def sync(self, room, **kw):
        r = await self.ok("sync", room=room, **kw)
        assert r.get("op") == "history" and r.get("room") == room, r
        assert isinstance(r.get("messages"), list) and isinstance(r.get("more"), bool), r
        return r

    async def sync_all(self, room, after=0, limit=1000):
        out = []
        while True:
            r = await self.sync(room, after=after, limit=limit)
            out.extend(r["messages"])
            if not r["more"]:
                return out
            assert r["messages"], f"more=true with an empty page: {r!r}"
            after = r["messages"][-1]["seq"]

    async def wait_event(self, pred, timeout=10, what="event"):
        """Removes and returns the first event matching pred."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                for i, e in enumerate(self.events):
                    if pred(e):
                        return self.events.pop(i)
                if self.closed.is_set():
                    raise ChatError(f"{self.label}: closed (code {self.ws.close_code}) "
                                    f"while waiting for {what}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ChatError(f"{self.label}: no {what} within {timeout}s; "
                                    f"recent events: {self.history[-8:]!r}")
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def wait_until(self, cond, timeout=10, what="condition"):
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            while True:
                if cond():
                    return
                if self.closed.is_set():
                    raise ChatError(f"{self.label}: closed (code {self.ws.close_code}) "
                                    f"while waiting for {what}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ChatError(f"{self.label}: {what} not reached within {timeout}s; "
                                    f"recent events: {self.history[-8:]!r}")
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def msgs(self, room):
        """Live msg events of room, in arrival order (duplicates included)."""
        return [e for e in self.history if isinstance(e, dict) and e.get("op") == "msg"
                and e.get("room") == room]

    def seqs(self, room):
        return {m["seq"] for m in self.msgs(room)}

    async def wait_seqs(self, room, wanted, timeout=15):
        wanted = set(wanted)
        await self.wait_until(lambda: wanted <= self.seqs(room), timeout,
                              what=f"msgs of {room} with seqs {sorted(wanted)[:3]}..{max(wanted) if wanted else None}")

    async def drain_events(self, seconds):
        """Waits a bit so late events can arrive (for 'nothing arrives' checks)."""
        await asyncio.sleep(seconds)

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 6)
        except Exception:
            pass
        self._reader.cancel()
        try:
            await self._reader
        except BaseException:
            pass

    async def wait_closed(self, timeout=10):
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.ws.close_code


def dedup(msgs):
    """De-duplicates msg events by (room, seq), asserting that a duplicate is
    the same message (same id). Keeps arrival order."""
    seen = {}
    out = []
    for m in msgs:
        k = (m["room"], m["seq"])
        if k in seen:
            assert seen[k]["id"] == m["id"] and seen[k].get("text") == m.get("text"), \
                f"seq {k} delivered twice with different messages: {seen[k]!r} vs {m!r}"
            continue
        seen[k] = m
        out.append(m)
    return out


def check_msg(m, room=None, frm=None, text=None, cid=None):
    assert m.get("op") in ("msg", None), m
    assert isinstance(m.get("seq"), int) and m["seq"] >= 1, m
    assert isinstance(m.get("id"), str) and m["id"], m
    assert isinstance(m.get("ts"), int) and abs(m["ts"] - time.time() * 1000) < 600_000, m
    assert isinstance(m.get("text"), str), m
    if room is not None:
        assert m.get("room") == room, m
    if frm is not None:
        assert m.get("from") == frm, m
    if text is not None:
        assert m.get("text") == text, m
    if cid is not None:
        assert m.get("cid") == cid, m
    elif cid is None and "cid" in m and m["cid"] is not None:
        pass  # caller did not specify


# --------------------------------------------------------------------------
# raw WebSocket (for invalid UTF-8 and other frames the library will not send)

class RawWS:
    def __init__(self, port, token, timeout=10, rcvbuf=None):
        if rcvbuf is None:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        else:
            # A small receive buffer, set before connecting (window scaling
            # is negotiated then): a client that stops reading fills up fast.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n")
        self.sock.sendall(req.encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed during handshake: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "101", f"handshake failed: {lines[0]}"
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        assert hdrs.get("sec-websocket-accept") == accept, f"bad Sec-WebSocket-Accept: {hdrs}"

    @staticmethod
    def frame(opcode, payload, fin=True):
        """One masked client frame, as bytes."""
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return hdr + mask + masked

    def send_frame(self, opcode, payload, fin=True):
        self.sock.sendall(self.frame(opcode, payload, fin))

    def send_frames(self, frames):
        """(opcode, payload) pairs in one write: on loopback they arrive, and
        are parsed, together."""
        self.sock.sendall(b"".join(self.frame(op, p) for op, p in frames))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by server without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        if b1 & 0x80:
            mask = self._need(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._need(n)))
        else:
            data = self._need(n)
        return b0 & 0x0F, data

    def read_close_code(self, max_frames=50):
        for _ in range(max_frames):
            op, data = self.read_frame()
            if op == 0x8:
                return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            if op == 0x9:  # ping -> pong
                self.send_frame(0xA, data)
        raise AssertionError("no close frame")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class PGClient:
    """SQL access to a test PostgreSQL on 127.0.0.1:self.port (user postgres).
    Mixed into the fixtures that own the server process."""

    def conninfo(self, db="postgres"):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def connect(self, db="postgres"):
        import psycopg2
        c = psycopg2.connect(self.conninfo(db), connect_timeout=5)
        c.autocommit = True
        return c

    def create_db(self, name):
        c = self.connect()
        try:
            with c.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            c.close()
        return self.conninfo(name)

    def query(self, sql, args=(), db="postgres"):
        c = self.connect(db)
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            c.close()
