"""A message looked up by id alone reads its months newest first and stops
at the first that holds it (migration 012, chatd_message_by_id: the
gateway's check of an edit's target, the server API's GET of a message;
issue 24). Against the session's PostgreSQL only, in a database of its own:
24 months with a message each, one more in the default partition; the
months a lookup read are counted from pg_stat_xact_user_tables (this
backend's index scans per table, before and after)."""
import psycopg2

from chatlib import uid
from test_compact import schema

MONTH0 = 1577836800000          # 2020-01-01 UTC
MONTHS = 24


def month_ts(k):
    """A ts (ms) in month k after January 2020, UTC."""
    y, m = 2020 + k // 12, 1 + k % 12
    import calendar
    return (calendar.timegm((y, m, 1, 0, 0, 0)) + 3600) * 1000


def test_lookup_reads_months_newest_first_and_stops(pg):
    dbname = "chatd_" + uid("byid").replace("-", "_")
    conninfo = pg.create_db(dbname)
    schema(conninfo)
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    cur = c.cursor()
    ids = {}
    for k in range(MONTHS):
        cur.execute("SELECT chatd_messages_partition(%s)", (month_ts(k),))
        ids[k] = f"{k:032x}"
        cur.execute("INSERT INTO messages (room, seq, id, user_id, body, ts) VALUES ('r', %s, %s, 'u', 'b', %s)",
                    (k + 1, ids[k], month_ts(k)))
    # a row outside every month (a gateway clock far off): the default partition
    cur.execute("INSERT INTO messages (room, seq, id, user_id, body, ts) VALUES ('r', 99, %s, 'u', 'b', 1000)",
                ("d" * 32,))
    cur.execute("SELECT relname FROM pg_class WHERE relname ~ '^messages_p[0-9]{6}$'")
    months = sorted(r[0] for r in cur.fetchall())   # with the current month and the next (migrations)
    assert len(months) >= MONTHS + 2, months

    def lookup(room, mid, since=0):
        """(rows, months read) of one lookup, in a transaction of its own."""
        # The counts are this backend's not yet reported: a difference.
        scans = ("SELECT relname, idx_scan FROM pg_stat_xact_user_tables "
                 "WHERE relname LIKE 'messages\\_%%'")
        c.autocommit = False
        try:
            cur.execute(scans)
            before = dict(cur.fetchall())
            cur.execute("SELECT seq, user_id, ts, kind, deleted FROM chatd_message_by_id(%s, %s, %s)",
                        (room, mid, since))
            rows = cur.fetchall()
            cur.execute(scans)
            read = sorted(t for t, n in cur.fetchall() if n > before.get(t, 0))
        finally:
            c.rollback()
            c.autocommit = True
        return rows, read

    # each month's message: found, reading its month and the newer ones only
    for k in (MONTHS - 1, MONTHS // 2, 0):
        rows, read = lookup("r", ids[k])
        part = "messages_p%04d%02d" % (2020 + k // 12, 1 + k % 12)
        assert rows == [(k + 1, "u", month_ts(k), "m", False)], (k, rows)
        assert read == [m for m in months if m >= part], (k, read)
    # the newest month's: 2 months read where every month was (26+)
    rows, read = lookup("r", ids[MONTHS - 1])
    assert len(read) == len([m for m in months if m >= "messages_p202112"]) and len(read) < len(months) / 4, read
    # an id stored nowhere (or in another room): every month, and the default partition
    for room, mid in (("r", "f" * 32), ("other", ids[3])):
        rows, read = lookup(room, mid)
        assert rows == [] and read == ["messages_default"] + months, (room, read)
    # the default partition's row is found too, after every month
    rows, read = lookup("r", "d" * 32)
    assert rows == [(99, "u", 1000, "m", False)] and read == ["messages_default"] + months, rows
    # since: months ending before it are not read (the gateway's polls for a
    # target acked a moment ago); a message older than it is not found
    rows, read = lookup("r", ids[5], since=month_ts(10))
    assert rows == [] and read == ["messages_default"] + [m for m in months if m >= "messages_p202011"], read
    rows, _ = lookup("r", ids[12], since=month_ts(10))
    assert rows and rows[0][0] == 13, rows

    # A month held ACCESS EXCLUSIVE (the compaction's swap, a retention
    # drop) stalls only the lookups that reach it.
    locker = psycopg2.connect(conninfo)
    try:
        lc = locker.cursor()
        lc.execute("LOCK TABLE messages_p202003 IN ACCESS EXCLUSIVE MODE")
        cur.execute("SET lock_timeout = '1s'")
        rows, _ = lookup("r", ids[5])           # 2020-06: newer than the held month
        assert rows and rows[0][0] == 6, rows
        try:
            lookup("r", ids[0])                 # 2020-01: behind it
            assert False, "a lookup past the held month did not wait for it"
        except psycopg2.errors.LockNotAvailable:
            c.rollback()
            c.autocommit = True
    finally:
        locker.rollback()
        locker.close()
    c.close()
