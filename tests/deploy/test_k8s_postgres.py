"""The production overlay's PostgreSQL (k8s/components/postgres-standby), as
rendered, run as real processes (Debian's PostgreSQL 15, the image's
major version): a primary started with the render's arguments and
pg_hba.conf (initialised as the image does: superuser chatd with a
password), the standby's start script (pg_basebackup with the password from
PGPASSWORD, standby.signal and primary_conninfo, then a hot standby), and a chatd configured with the
render's CHATD_PG. Checked: the standby streams and is read-only, the
password is on no volume, chatd stores on the primary (libpq skips the
read-only standby), and after the documented manual promotion (primary stopped
first, `pg_ctl promote`) chatd stores on the former standby without a
restart, nothing acknowledged lost. Only addresses, ports and paths are
rewritten (pod DNS names to 127.0.0.1 and two ports; the pods' directories
to temp ones; a socket directory per server)."""
import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time

import psycopg2
import pytest

from k8srender import Render
from chatlib import Proc, arun, free_port, uid
from itconf import PG_BIN

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
PASSWORD = "0123456789abcdef0123456789abcdef01234567"


def render():
    r = Render("production")
    primary = r.sts_spec("postgres")
    hba = r.volume_configmap(primary, "hba")
    standby = r.sts_spec("postgres-standby")["containers"][0]
    return primary["containers"][0], hba["data"]["pg_hba.conf"], standby, r.chatd_config()


def rewrite(text, subs):
    for old, new in subs:
        assert old in text, f"{old!r} not in the rendered text any more:\n{text}"
        text = text.replace(old, new)
    return text


def as_postgres(argv, **kw):
    r = subprocess.run(argv, user="postgres", group="postgres", extra_groups=[], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60, **kw)
    assert r.returncode == 0, f"{argv}: {r.stdout.decode(errors='replace')}"


def connect(port, dbname="chatd"):
    return psycopg2.connect(host="127.0.0.1", port=port, user="chatd", password=PASSWORD, dbname=dbname,
                            connect_timeout=2)


