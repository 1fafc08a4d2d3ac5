#!/usr/bin/python3
"""pgcost_store: the classifier's two statements per batch, alone.

For the store's cost between two `make bench` runs (docs/PERFORMANCE.md,
"PostgreSQL's cost per message since issue 24"): one PostgreSQL (as
bench/run.py starts it, plus pg_stat_statements), then for each NAME=TREE
in turn a new database migrated by TREE's store/migrations, and a loop of
db_known_ids then db_store_msgs as TREE's store/db.c prepares them (text
taken from the C source), --batches batches of --batch records in --rooms
rooms, each record with a cid (--nocid: none). Prints per variant the
client's wall time, the backend's CPU per batch (/proc/PID/schedstat) and
PostgreSQL's execution time per statement. Compare variants interleaved
(A B B A): the machine's load moves every figure.

    /usr/bin/python3 bench/pgcost_store.py old=/tmp/old57 new=. old2=/tmp/old57 new2=.
    echo 'ALTER TABLE messages DISABLE TRIGGER messages_raise_head;' > /tmp/notrig.sql
    /usr/bin/python3 bench/pgcost_store.py base=. notrig=. --extra-sql notrig=/tmp/notrig.sql

Per variant: --extra-sql NAME=FILE runs FILE after the migrations,
--session-sql NAME=FILE on the loop's session, --known-sql/--store-sql
NAME=FILE replace a statement's text. A NAME containing "nocid" sends no
cids, "p2" drops next month's partition, "m12" makes 12 older months.
"""
import argparse, os, re, sys, time, random, subprocess, tempfile, shutil
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B
import psycopg2

