"""Migration 003 (room options, bans) applied in place: a database made by
an earlier chatd (migrations 001 and 002, rooms, members, messages) is
upgraded at start, its rooms stay open and its data stays; and the server
API's configuration is refused when incomplete."""
import os
import subprocess

import psycopg2

from chatlib import arun, http_request, uid
from itconf import API_KEY, CHATD_BIN, REPO, chatd_env


def test_migration_003_in_place(pg, start_all_instance):
    dbname = "chatd_" + uid("mig").replace("-", "_")
    conninfo = pg.create_db(dbname)
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute("CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())")
        for v, name in ((1, "001_init"), (2, "002_partition_owners")):
            with open(os.path.join(REPO, "store", "migrations", name + ".sql")) as f:
                cur.execute(f.read())
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (v, name))
        cur.execute("INSERT INTO rooms (room) VALUES ('old-room')")
        cur.execute("INSERT INTO members (room, user_id) VALUES ('old-room', 'old-user')")
        cur.execute("INSERT INTO messages (room, seq, id, user_id, body, ts) VALUES "
                    "('old-room', 1, %s, 'old-user', 'from before', 1)", ("a" * 32,))
    c.close()
    api_port = __import__("chatlib").free_port()
    inst = start_all_instance("mig003", [f"--pg={conninfo}", f"--api-listen=127.0.0.1:{api_port}"],
                              env={"CHATD_API_KEY": API_KEY})
    # (the factory's own --pg comes first; the later flag wins)
    h = {"Authorization": f"Bearer {API_KEY}"}
    st, _, body = http_request(api_port, "GET", "/v1/rooms/old-room", headers=h)
    assert st == 200, body
    assert b'"private":false' in body and b'"members":1' in body, body
    st, _, body = http_request(api_port, "GET", "/v1/rooms/old-room/messages", headers=h)
    assert st == 200 and b"from before" in body, body

    async def join():
        newcomer = await inst.client(uid("new"))
        assert await newcomer.join("old-room") == 1   # still open
        await newcomer.close()
    arun(join())
    rows = pg.query("SELECT version FROM schema_migrations ORDER BY version", db=dbname)
    assert [r[0] for r in rows][:3] == [1, 2, 3]


def run_conf(args, env):
    return subprocess.run([CHATD_BIN] + args, env=chatd_env(env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=20)


def test_api_listen_configuration_refused():
    listen = ["--listen=127.0.0.1:0", "--api-listen=127.0.0.1:0"]
    r = run_conf(listen, {})
    assert r.returncode == 2 and b"CHATD_API_KEY" in r.stdout, r.stdout
    r = run_conf(listen, {"CHATD_API_KEY": "short"})
    assert r.returncode == 2 and b"at least 16" in r.stdout, r.stdout
    r = run_conf(["--role=classifier", "--kafka-bootstrap-file=/nonexistent"] + listen,
                 {"CHATD_API_KEY": API_KEY})
    assert r.returncode == 2 and b"gateways" in r.stdout, r.stdout
    r = run_conf(["--listen=127.0.0.1:9999", "--api-listen=127.0.0.1:9999"], {"CHATD_API_KEY": API_KEY})
    assert r.returncode == 2 and b"port of its own" in r.stdout, r.stdout
    assert API_KEY.encode() not in r.stdout