def wait(what, fn, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


def query(port, sql):
    with connect(port) as c, c.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.fixture
def pg_pair():
    if not shutil.which("kubectl") or not os.path.exists(f"{PG_BIN}/pg_basebackup"):
        pytest.skip("needs kubectl and PostgreSQL 15")
    pc, hba, sc, cfg = render()
    root = tempfile.mkdtemp(prefix="chatd-k8s-pg-")
    os.chmod(root, 0o755)
    dirs = {n: os.path.join(root, n) for n in ("hba", "primary", "primary-sock", "standby", "standby-sock")}
    for d in dirs.values():
        os.makedirs(d, mode=0o700)
        shutil.chown(d, "postgres", "postgres")
    os.chmod(dirs["hba"], 0o755)
    with open(os.path.join(dirs["hba"], "pg_hba.conf"), "w") as f:
        f.write(hba)
    procs = []
    try:
        # The image's first start: initdb with POSTGRES_USER as the superuser
        # and POSTGRES_PASSWORD, then POSTGRES_DB.
        pw = os.path.join(root, "pw")
        with open(pw, "w") as f:
            f.write(PASSWORD)
        shutil.chown(pw, "postgres", "postgres")
        pdata = os.path.join(dirs["primary"], "pgdata")
        as_postgres([f"{PG_BIN}/initdb", "-D", pdata, "-U", "chatd", f"--pwfile={pw}", "--no-sync",
                     "-E", "UTF8", "--locale=C"])
        os.unlink(pw)
        pport, sport = free_port(), free_port()
        # The primary pod: its script, as rendered (the image's entrypoint
        # then only starts postgres: the volume was initialised above).
        pscript = rewrite(pc["args"][0], [("peer=postgres-standby-0.postgres-standby", "peer=127.0.0.1"),
                                          ("port=5432", f"port={sport}"),
                                          ("/etc/postgresql/hba", dirs["hba"]),
                                          ("exec docker-entrypoint.sh postgres -c",
                                           f"exec postgres -p {pport} -k {dirs['primary-sock']} -c "
                                           "listen_addresses=127.0.0.1 -c fsync=off -c")])
        penv = {e["name"]: e.get("value") for e in pc["env"]}
        assert penv["PGDATA"] == "/var/lib/postgresql/data/pgdata" and "PGPASSWORD" in penv

        def start_primary(wait_up=True):
            # PGPORT: the peer's, for the script's psql and pg_basebackup.
            p = Proc("pg-primary", pc["command"] + [pscript], root, user="postgres",
                     env=dict(os.environ, PATH=f"{PG_BIN}:{os.environ['PATH']}", PGDATA=pdata,
                              PGPASSWORD=PASSWORD, PGPORT=str(sport), PGCONNECT_TIMEOUT="5"))
            procs.append(p)
            if wait_up:
                wait("the primary up", lambda: connect(pport, "postgres").close() or True, 60)
            return p
        primary = start_primary()
        c = connect(pport, "postgres")
        c.autocommit = True
        c.cursor().execute("CREATE DATABASE chatd")
        c.close()
        # The standby pod: its script, as rendered.
        sdata = os.path.join(dirs["standby"], "pgdata")
        script = rewrite(sc["args"][0], [("-h postgres-0.postgres", f"-h 127.0.0.1 -p {pport}"),
                                         ("host=postgres-0.postgres port=5432", f"host=127.0.0.1 port={pport}"),
                                         ("/etc/postgresql/hba", dirs["hba"]),
                                         ("exec postgres -c", f"exec postgres -k {dirs['standby-sock']} -c "
                                                              "listen_addresses=127.0.0.1 -c")])
        env = {e["name"]: e.get("value") for e in sc["env"]}
        assert env["PGDATA"] == "/var/lib/postgresql/data/pgdata" and "PGPASSWORD" in env
        def start_standby(path_first=None):
            path = f"{PG_BIN}:{os.environ['PATH']}"
            p = Proc("pg-standby", sc["command"] + [script], root, user="postgres",
                     env=dict(os.environ, PATH=f"{path_first}:{path}" if path_first else path, PGDATA=sdata,
                              PGPASSWORD=PASSWORD, PGPORT=str(sport)))
            procs.append(p)
            if not path_first:
                wait("the standby up, in recovery", lambda: query(sport, "SELECT pg_is_in_recovery()"), 60)
            return p
        standby = start_standby()
        yield cfg, pport, sport, primary, sdata, sc, (standby, start_standby, pdata, start_primary, root)
    finally:
        for p in procs:
            p.stop(sig=signal.SIGINT, timeout=20)
        shutil.rmtree(root, ignore_errors=True)


def test_chatd_follows_the_manifests_standby(pg_pair, start_all_instance):
    cfg, pport, sport, primary, sdata, sc, _ = pg_pair
    assert query(sport, "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    with open(os.path.join(sdata, "postgresql.auto.conf")) as f:
        auto = f.read()
    assert "primary_conninfo" in auto and PASSWORD not in auto, "the password was written to the volume"
    conninfo = rewrite(cfg["CHATD_PG"], [("postgres-0.postgres", "127.0.0.1"),
                                         ("postgres-standby-0.postgres-standby", "127.0.0.1"),
                                         ("port=5432,5432", f"port={pport},{sport}")])
    assert "target_session_attrs=read-write" in conninfo
    inst = start_all_instance("k8s-pg", [f"--pg={conninfo}"], env={"PGPASSWORD": PASSWORD})
    room = uid("k8spg")

    async def body():
        a = await inst.client(uid("a"))
        await a.join(room)
        await a.send_many(room, ["1", "2"])
        await a.wait_seqs(room, [1, 2])
        n = await asyncio.to_thread(query, pport, "SELECT count(*) FROM messages")
        assert n == 2
        await asyncio.to_thread(wait, "both messages on the standby",
                                lambda: query(sport, "SELECT count(*) FROM messages") == 2, 20)
        # The documented promotion: the primary fenced (stopped) first, then
        # the command of standby.yaml's header, with the pod's PGDATA.
        await asyncio.to_thread(primary.stop, signal.SIGINT, 20)
        doc = open(os.path.join(REPO, "k8s", "components", "postgres-standby", "standby.yaml")).read()
        assert "pg_ctl promote -D /var/lib/postgresql/data/pgdata" in doc
        await asyncio.to_thread(subprocess.run, [f"{PG_BIN}/pg_ctl", "promote", "-D", sdata, "-w"],
                                user="postgres", group="postgres", extra_groups=[], check=True,
                                stdout=subprocess.DEVNULL, timeout=60)
        t0 = time.monotonic()
        r = None
        while time.monotonic() - t0 < 60:
            r = await a.req("send", room=room, text="3", cid="k8spg-3", timeout=20)
            if r.get("op") == "ack":
                break
            await asyncio.sleep(0.5)
        assert r.get("op") == "ack", r
        await a.wait_seqs(room, [3], timeout=30)
        await a.close()
    arun(body(), 150)
    assert query(sport, "SELECT count(*) FROM messages") == 3
    assert not query(sport, "SELECT pg_is_in_recovery()")


def standby_ready(sc, sdata, sport):
    """The standby's readinessProbe, as rendered, against its socket."""
    sock = os.path.join(os.path.dirname(os.path.dirname(sdata)), "standby-sock")
    r = subprocess.run(sc["readinessProbe"]["exec"]["command"], user="postgres", group="postgres",
                       extra_groups=[], capture_output=True, timeout=20,
                       env=dict(os.environ, PATH=f"{PG_BIN}:{os.environ['PATH']}", PGHOST=sock, PGPORT=str(sport)))
    return r.returncode == 0


def test_standby_stopped_for_a_while_catches_up(pg_pair):
    """A standby pod stopped (rescheduled, its node drained) while the
    primary writes and checkpoints catches up when it is back: the
    primary kept its WAL in the standby's replication slot. Without a slot
    the checkpoints recycle the segments it needs ("requested WAL segment
    ... has already been removed") and it never streams again. Its
    readiness says whether it streams (pg_isready said ready regardless)."""
    cfg, pport, sport, primary, sdata, sc, (standby, start_standby, _, _, _) = pg_pair
    wait("the standby streaming", lambda: query(sport, "SELECT status FROM pg_stat_wal_receiver") == "streaming", 20)
    standby.stop(sig=signal.SIGINT, timeout=20)
    c = connect(pport)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("CREATE TABLE k8s_wal (n int)")
    for i in range(4):
        cur.execute("INSERT INTO k8s_wal VALUES (%s)", (i,))
        cur.execute("SELECT pg_switch_wal()")
        cur.execute("CHECKPOINT")
    c.close()
    start_standby()
    wait("the standby streaming again", lambda: query(sport, "SELECT status FROM pg_stat_wal_receiver") == "streaming", 30)
    wait("the rows written while it was stopped on the standby",
         lambda: query(sport, "SELECT count(*) FROM k8s_wal") == 4, 20)
    # Its readiness says whether it is a live copy: ready while streaming,
    # unready once the primary is gone although it still answers queries.
    assert standby_ready(sc, sdata, sport)
    primary.stop(sig=signal.SIGINT, timeout=20)
    assert query(sport, "SELECT pg_is_in_recovery()")
    wait("the standby unready without its primary", lambda: not standby_ready(sc, sdata, sport), 20)


def test_promotion_fences_the_old_primary_and_copies_it_back(pg_pair):
    """After the documented promotion, the old primary's pod started again
    on its old volume (any `kubectl apply -k` sets replicas: 1 back) does
    not run: a second read-write node, first in CHATD_PG's hosts, would take
    chatd's writes on stale data. With its volume deleted (DEPLOY.md's step)
    it copies the promoted standby and streams from it: a standby again."""
    cfg, pport, sport, primary, sdata, sc, (standby, start_standby, pdata, start_primary, _) = pg_pair
    with connect(pport) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE k8s_fence (n int)")
        cur.execute("INSERT INTO k8s_fence VALUES (1)")
    wait("the row on the standby", lambda: query(sport, "SELECT count(*) FROM k8s_fence") == 1, 20)
    primary.stop(sig=signal.SIGINT, timeout=20)
    subprocess.run([f"{PG_BIN}/pg_ctl", "promote", "-D", sdata, "-w"], user="postgres", group="postgres",
                   extra_groups=[], check=True, stdout=subprocess.DEVNULL, timeout=60)
    with connect(sport) as c, c.cursor() as cur:
        cur.execute("INSERT INTO k8s_fence VALUES (2)")
    old = start_primary(wait_up=False)
    wait("the old primary's pod to exit", lambda: not old.alive(), 30)
    old.stopping = True
    assert old.p.returncode != 0
    assert "not starting a second primary" in old.tail(), old.tail()
    with pytest.raises(psycopg2.OperationalError):
        connect(pport).close()
    # DEPLOY.md: delete data-postgres-0, then the pod runs again.
    shutil.rmtree(pdata)
    start_primary()
    assert query(pport, "SELECT pg_is_in_recovery()")
    with connect(sport) as c, c.cursor() as cur:
        cur.execute("INSERT INTO k8s_fence VALUES (3)")
    wait("the new standby streaming", lambda: query(pport, "SELECT status FROM pg_stat_wal_receiver") == "streaming", 30)
    wait("every row on the new standby", lambda: query(pport, "SELECT count(*) FROM k8s_fence") == 3, 20)
    assert query(sport, "SELECT active FROM pg_replication_slots WHERE slot_name = 'postgres_0'")


def test_standby_copy_cut_short_is_copied_again(pg_pair):
    """The standby pod killed once its base backup is on the volume but
    before standby.signal is written (a liveness kill, an eviction, a node
    lost mid-copy) starts next time as a standby again: the copy is made
    beside PGDATA and moved in whole, so a cut copy is made again. Left in
    PGDATA, the next start found PG_VERSION and ran it as a second,
    read-write primary."""
    cfg, pport, sport, primary, sdata, sc, (standby, start_standby, pdata, start_primary, root) = pg_pair
    with connect(pport) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE k8s_cut (n int)")
        cur.execute("INSERT INTO k8s_cut VALUES (1)")
    standby.stop(sig=signal.SIGINT, timeout=20)
    shutil.rmtree(sdata)
    # pg_basebackup completes, then the pod's shell is SIGKILLed (once).
    bin_dir = os.path.join(root, "cut-bin")
    os.makedirs(bin_dir)
    marker = os.path.join(root, "cut-once")
    wrapper = os.path.join(bin_dir, "pg_basebackup")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\n\"{PG_BIN}/pg_basebackup\" \"$@\" || exit\n"
                f"[ -e {marker} ] && exit 0\ntouch {marker}\nkill -9 $PPID\n")
    os.chmod(bin_dir, 0o755)
    os.chmod(wrapper, 0o755)
    shutil.chown(root, "postgres", "postgres")
    cut = start_standby(path_first=bin_dir)
    wait("the standby's start cut short", lambda: not cut.alive(), 60)
    cut.stopping = True
    assert os.path.exists(marker), cut.tail()
    start_standby()
    assert query(sport, "SELECT pg_is_in_recovery()")
    with connect(pport) as c, c.cursor() as cur:
        cur.execute("INSERT INTO k8s_cut VALUES (2)")
    wait("the standby streaming", lambda: query(sport, "SELECT status FROM pg_stat_wal_receiver") == "streaming", 30)
    wait("both rows on the standby", lambda: query(sport, "SELECT count(*) FROM k8s_cut") == 2, 20)
