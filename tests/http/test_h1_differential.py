"""Differential check: fastgate's H1Connection against h11 on generated requests.

For every input, either both parsers accept it with the same result (method, target,
version, header fields, body, how many requests, what follows an upgrade), or fastgate
refuses it. And what fastgate accepts must also pass the checks h11 does not make (a Host
that is ``uri-host [":" port]``, no fragment in the target). Any other difference must fall
in a category of tests/http/differential.py, each listed with its RFC reason in
docs/differential.md; an unexplained one fails.

Budget: the hypothesis profile (tests/conftest.py); ``make fuzz`` runs the long one.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from tests.http import grammar
from tests.http.differential import (
    CATEGORIES,
    agrees,
    explain,
    parse_fastgate,
    parse_h11,
    rfc_violations,
    stricter,
)

pytestmark = pytest.mark.fuzz


def check(draw: st.DrawFn, data: bytes) -> None:
    pieces = grammar.split(draw, data)
    fg = parse_fastgate(pieces)
    # The parse must not depend on how the bytes were cut up (the reason text of a rejection
    # may: when two faults are in one read, llhttp reports the first it meets). Nor may the
    # status, but for one known case: llhttp stops at the first byte that starts no method
    # it knows, and fastgate tells a well-formed unknown method (501) from garbage (400)
    # only when the whole token is in the read ("-\rGET": 400 whole, 501 byte by byte).
    whole = parse_fastgate([data])
    statuses = {fg.status, whole.status}
    if statuses == {400, 501} and "method" in fg.reason + whole.reason:
        statuses = {400}
    assert (fg.heads, fg.bodies, fg.outcome, fg.remainder) == (
        whole.heads, whole.bodies, whole.outcome, whole.remainder), "a different result in pieces"
    assert len(statuses) == 1, f"a different status in pieces: {fg.status} {fg.reason}, whole {whole.status}"
    h = parse_h11(data)
    note(f"fastgate: {fg}\nh11:      {h}")
    assert rfc_violations(fg) == []
    categories = explain(data, fg, h)
    assert categories is not None, f"fastgate and h11 disagree on {data!r}:\n  fastgate {fg}\n  h11      {h}"
    for name in categories:
        event(f"disagreement: {name}")
    if stricter(fg, h):
        event(f"fastgate refused what h11 took: {fg.status} {fg.reason}")


@given(st.data())
def test_grammar_requests(data: st.DataObject) -> None:
    check(data.draw, data.draw(grammar.pipelines(odd=0.08)))


@given(st.data())
def test_mutated_requests(data: st.DataObject) -> None:
    check(data.draw, data.draw(grammar.mutated()))


# ------------------------------------------------------------------ the categories, one example each

# One input per category, which explain() must name (and nothing else).
EXAMPLES = {
    "empty-line-before-request": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "absolute-form-host": b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
}

# Disagreements the first runs found that were fastgate bugs, fixed since (issue 11): fastgate
# now agrees with h11 or refuses. Each stays here as a regression example.
FIXED = {
    "trailing whitespace kept in a field value (RFC 9112 §5.1)": b"GET / HTTP/1.1\r\nHost: a\r\nX-Thing: abc \r\n\r\n",
    "RTSP/ICE protocol name served as HTTP": b"GET / RTSP/1.0\r\n\r\n",
    "... with runs of spaces in the request line": b"GET  /  RTSP/1.0\r\nHost: a\r\n\r\n",
    "runs of spaces in the request line (RFC 9112 §3 MAY; refused since, as h11 does)": (
        b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "a bare LF before an RTSP request line": b"\nGET / RTSP/1.0\r\nHost: a\r\n\r\n",
    "chunked;q=1: head handed out before llhttp refused the framing": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n"
    ),
    "WebSocket upgrade body handed to the WebSocket (RFC 9110 §7.8)": (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 2\r\n\r\nab\x81\x80\x00\x00\x00\x00"
    ),
}


def test_every_category_has_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(c.name for c in CATEGORIES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_category_example(name: str) -> None:
    data = EXAMPLES[name]
    fg, h = parse_fastgate([data]), parse_h11(data)
    assert fg.outcome != "rejected" and not agrees(fg, h)
    assert explain(data, fg, h) == [name]


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_disagreement_stays_fixed(name: str) -> None:
    data = FIXED[name]
    fg, h = parse_fastgate([data]), parse_h11(data)
    assert agrees(fg, h) and explain(data, fg, h) == []
    if fg.outcome == "rejected":
        assert not fg.heads, "a refused request must not reach the app first"


@pytest.mark.parametrize(
    "data",
    [b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"],
)
def test_what_h11_does_not_check_either(data: bytes) -> None:
    # h11 takes these; the RFCs do not, and neither does fastgate (issue 11).
    h = parse_h11(data)
    assert h.outcome == "open" and rfc_violations(h)
    assert parse_fastgate([data]).outcome == "rejected"


def test_an_unexplained_difference_is_reported() -> None:
    # A different body for the same bytes is no category: explain() must give up.
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab"
    fg, h = parse_fastgate([data]), parse_h11(data)
    h.bodies[0] = b"xy"
    assert not agrees(fg, h) and explain(data, fg, h) is None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n0\r\nT: v\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_ordinary_requests_agree_exactly(data: bytes) -> None:
    fg, h = parse_fastgate([data]), parse_h11(data)
    assert agrees(fg, h) and explain(data, fg, h) == []
    assert fg.heads and len(fg.heads) == len(h.heads)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",  # h11 takes CTLs in values; RFC 9110 §5.5 does not
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # RFC 9112 §6.1
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",  # RFC 9112 §6.3
    ],
)
def test_fastgate_may_refuse_what_h11_takes(data: bytes) -> None:
    fg, h = parse_fastgate([data]), parse_h11(data)
    assert fg.outcome == "rejected" and h.outcome != "rejected"
    assert stricter(fg, h) and explain(data, fg, h) == []
