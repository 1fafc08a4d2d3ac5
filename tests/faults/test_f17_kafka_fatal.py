"""Fault 17: a classifier's Kafka producer fails for good under traffic (the
fatal error librdkafka 2.0.2 raises when an isolated partition leader
returns: docs/RELIABILITY.md P5; injected here with rd_kafka_test_fatal_error,
POST /faults/kafka-fatal). The classifier must not keep partitions it can no
longer sequence: it abandons its batches uncommitted, leaves the group (or
gives back its lease) and exits 3 for its supervisor to restart it. The
survivor re-reads the uncommitted records: every acked message sequenced and
stored once, seqs dense, every room flowing again within FATAL_RECOVER_S."""
import asyncio

import checker
import chatlib
import harness

# From the fault to every client seeing a new message in every room. Measured
# 1-2 s (docs/RELIABILITY.md, fault 17); before the exit on a fatal error the
# rooms of the failed classifier's partitions never moved.
FATAL_RECOVER_S = 15
EXIT_KAFKA_FATAL = 3  # chatd.c CHATD_EXIT_KAFKA_FATAL


def test_classifier_kafka_fatal_exits_and_partitions_move(make_cluster):
    c = make_cluster(cl_args=["--fault-injection"])

    async def body():
        run = harness.Run(c, "f17 classifier producer fatal")
        rooms, clients, senders = await harness.standard_clients(run, n_rooms=8)
        tr = harness.Traffic(senders).start()
        await run.warm_up()
        # classifier0 sequences now (it owns partitions of the rooms: a group's
        # first assignment may still be moving right after the warm-up)
        for _ in range(20):
            before = c.metric("classifier0", "chatd_classifier_batches_total")
            await asyncio.sleep(0.5)
            if c.metric("classifier0", "chatd_classifier_batches_total") > before:
                break
        else:
            raise AssertionError("classifier0 sequenced nothing for 10 s: nothing to move")
        p = c.procs["classifier0"]
        p.stopping, p.expect_clean_exit = True, False  # its exit is the point
        f = run.fault("classifier0 producer fatal")
        st, _, data = await asyncio.to_thread(chatlib.http_request, c.ports["classifier0"],
                                              "POST", "/faults/kafka-fatal")
        assert st == 200, (st, data)
        run.restored(f)
        await harness.wait_for(
            lambda: all(cl.last_adv[r] > f[1] for cl in run.clients for r in cl.rooms),
            FATAL_RECOVER_S, "every room flowing again after the fatal error", step=0.1)
        flowing = harness.now() - f[1]
        await harness.wait_for(lambda: not p.alive(), 10, "classifier0's exit after the fatal error")
        exited = harness.now() - f[1]  # at most: it may have exited first
        await asyncio.sleep(1)
        await tr.stop()
        await run.converge()
        res = checker.check(run)
        await run.close()
        print(f"\nf17: classifier0 gone within {exited:.1f}s of the fatal error (rc "
              f"{p.p.returncode}); every room flowing again after {flowing:.1f}s")
        res.assert_ok()
        return p.p.returncode

    rc = harness.run_bounded(body(), 120)
    assert rc == EXIT_KAFKA_FATAL, f"classifier0 exited with {rc}, not {EXIT_KAFKA_FATAL}"
    assert c.log_count("classifier0", "event=kafka_fatal_exit") == 1
