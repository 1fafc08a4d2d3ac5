"""Fault 5: Kafka faults through the embedded broker's fault-injection API
(--fault-injection): the broker down for a few seconds, down longer than the
producer's message.timeout.ms (10 s), and injected request errors on Produce,
Fetch and OffsetCommit.

A send is acked only when Kafka has it: every acked message is stored once.
A send that cannot be written gets `unavailable`, never a false ack. Half
the senders give up after `unavailable`, the other half resend it with the
same cid (then it must be acked once and stored once). An `unavailable`
whose produce request reached the broker says "stored":"maybe" and the
message may be stored (once); one that says "stored":"no" must not be (the
checker fails it). test_kafka_send_in_doubt makes the first case happen.
"""
import asyncio

import pytest

import checker
import harness


needs_faults = pytest.mark.skipif(not harness.has_flag("fault-injection") or harness.kafkamode.REAL,
                                  reason="chatd has no --fault-injection, or the suite runs on real "
                                         "Kafka (the embedded broker's fault API)")


def run_kafka_faults(make_cluster, label, long_outage):
    c = make_cluster(broker_args=["--fault-injection"])

    def post(path, body=None):
        st, data = c.broker_fault(path, body)
        assert st == 200 and b'"ok":true' in data, f"POST {path} {body}: {st} {data!r}"

    async def body():
        run = harness.Run(c, label)
        rooms, clients, senders = await harness.standard_clients(run)
        give_up = set(s.user for s in senders[::2])
        tr = harness.Traffic(senders, resend=lambda cl: cl.user not in give_up).start()
        await run.warm_up()

        times = []

        async def outage(label, seconds):
            f = run.fault(label)
            await asyncio.to_thread(post, "/faults/broker/1/down")
            await asyncio.sleep(seconds)
            await asyncio.to_thread(post, "/faults/broker/1/up")
            run.restored(f)
            await harness.wait_for(lambda: all(cl.last_adv[x] > f[2] for cl in clients
                                               for x in rooms) and harness.acked_after(run, f[2]),
                                   40, f"traffic flowing again after {label}")
            t_ack = min(s.t_ack for cl in senders for s in cl.sends
                        if s.t_ack and s.t_ack > f[2])
            times.append(f"{label}: first ack {t_ack - f[2]:.1f}s after up")
            return f

        unav = []
        if long_outage:
            long = await outage("broker down 12s", 12)
            # sends issued early in the long outage outlived message.timeout.ms
            unav = [s for cl in senders for s in cl.sends
                    if any(map(harness.unavailable, s.outcomes)) and s.t_first < long[2]]
            assert unav, "no send answered unavailable during a 12 s broker outage"
        else:
            await outage("broker down 2s", 2)   # < session.timeout.ms: no rebalance
            f = run.fault("request errors")
            for api, errs in ((0, [7, 7, 7, 6, 6]), (1, [6, 6, 6, 7]), (8, [7, 7, 6])):
                await asyncio.to_thread(post, "/faults/request-errors",
                                        {"api_key": api, "errors": errs})
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            run.restored(f)
            await harness.wait_for(lambda: all(cl.last_adv[x] > f[2] for cl in clients
                                               for x in rooms), 30, "traffic after request errors")
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        windows = ", ".join(f"{x[0]} {x[1] - run.t0:.1f}-{x[2] - run.t0:.1f}s"
                            for x in run.faults)
        res = checker.check(run, extra_line=f"unavailable_in_long_outage={len(unav)}; "
                            + "; ".join(times) + f"; windows: {windows}")
        await run.close()
        res.assert_ok()
    harness.run_bounded(body(), 150)


@needs_faults
def test_kafka_short_outage_and_request_errors(make_cluster):
    run_kafka_faults(make_cluster, "f5 kafka: 2 s outage + request errors", long_outage=False)


# Known open bug: in 2 of ~16 runs an acknowledged message was never
# sequenced after a 12 s outage that expired the classifiers' sessions
# (revoked with lost=1, reassigned, revoked again while a batch was being
# retried). Until it is found this case may fail without failing the suite;
# an xpass is reported as such, never as a plain pass.
@needs_faults
def test_kafka_long_outage(make_cluster):
    run_kafka_faults(make_cluster, "f5 kafka: 12 s outage", long_outage=True)


