"""The months a lookup by id walks (migration 012, chatd_messages_months:
the gateway's check of an edit's target and the server API's GET of a
message read them newest first and stop at the message's; issue 24):
against the session's PostgreSQL only, in a database of its own with 24
months and a gap, the list is every month partition, newest first, with
the bounds PostgreSQL routes by, and `since` leaves out the months that
ended before it. The walk itself: test_moderation.py,
test_old_month_message_found_and_edited_reading_no_older_month."""
import calendar

import psycopg2

from chatlib import uid
from test_compact import schema


def month_ts(k):
    """A ts (ms) in month k after January 2020, UTC."""
    y, m = 2020 + k // 12, 1 + k % 12
    return (calendar.timegm((y, m, 1, 0, 0, 0)) + 3600) * 1000


def test_months_newest_first_with_their_bounds(pg):
    dbname = "chatd_" + uid("byid").replace("-", "_")
    conninfo = pg.create_db(dbname)
    schema(conninfo)
    c = psycopg2.connect(conninfo)
    c.autocommit = True
    cur = c.cursor()
    for k in range(24):
        cur.execute("SELECT chatd_messages_partition(%s)", (month_ts(k),))
    cur.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'messages'::regclass")
    bounds = {}
    for name, b in cur.fetchall():
        if name != "messages_default":
            lo, hi = b.replace("'", "").split("FROM (")[1].split(") TO (")
            bounds[int(lo)] = int(hi.rstrip(")"))
    assert len(bounds) >= 26, bounds     # 24, the current month and the next
    cur.execute("SELECT lo, hi FROM chatd_messages_months(0)")
    assert cur.fetchall() == sorted(bounds.items(), reverse=True)
    cur.execute("SELECT lo, hi FROM chatd_messages_months(%s)", (month_ts(10),))
    assert cur.fetchall() == sorted(((lo, hi) for lo, hi in bounds.items() if hi > month_ts(10)),
                                    reverse=True)
    c.close()
