"""checker.check(strict_unavailable=True) reports a message stored after an
`unavailable` answer that no later ack of its cid covers (issue 21), and
accepts one that was acked on a resend. No servers: a fake run."""
import checker
import harness


class FakeCluster:
    def __init__(self, rows):
        self.rows = rows

    def query(self, sql, args=()):
        return self.rows


class FakeClient:
    def __init__(self, sends):
        self.user, self.rooms, self.sends = "u1", ["r"], sends
        self.got = {"r": {1: "id1"}}
        self.reconnects = 0


class FakeRun:
    def __init__(self, sends):
        self.name = "strict"
        self.cluster = FakeCluster([("r", 1, "id1", "u1", "u1.1", "hello")])
        self.clients = [FakeClient(sends)]
        self.problems, self.hangs = [], []
        self.t0 = harness.now()

    def recovery(self):
        return 0.0, []


def send(outcomes, acked):
    s = harness.SendRecord("u1", "r", "u1.1", "hello", 1)
    s.outcomes = list(outcomes)
    s.acked, s.ack_id = acked, ("id1" if acked else None)
    s.t_ack = harness.now() if acked else None
    return s


def test_stored_after_unavailable_without_a_later_ack():
    run = FakeRun([send(["unavailable(maybe)"], acked=False)])
    assert not checker.check(run).problems            # the fault suite's rule allows it
    res = checker.check(run, strict_unavailable=True)
    assert any(p.startswith("stored_unavailable:") for p in res.problems), res.problems
    assert "outcomes ['unavailable(maybe)']" in res.problems[0]   # the send's history


def test_stored_after_unavailable_then_acked():
    run = FakeRun([send(["unavailable(maybe)", "ack"], acked=True)])
    assert not checker.check(run, strict_unavailable=True).problems