def c_stmt(src, func, var="st"):
    """The text of `static struct pg_stmt VAR` in FUNC of store/db.c, with
    the string macros it names (#define NAME "..." inside the function)
    expanded."""
    i = src.index(f"\nvoid {func}(")
    end = src.index("\n}\n", i)
    j = src.index(f"static struct pg_stmt {var} = {{", i)
    if j > end:
        raise SystemExit(f"pgcost_store: no pg_stmt {var} in {func}")
    k = src.index("};", j)
    macros = {m.group(1): "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2)))
              for m in re.finditer(r"#define (\w+) ((?:[^\n]*\\\n)*[^\n]*)", src[i:end])}
    body = re.sub(r"/\*.*?\*/", "", src[j:k], flags=re.S)
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|\b([A-Z][A-Z0-9_]+)\b', body):
        out.append(m.group(1) if m.group(1) is not None else macros.get(m.group(2), ""))
    return "".join(out)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+")  # NAME=DIR
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--rooms", type=int, default=400)
    ap.add_argument("--nocid", action="store_true")
    ap.add_argument("--extra-sql", action="append", default=[], help="NAME=file.sql applied after migrations")
    ap.add_argument("--known-sql", action="append", default=[], help="NAME=file: known_ids SQL override")
    ap.add_argument("--store-sql", action="append", default=[], help="NAME=file: store SQL override")
    ap.add_argument("--session-sql", action="append", default=[], help="NAME=file run on the session first")
    ap.add_argument("--months-before", type=int, default=0, help="partitions made for earlier months")
    a = ap.parse_args()
    extra = dict(x.split("=", 1) for x in a.extra_sql)
    kover = dict(x.split("=", 1) for x in a.known_sql)
    gucs = dict(x.split("=", 1) for x in a.session_sql)
    sover = dict(x.split("=", 1) for x in a.store_sql)
    work = tempfile.mkdtemp(prefix="pgcost-micro-"); os.chmod(work, 0o755)
    B.pg_server_args = (lambda f: lambda d, p, fs=True: f(d, p, fs) + ["-c", "shared_preload_libraries=pg_stat_statements",
        "-c", "pg_stat_statements.track=all"])(B.pg_server_args)
    st = B.Stores(work)
    try:
        base = psycopg2.connect(st.conninfo.replace("dbname=chatd", "dbname=postgres")); base.autocommit = True
        for t in a.trees:
            name, d = t.split("=", 1)
            bc = base.cursor(); bc.execute(f"DROP DATABASE IF EXISTS x_{name}"); bc.execute(f"CREATE DATABASE x_{name}")
            conn = psycopg2.connect(st.conninfo.replace("dbname=chatd", f"dbname=x_{name}")); conn.autocommit = True
            cur = conn.cursor()
            mdir = os.path.join(d, "store/migrations")
            for f in sorted(os.listdir(mdir)):
                cur.execute(open(os.path.join(mdir, f)).read())
            if name in extra:
                cur.execute(open(extra[name]).read())
            now = int(time.time() * 1000)
            mb = 12 if 'm12' in name else a.months_before
            if 'p2' in name:
                cur.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'messages'::regclass AND c.relname ~ 'p[0-9]{6}$' ORDER BY 1 DESC LIMIT 1"); cur.execute('DROP TABLE ' + cur.fetchone()[0])
            for k in range(mb):
                cur.execute("SELECT chatd_messages_partition(%s)", (now - (k + 1) * 31 * 86400000,))
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cur.execute("INSERT INTO partition_owners (topic, partition, epoch, owner) VALUES ('t', 0, 1, 'me')")
            src = open(os.path.join(d, "store/db.c")).read()
            ksql = open(kover[name]).read() if name in kover else c_stmt(src, "db_known_ids", "small" if a.batch < 10 else "large")
            ssql = open(sover[name]).read() if name in sover else c_stmt(src, "db_store_msgs")
            nk = max(int(x) for x in re.findall(r"\$(\d+)", ksql)); ns = max(int(x) for x in re.findall(r"\$(\d+)", ssql))
            cur.execute(f"PREPARE k AS {ksql}"); cur.execute(f"PREPARE s AS {ssql}")
            nocid = a.nocid or 'nocid' in name
            rnd = random.Random(1)
            seqs = {}
            cur.execute("SELECT pg_stat_statements_reset()")
            if name in gucs:
                cur.execute(open(gucs[name]).read())
            cur.execute("SELECT pg_backend_pid()"); bpid = cur.fetchone()[0]; cpu0 = int(open(f'/proc/{bpid}/schedstat').read().split()[0]) / 1e9
            def arr(v): return "{" + ",".join('"%s"' % x for x in v) + "}"
            def iarr(v): return "{" + ",".join(str(x) for x in v) + "}"
            t0 = time.monotonic(); tk = ts_ = 0.0
            for b in range(a.batches):
                rooms, seq, ids, users, cids, bodies, tss = [], [], [], [], [], [], []
                for i in range(a.batch):
                    r = f"room-{rnd.randrange(a.rooms)}"
                    seqs[r] = seqs.get(r, 0) + 1
                    rooms.append(r); seq.append(seqs[r]); ids.append("%032x" % rnd.getrandbits(128))
                    users.append(f"u{rnd.randrange(10)}-{r}"); cids.append(None if nocid else f"c{b}-{i}")
                    bodies.append("x" * 40); tss.append(int(time.time() * 1000))
                kp = [arr(rooms), arr(ids), iarr(tss), iarr(["f" if nocid else "t"] * a.batch), str(1 << 62), str(1 << 62)][:nk]
                q0 = time.monotonic()
                cur.execute("EXECUTE k(" + ",".join(["%s"] * nk) + ")", kp)
                cur.fetchall()
                q1 = time.monotonic()
                carr = "{" + ",".join("NULL" if c is None else '"%s"' % c for c in cids) + "}"
                sp = [arr(rooms), iarr(seq), arr(ids), arr(users), carr, arr(bodies), iarr(tss), "{0}", "{1}", "t",
                      "{" + ",".join(["m"] * a.batch) + "}", "{" + ",".join(["NULL"] * a.batch) + "}", "{%d}" % (b + 1)][:ns]
                cur.execute("EXECUTE s(" + ",".join(["%s"] * ns) + ")", sp)
                r = cur.fetchone()
                q2 = time.monotonic()
                tk += q1 - q0; ts_ += q2 - q1
                assert r[0] is True and r[1] == a.batch, r
            wall = time.monotonic() - t0
            cpu = int(open(f'/proc/{bpid}/schedstat').read().split()[0]) / 1e9 - cpu0
            cur.execute("SELECT query, calls, total_exec_time, rows FROM pg_stat_statements "
                        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT 6")
            n = a.batches * a.batch
            print(f"== {name} ({d}) batches {a.batches} x {a.batch}: client wall µs/batch known {tk/a.batches*1e6:.0f} store {ts_/a.batches*1e6:.0f}; µs/msg all {wall/n*1e6:.1f}; backend CPU µs/batch {cpu/a.batches*1e6:.0f} µs/msg {cpu/n*1e6:.1f}")
            for q, calls, ex, rows in cur.fetchall():
                print(f"   {ex*1000/max(calls,1):8.1f} µs/call  {ex*1000/n:7.1f} µs/msg  calls {calls}  {' '.join(q.split())[:100]}")
            conn.close()
            bc.execute(f"DROP DATABASE x_{name}")
    finally:
        st.stop(); shutil.rmtree(work, ignore_errors=True)

main()
