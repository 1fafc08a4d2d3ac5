"""The checker shared by every fault test and the soak.

From the clients' records (every send: cid, outcomes, ack id; every message
each client received, live or by `sync`) and PostgreSQL's `messages` table:

- every acked message is stored exactly once, with the acked id and text;
- seqs are dense 1..N per room (and ids unique per room);
- each sender's acked messages have increasing seqs in send order;
- every client's view (after reconnects and `sync`) equals PostgreSQL's;
- a send never acked may be stored (once) only if some attempt's outcome
  was unknown to the client: `unavailable` without "stored":"no" (Kafka
  may have the record, docs/PROTOCOL.md), a closed connection, no reply;
  when every attempt was answered "not stored" it must not be stored;
- strict_unavailable (the partition tests, whose clients resend every
  `unavailable` send with its cid until acked): nothing stored that was
  answered `unavailable` without a later ack of the same cid;
- no (room, user, cid) is stored twice, whatever the answers said;
- nothing stored that no client sent; no request went unanswered (no hang);
- membership as each client's gateway enforces it equals PostgreSQL's
  (Run.probe_membership, run by Run.converge).

Prints one line of counts and returns a Result; .problems must be empty.
"""
import os
from collections import Counter, defaultdict

COUNTS = []   # every line printed, for the pytest terminal summary
# A send's outcomes (harness.send_outcome) after which the message may be
# stored although the client saw no ack.
UNKNOWN_OUTCOMES = {"unavailable(maybe)", "closed", "hang"}


class Result:
    def __init__(self, name):
        self.name = name
        self.problems = []
        self.c = Counter()
        self.recovery = 0.0
        self.line = ""

    def problem(self, kind, msg):
        self.c[kind] += 1
        if sum(1 for p in self.problems if p.startswith(kind + ":")) < 8:
            self.problems.append(f"{kind}: {msg}")

    def assert_ok(self):
        assert not self.problems, (f"{self.line}\n" + "\n".join(self.problems))


def _id_key(run, room, mid):
    """The classifier's {room:R}:id:ID entry (SEQ|TAG, TAG = partition:offset
    of the chat-send record that got the seq), for diagnostics."""
    try:
        return run.cluster.redis_client().get(f"{{room:{room}}}:id:{mid}")
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"<{type(e).__name__}>"


def _kafka_log(run, mid):
    """Where the id is in chat-send (partition:offset of every copy), read
    with kcat from the embedded broker, for diagnostics: tells a record the
    broker never stored from one a consumer skipped."""
    import shutil
    import subprocess
    kcat = shutil.which("kcat")
    if not kcat or not (run.cluster.kafka or os.path.exists(run.cluster.bootstrap_path())):
        return "<no kcat>"
    try:
        out = subprocess.run([kcat, "-C", "-q", "-b", run.cluster.brokers(), "-t", run.cluster.topic_send,
                              "-o", "beginning",
                              "-e", "-f", "%p:%o %s\\n"], capture_output=True, text=True,
                             timeout=60).stdout
        hits = [ln.split(" ", 1)[0] for ln in out.splitlines() if mid and mid in ln]
        return f"{len(out.splitlines())} records read, id at {hits or 'none'}"
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"<{type(e).__name__}>"


def bulk_problems(rows, ids, maybe=()):
    """Records produced straight into chat-send (Cluster.produce_send), as
    rows (room, seq, id, user, body) of their rooms: seqs dense per room,
    every id once (ids in `maybe` may be missing: their produce failed), and
    each sender's texts ("USER N") in seq order."""
    problems = []
    by_room = defaultdict(list)
    seen = Counter(mid for _, _, mid, _, _ in rows)
    for room, seq, mid, user, body in rows:
        by_room[room].append((seq, user, body))
    maybe = set(maybe)
    missing = [m for m in ids if not seen.get(m) and m not in maybe]
    if missing:
        problems.append(f"lost: {len(missing)} of {len(ids)} records not stored, e.g. {missing[:3]}")
    twice = [m for m, k in seen.items() if k > 1]
    if twice:
        problems.append(f"duplicated: {len(twice)} ids stored twice")
    inversions = 0
    for room, lst in by_room.items():
        lst.sort()
        seqs = [s for s, _, _ in lst]
        if seqs != list(range(1, len(seqs) + 1)):
            holes = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
            problems.append(f"not_dense: room {room} missing {holes[:5]} (max {max(seqs)})")
        last = {}
        for seq, user, body in lst:
            i = int(body.split()[-1])
            if user in last and i < last[user]:
                inversions += 1
            last[user] = max(i, last.get(user, -1))
    if inversions:
        problems.append(f"order: {inversions} per-sender order inversions")
    return problems


def _history(run, s):
    """One send's history, as short as shows a problem: its attempts'
    outcomes, when it was first sent and acked (seconds into the run)."""
    t_ack = f"{s.t_ack - run.t0:.1f}s" if s.t_ack else "never"
    return (f"{s.user} {s.cid} room {s.room}: outcomes {s.outcomes}, first sent "
            f"{s.t_first - run.t0:.1f}s, acked {t_ack}, gave up {s.gave_up}")


