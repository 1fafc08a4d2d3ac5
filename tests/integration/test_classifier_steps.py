"""chatd_classifier_step_seconds (roles/classifier.c, docs/ARCHITECTURE.md
"Metrics"): every batch observes each step once, the in-batch steps add up
to chatd_classifier_batch_seconds, and the waits before a batch (queue,
since_produced) are counted once per batch started."""
import asyncio
import time

from chatlib import arun, metric_sum, read_metrics, uid

IN_BATCH = ["fence", "lookup", "sequence", "store", "route", "order", "produce", "retry"]
BEFORE = ["queue", "since_produced"]


def _scrape(cluster):
    out = {}
    for port in cluster.cl_ports:
        for k, v in read_metrics(port).items():
            out[k] = out.get(k, 0.0) + v
    return out


def _quiet(cluster, timeout=15):
    """Metrics once every started batch is committed and the figures stand
    still for a moment (batches of other tests' late records included)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        m = _scrape(cluster)
        started = metric_sum(m, "chatd_classifier_batches_total")
        done = metric_sum(m, "chatd_classifier_batch_seconds_count")
        if started == done and (started, done) == last:
            return m
        last = (started, done)
        time.sleep(0.3)
    raise AssertionError(f"classifiers not quiet: {last} (batches started, committed)")


def test_steps_count_every_batch_and_add_up_to_the_batch(cluster):
    before = _quiet(cluster)
    rooms = [uid("steps") for _ in range(4)]
    ua, ub = uid("a"), uid("b")

    async def body():
        a = await cluster.client(ua, gw=0)
        b = await cluster.client(ub, gw=1)
        for r in rooms:
            assert await a.join(r) == 0 and await b.join(r) == 0
        await asyncio.gather(*(a.send_many(r, [f"m{i}" for i in range(25)]) for r in rooms))
        for r in rooms:
            await b.wait_seqs(r, range(1, 26))
        await a.close()
        await b.close()
    arun(body())
    after = _quiet(cluster)

    def d(name, **labels):
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    batches = d("chatd_classifier_batch_seconds_count")
    started = d("chatd_classifier_batches_total")
    batch_s = d("chatd_classifier_batch_seconds_sum")
    assert batches >= 2 and started == batches, (batches, started)
    counts = {s: d("chatd_classifier_step_seconds_count", step=s) for s in IN_BATCH + BEFORE}
    sums = {s: d("chatd_classifier_step_seconds_sum", step=s) for s in IN_BATCH + BEFORE}
    assert all(counts[s] == batches for s in IN_BATCH + BEFORE), (batches, counts)
    # The same clock reads bound both: the steps partition the batch's time.
    in_batch = sum(sums[s] for s in IN_BATCH)
    assert abs(in_batch - batch_s) <= 1e-6 * batches + 1e-9 * batch_s, (in_batch, batch_s, sums)
    # PostgreSQL and Redis were asked and answered in every batch (joins and
    # messages both go through the lookup; messages through the store).
    for s in ("lookup", "sequence", "store", "produce"):
        assert sums[s] > 0, (s, sums)
    assert sums["retry"] == 0, sums
    assert all(sums[s] >= 0 for s in BEFORE), sums
