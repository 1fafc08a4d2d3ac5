"""Attacks aimed at the gateway's memory: many connections each holding a
half-received large message, many connections that stop reading while
messages are fanned out to them. The after-attack check then requires the
RSS to come back near its baseline; here the peak is also required to have
actually risen, so that check is not vacuous."""
import asyncio
import time

import chatlib
import seclib
from chatlib import Client, uid
from secconf import LIMITS, token


def test_half_received_messages(sec):
    """300 connections each send 60 KB of a fragmented message and stall:
    the gateway buffers them (frame reassembly), then they vanish."""
    port = sec.gw_ports[0]
    base = sec.rss("gateway0")
    conns = []
    chunk = b"a" * 60000
    try:
        for i in range(300):
            w = seclib.WS(port, token(uid(f"half{i}")))
            w.send(seclib.frame(0x1, b'{"op":"send","text":"' + chunk, fin=False))
            conns.append(w)
        time.sleep(0.5)
        peak = sec.rss("gateway0")
    finally:
        for w in conns:
            w.close()
    grew = peak - base
    print(f"half-received: RSS {base // 1024} -> {peak // 1024} MiB with 300 x 60 KB pending")
    assert grew >= 8 * 1024, f"the attack did not load the gateway (RSS +{grew} KiB): test is vacuous"


def test_stalled_readers_under_fanout(sec):
    """10 members of a room stop reading (tiny receive buffer) while 10 others
    send 200 messages of 4 KB each (8 MB to every member): each stalled
    connection is cut at --send-queue instead of growing memory; the senders
    are unaffected. (tests/faults/test_f8_slow_consumer.py checks recovery.)"""
    port = sec.gw_ports[1]
    n_stalled, n_senders, n_msgs = 10, 10, 200
    cuts0 = chatlib.metric_sum(chatlib.read_metrics(port), "chatd_ws_slow_consumer_cuts_total")
    room = uid("stall")
    stalled = []
    try:
        for i in range(n_stalled):
            w = seclib.WS(port, token(uid(f"st{i}")), rcvbuf=4096)
            w.read_until({0x1})
            w.send(seclib.frame(0x1, ('{"op":"join","room":"%s","rid":1}' % room).encode()))
            w.read_until({0x1})
            stalled.append(w)

        async def sender():
            c = await Client.connect(port, token(uid("loud")))
            await c.join(room)
            text = "x" * LIMITS["max_text"]
            for i in range(n_msgs):
                await c.send(room, text)
                await asyncio.sleep(1.1 / LIMITS["rate"])
            await c.close()

        async def keep_alive():
            # Any byte counts as liveness: a pong a second keeps the stalled
            # readers from being closed by the ping timeout instead.
            while True:
                for w in stalled:
                    try:
                        w.send(seclib.frame(0xA, b""))
                    except OSError:
                        pass
                await asyncio.sleep(1)

        async def send_all():
            ka = asyncio.ensure_future(keep_alive())
            try:
                await asyncio.gather(*(sender() for _ in range(n_senders)))
            finally:
                ka.cancel()
        t0 = time.monotonic()
        seclib.arun(send_all(), timeout=180)
        peak = sec.rss("gateway1")
        cuts = chatlib.metric_sum(chatlib.read_metrics(port), "chatd_ws_slow_consumer_cuts_total") - cuts0
        print(f"stalled readers: {n_senders * n_msgs} x 4 KB in {time.monotonic() - t0:.1f}s to "
              f"{n_stalled} stalled readers: {cuts:.0f} cut at --send-queue={LIMITS['send_queue']}, "
              f"gateway1 RSS {peak // 1024} MiB")
        assert cuts >= n_stalled, f"only {cuts} of {n_stalled} stalled readers were cut"
    finally:
        for w in stalled:
            w.close()