def check(run, extra_line="", rooms=None, strict_unavailable=False):
    """rooms: the rooms to check (default: every room of every client).
    strict_unavailable: see the module doc."""
    res = Result(run.name)
    rooms = set(rooms) if rooms is not None else {r for c in run.clients for r in c.rooms}
    rows = run.cluster.query("SELECT room, seq, id, user_id, cid, body FROM messages "
                             "WHERE room = ANY(%s)", (list(rooms),))
    by_room = defaultdict(dict)
    by_cid = defaultdict(list)
    id_count = Counter()
    for room, seq, mid, user, cid, body in rows:
        by_room[room][seq] = (mid, user, cid, body)
        id_count[(room, mid)] += 1
        by_cid[(room, user, cid)].append((seq, mid, body))

    # dense seqs, unique ids
    for room in sorted(rooms):
        seqs = sorted(by_room[room])
        if seqs != list(range(1, len(seqs) + 1)):
            missing = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))
            res.problem("not_dense", f"room {room}: {len(seqs)} rows, max seq "
                        f"{seqs[-1] if seqs else 0}, missing {missing[:10]}")
    for (room, mid), n in id_count.items():
        if n > 1:
            res.problem("duplicated", f"room {room}: id {mid} stored {n} times")

    # sends against storage
    sends = [s for c in run.clients for s in c.sends if s.room in rooms]
    sent_keys = set()
    seq_of = {}
    for s in sends:
        key = (s.room, s.user, s.cid)
        sent_keys.add(key)
        stored = by_cid.get(key, [])
        if len(stored) > 1:
            res.problem("duplicated", f"{s.cid} in {s.room} stored {len(stored)} times")
        if s.acked:
            res.c["acked"] += 1
            if not stored:
                res.problem("lost", f"{s.cid} in {s.room} acked (id {s.ack_id}, outcomes "
                            f"{s.outcomes}, first sent {s.t_first - run.t0:.1f}s, acked "
                            f"{s.t_ack - run.t0:.1f}s into the run) but not stored; "
                            f"Redis id key: {_id_key(run, s.room, s.ack_id)}; "
                            f"chat-send: {_kafka_log(run, s.ack_id)}")
                continue
            seq, mid, body = stored[0]
            seq_of[key] = seq
            if mid != s.ack_id:
                res.problem("wrong_id", f"{s.cid}: acked id {s.ack_id}, stored id {mid}")
            if body != s.text:
                res.problem("wrong_text", f"{s.cid}: stored text differs")
        else:
            res.c["unacked"] += 1
            if stored:
                res.c["unacked_stored"] += 1
                if s.outcomes and not any(o in UNKNOWN_OUTCOMES for o in s.outcomes):
                    res.problem("false_not_stored",
                                f"{s.cid} in {s.room}: every attempt answered not stored "
                                f"(outcomes {s.outcomes}) but stored at seq {stored[0][0]}")
                elif "unavailable(maybe)" in s.outcomes:
                    res.c["unavailable_stored"] += 1
                if strict_unavailable and any(o.startswith("unavailable") for o in s.outcomes):
                    res.problem("stored_unavailable", f"stored at seq {stored[0][0]} after "
                                f"`unavailable`, never acked: {_history(run, s)}")
        if s.attempts > 1:
            res.c["resent"] += 1
        if any(o.startswith("unavailable") for o in s.outcomes):
            res.c["sends_unavailable"] += 1
    for key, st in by_cid.items():
        if key not in sent_keys:
            res.problem("phantom", f"stored {key} seq {st[0][0]} was never sent by a client")

    # each sender's order, per room
    per = defaultdict(list)
    for s in sends:
        if s.acked and s.ordered and (s.room, s.user, s.cid) in seq_of:
            per[(s.user, s.room)].append((s.idx, seq_of[(s.room, s.user, s.cid)], s.cid))
    for (user, room), lst in per.items():
        lst.sort()
        for (_, a, ca), (_, b, cb) in zip(lst, lst[1:]):
            if b <= a:
                res.problem("order", f"{user} in {room}: {ca} got seq {a}, later {cb} got {b}")
                break

    # every client converged to PostgreSQL's history
    for c in run.clients:
        if getattr(c, "excluded", False):
            continue
        for room in c.rooms:
            if room not in rooms:
                continue
            want = {seq: v[0] for seq, v in by_room[room].items()}
            got = c.got[room]
            if got != want:
                missing = sorted(set(want) - set(got))
                extra = sorted(set(got) - set(want))
                wrong = sorted(s for s in set(got) & set(want) if got[s] != want[s])
                res.problem("diverged", f"{c.user} room {room}: missing {len(missing)} "
                            f"{missing[:5]} extra {extra[:5]} wrong ids {wrong[:5]}")
            ids = Counter(got.values())
            for mid, n in ids.items():
                if n > 1:
                    res.problem("duplicated", f"{c.user} got id {mid} of {room} at {n} seqs")

    # membership: the gateways' local index against PostgreSQL
    for p in getattr(run, "membership_diff", []):
        res.problem("membership", p)
    res.c["membership_checked"] = getattr(run, "membership_checked", 0)

    for p in run.problems:
        res.problem("client", p)
    for h in run.hangs:
        res.problem("hang", h)

    res.recovery, per_fault = run.recovery()
    res.c["sent"] = len(sends)
    res.c["stored"] = len(rows)
    n_recon = sum(c.reconnects for c in run.clients)
    res.line = (f"[{run.name}] sent={res.c['sent']} acked={res.c['acked']} "
                f"stored={res.c['stored']} lost={res.c['lost']} "
                f"duplicated={res.c['duplicated']} reconnects={n_recon} "
                f"recovery={res.recovery:.2f}s | unacked={res.c['unacked']} "
                f"(stored {res.c['unacked_stored']}, after unavailable "
                f"{res.c['unavailable_stored']}) resent={res.c['resent']} "
                f"unavailable={res.c['sends_unavailable']} hangs={res.c['hang']} "
                f"membership={res.c['membership_checked']} checked, "
                f"{res.c['membership']} wrong "
                f"clients={len(run.clients)}"
                + (f" | {extra_line}" if extra_line else ""))
    if len(per_fault) > 1:
        res.line += " | per fault: " + ", ".join(f"{l}={w:.1f}s" for l, w in per_fault)
    print(res.line, flush=True)
    COUNTS.append(res.line)
    return res
