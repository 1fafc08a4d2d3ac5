"""Requests with a body where none has a meaning, and trailers (issue 16):
a `GET /ws` with a chunked body and a trailer was answered 403 for an
`Origin` it never sent (the trailer had been appended to the header table
and read back shifted); a GET or an upgrade with a body is now refused
with 400, and trailers never reach the headers (test_net's
test_http_trailers_and_bodies shows the shift itself)."""
import seclib
from chatlib import uid
from secconf import token


def test_bodies_where_none_belongs(sec):
    port = sec.gw_ports[0]
    up, _ = seclib.upgrade_request(port, token(uid("body")))
    head = up[:-2]  # without the blank line
    cases = {
        "upgrade, chunked body + Origin trailer":
            head + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nZ: Origin\r\nY: https://evil.example\r\n\r\n",
        "upgrade, Content-Length body": head + b"Content-Length: 3\r\n\r\nabc",
        "GET with a body": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "HEAD with a chunked body":
            b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    }
    for label, data in cases.items():
        st, _, body, closed = seclib.raw_request(port, data)
        assert st == 400 and closed, f"{label}: HTTP {st} {body[:120]!r}, closed={closed}"
    # The same upgrade without a body is served.
    st, _, s, _ = seclib.try_upgrade(port, token(uid("nobody")))
    s.close()
    assert st == 101
