"""start_response's cache of validated header lines gives the same bytes as validation."""

from __future__ import annotations

import pytest

from fastgate.errors import LocalProtocolError
from fastgate.http import h1_send
from fastgate.http.h1 import DefaultHeaders, H1Connection


def _response(headers, body=b"hi"):
    conn = H1Connection(defaults=DefaultHeaders(server=b"fastgate"))
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    conn.next_event()
    conn.next_event()
    return conn.start_response(200, headers, body)


def test_cached_lines_serialise_like_fresh_ones():
    h1_send._HEADER_LINES.clear()
    headers = [(b"Content-Type", b"text/plain"), (b"x-a", b"1")]
    first = _response(headers)
    assert (b"Content-Type", b"text/plain") in h1_send._HEADER_LINES
    assert _response(headers) == first
    assert _response([[b"Content-Type", b"text/plain"], [b"x-a", b"1"]]) == first  # lists: not hashable


def test_framing_server_and_date_headers_are_never_cached():
    h1_send._HEADER_LINES.clear()
    out = _response([(b"server", b"mine"), (b"date", b"x"), (b"content-length", b"2"), (b"connection", b"close")])
    assert not h1_send._HEADER_LINES
    assert out.count(b"server:") == 1 and b"server: mine\r\n" in out
    assert b"connection: close\r\n" in out


def test_invalid_headers_are_still_rejected_and_not_cached():
    h1_send._HEADER_LINES.clear()
    _response([(b"x-ok", b"1")])
    with pytest.raises(LocalProtocolError):
        _response([(b"x-ok", b"1"), (b"x-bad", b"a\r\nb")])
    with pytest.raises(LocalProtocolError):
        _response([(b"bad name", b"1")])
    assert set(h1_send._HEADER_LINES) == {(b"x-ok", b"1")}


def test_cache_is_bounded():
    # The real bound (a Final constant: the compiled build inlines it, so no monkeypatching).
    h1_send._HEADER_LINES.clear()
    size = h1_send._HEADER_CACHE_SIZE
    for i in range(size + 10):
        assert b"x-n: %d\r\n" % i in _response([(b"x-n", b"%d" % i)])
    assert len(h1_send._HEADER_LINES) == size