def _stored(c, room, cid):
    return c.query("SELECT seq, id FROM messages WHERE room = %s AND cid = %s", (room, cid))


@needs_faults
def test_kafka_send_in_doubt(make_cluster):
    """The broker appends a produce at once but answers it 4 s later, past
    the gateway's message.timeout.ms (1.5 s): librdkafka reports the record
    "possibly persisted", and it is stored although the client was told
    `unavailable`. The reply says "stored":"maybe"; a send queued behind it
    (one request in flight on the embedded broker), never sent, says
    "stored":"no" and is not stored. The in-doubt message resent with its
    cid after it was stored is acked with the same id and stored once; one
    nobody resends is stored once, and the checker accepts both."""
    c = make_cluster(broker_args=["--fault-injection"], n_gw=1, n_cl=1,
                     gw_args=["--kafka-opt=message.timeout.ms=1500"])

    def post(path, body):
        st, data = c.broker_fault(path, body)
        assert st == 200 and b'"ok":true' in data, f"POST {path} {body}: {st} {data!r}"

    for path, bad, want in (("/faults/broker/1/rtt", "not json", 400),
                            ("/faults/broker/1/rtt", {"rtt": 5}, 400),
                            ("/faults/broker/1/rtt", {"rtt_ms": -1}, 400),
                            ("/faults/broker/1/rtt", {"rtt_ms": 60001}, 400),
                            ("/faults/broker/2/rtt", {"rtt_ms": 5}, 404),
                            ("/faults/broker/99999999999/rtt", {"rtt_ms": 5}, 404)):
        st, data = c.broker_fault(path, bad)
        assert st == want, f"POST {path} {bad!r}: {st} {data!r}"

    async def body():
        run = harness.Run(c, "f5 kafka: send in doubt")
        room = harness.rooms_spanning(1)[0]
        snd = await run.client(rooms=[room]).start()
        await run.client(rooms=[room]).start()
        # acked first: the gateway's producer has its metadata and connection
        assert (await snd.send_msg(room, "before")).acked

        async def in_doubt(label, queued_behind):
            f = run.fault(label)
            await asyncio.to_thread(post, "/faults/broker/1/rtt", {"rtt_ms": 4000})
            recs = [snd._new_send(room, f"{label} {k}") for k in range(1 + queued_behind)]
            tasks = []
            for rec in recs:
                tasks.append(asyncio.ensure_future(
                    snd.request("send", room=room, text=rec.text, cid=rec.cid)))
                await asyncio.sleep(0.3)    # past linger.ms: not in the first request
            replies = await asyncio.gather(*tasks)
            await asyncio.to_thread(post, "/faults/broker/1/rtt", {"rtt_ms": 0})
            run.restored(f)
            for rec, r in zip(recs, replies):
                rec.outcomes.append(harness.send_outcome(r))
                assert r.get("op") == "error" and r.get("code") == "unavailable", r
                assert isinstance(r.get("message"), str), r
            assert replies[0].get("stored") == "maybe", replies[0]
            for r in replies[1:]:
                assert r.get("stored") == "no", r
            # the broker has it: sequenced and stored although unacknowledged
            await harness.wait_for(lambda: _stored(c, room, recs[0].cid), 30,
                                   f"{recs[0].cid} (answered unavailable) stored")
            return recs

        first, never_sent = await in_doubt("in doubt, then resent", 1)
        rec = await snd.send_msg(room, first.text, rec=first)
        assert rec.acked and rec.outcomes == ["unavailable(maybe)", "ack"], rec.outcomes
        (given_up,) = await in_doubt("in doubt, given up", 0)
        assert (await snd.send_msg(room, "after")).acked
        await run.converge()

        res = checker.check(run, rooms=[room])
        await run.close()
        res.assert_ok()
        assert len(_stored(c, room, first.cid)) == 1
        assert _stored(c, room, first.cid)[0][1] == first.ack_id
        assert len(_stored(c, room, given_up.cid)) == 1
        assert _stored(c, room, never_sent.cid) == []
        assert res.c["unavailable_stored"] == 1, res.line   # given_up

    harness.run_bounded(body(), 150)
