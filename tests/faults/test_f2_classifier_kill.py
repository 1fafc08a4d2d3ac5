"""Fault 2: a classifier is SIGKILLed under traffic. The group rebalances to
the survivor; re-consumed records keep their seq; nothing acked is lost,
nothing stored twice, seqs dense; clients see everything."""
import asyncio

import checker
import harness


def test_classifier_sigkill(make_cluster):
    c = make_cluster()

    async def body():
        run = harness.Run(c, "f2 classifier SIGKILL")
        rooms, clients, senders = await harness.standard_clients(run, n_rooms=8)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        f = run.fault("classifier0 SIGKILL")
        await asyncio.to_thread(c.kill, "classifier0")
        run.restored(f)
        # session.timeout.ms=3000: the survivor owns every partition after ~3-4 s
        await harness.wait_for(lambda: harness.acked_after(run, f[1] + 5) > 20, 30,
                               "traffic acked after the rebalance")
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run)
        await run.close()
        res.assert_ok()
        # every room's messages after the kill were delivered live as well
        for cl in clients:
            assert all(cl.live[r] > 0 for r in rooms), cl.live
    harness.run_bounded(body(), 120)


def test_new_owner_resumes_at_postgres_offset(make_cluster):
    """A classifier's replacement starts where the dead one's records were
    stored and produced (partition_owners.next_offset: written with each
    store, and for the last batches a second after a partition went quiet),
    not at Kafka's committed offset: commits to Kafka are off here
    (enable.auto.commit=false: Kafka has no offset at all, as in the minute
    between two commits), so reading from Kafka's offset would sequence and
    deliver every earlier record again. The replacement delivers only the
    messages sent after its start."""
    # Batches of 20: the replacement's first batch ends below the offset, so
    # the group path seeks the rest of the way (kafka_consumer_seek).
    c = make_cluster(n_cl=1, cl_args=["--kafka-opt=enable.auto.commit=false",
                                      "--classifier-batch=20"])

    async def body():
        run = harness.Run(c, "f2 resume at the PostgreSQL offset")
        rooms, clients, senders = await harness.standard_clients(run, n_clients=4, n_rooms=8)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        await asyncio.sleep(3)
        await tr.stop()
        old = sum(1 for cl in run.clients for s in cl.sends if s.acked)
        await asyncio.sleep(2.5)   # quiet: the last offsets are flushed after 1 s
        delivered_before = c.metric("classifier0", "chatd_classifier_deliveries_total")
        await asyncio.to_thread(c.kill, "classifier0")
        await asyncio.to_thread(c.restart, "classifier0")
        t0 = harness.now()
        for r in rooms:
            await senders[1].send_msg(r, "first after the restart")
        await run.converge()
        res = checker.check(run)
        resumed = c.metric("classifier0", "chatd_classifier_records_resumed_past_total")
        # --ownership=lease (the embedded broker's default) assigns a taken
        # partition at the PostgreSQL offset itself: nothing below it is
        # fetched to be skipped
        at_pg = c.log_count("classifier0", "event=kafka_assigned", "offset=") - \
            c.log_count("classifier0", "event=kafka_assigned", "offset=-1")
        redelivered = c.metric("classifier0", "chatd_classifier_deliveries_total")
        # the group path seeks to the PostgreSQL offset asynchronously:
        # librdkafka's "in progress" is not a failure
        seek_failed = c.log_count("classifier0", "event=kafka_seek_failed")
        assert seek_failed == 0, f"{seek_failed} seeks logged as failed"
        print(f"\nresume: {old} messages before the kill ({delivered_before:.0f} deliveries); "
              f"the replacement skipped {resumed:.0f} records, made {redelivered:.0f} deliveries "
              f"for {len(rooms)} new messages ({len(c.gw_ports)} gateways), all done "
              f"{harness.now() - t0:.1f} s after its start")
        await run.close()
        res.assert_ok()
        return old, resumed + at_pg, redelivered

    old, resumed, redelivered = harness.run_bounded(body(), 120)
    assert old > 100, "too little traffic to tell"
    # Only the new messages, each to every gateway: none of the `old`
    # records read again from Kafka's offset.
    assert redelivered <= 8 * len(c.gw_ports), \
        f"{redelivered} deliveries: the replacement re-processed earlier records"
    assert resumed > 0, ("the replacement neither skipped a record below the PostgreSQL offset "
                         "nor was assigned a partition at it")
