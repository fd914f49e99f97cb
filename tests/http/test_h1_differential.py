"""Differential check: fastgate's H1Connection against h11 on generated requests.

For every input, either both parsers accept it with the same result (method, target,
version, header fields, body, how many requests, what follows an upgrade), or fastgate
refuses it. Any other difference must fall in a category of tests/http/differential.py,
each listed with its RFC reason in docs/differential.md; an unexplained one fails.

Budget: the hypothesis profile (tests/conftest.py); ``make fuzz`` runs the long one.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from tests.http import grammar
from tests.http.differential import CATEGORIES, agrees, explain, parse_fastgate, parse_h11, stricter

pytestmark = pytest.mark.fuzz


def check(draw: st.DrawFn, data: bytes) -> None:
    pieces = grammar.split(draw, data)
    fg = parse_fastgate(pieces)
    # The parse must not depend on how the bytes were cut up (the reason text of a rejection
    # may: when two faults are in one read, llhttp reports the first it meets).
    whole = parse_fastgate([data])
    assert (fg.heads, fg.bodies, fg.outcome, fg.status, fg.remainder) == (
        whole.heads, whole.bodies, whole.outcome, whole.status, whole.remainder), "a different result in pieces"
    h = parse_h11(data)
    note(f"fastgate: {fg}\nh11:      {h}")
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

# One input per category, with the category explain() must name. "known" categories are
# fastgate bugs with a fix under way (issue 11): once it lands fastgate agrees with h11 or
# refuses, and explain() names nothing.
EXAMPLES = {
    "request-line-whitespace": b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n",
    "http10-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "empty-line-before-request": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "trailing-ows": b"GET / HTTP/1.1\r\nHost: a\r\nX-Thing: abc \r\n\r\n",
    "protocol-name": b"GET / RTSP/1.0\r\n\r\n",
}


def test_every_category_has_an_example() -> None:
    assert sorted(EXAMPLES) == sorted(c.name for c in CATEGORIES)
    assert {c.kind for c in CATEGORIES} <= {"deliberate", "known"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_category_example(name: str) -> None:
    data = EXAMPLES[name]
    fg, h = parse_fastgate([data]), parse_h11(data)
    assert not agrees(fg, h) or fg.outcome == "rejected"
    kind = {c.name: c.kind for c in CATEGORIES}[name]
    if kind == "deliberate":
        assert explain(data, fg, h) == [name]
    else:
        assert explain(data, fg, h) in ([name], [])


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
