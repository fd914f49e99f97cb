"""Parse the same bytes with fastgate's H1Connection and with h11, and say how they differ.

Both sides are driven the same way: every complete request is answered at once (an empty
200), the next one is read if the connection stays open, and a WebSocket upgrade is
accepted. ``Parsed`` holds what each side handed to the application: the request heads, the
bodies of the requests that completed, and how the byte stream ended.

``classify`` names the difference between the two results. ``None`` means they agree, or
that fastgate refused something h11 took (fastgate may be stricter; the test counts those
apart). Every other category is listed in docs/differential.md with the RFC that decides it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from fastgate.http.events import END_OF_REQUEST, NEED_DATA, PAUSED, BadRequest, BodyChunk, RequestHead, UpgradeRequest
from fastgate.http.h1 import H1Connection

Head = tuple[bytes, bytes, bytes, tuple[tuple[bytes, bytes], ...]]  # method, target, version, fields


@dataclass
class Parsed:
    heads: list[Head] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # one per completed request
    # "open": waiting for more bytes; "closed": the connection ends after the last response;
    # "rejected": a 4xx/5xx answer; "upgrade": switched to WebSocket after the last head.
    outcome: str = "open"
    status: int | None = None
    reason: str = ""
    remainder: bytes = b""


def _fastgate_head(head: RequestHead) -> Head:
    return (head.method.encode("ascii"), head.target, head.http_version.encode("ascii"), tuple(head.headers))


def parse_fastgate(pieces: list[bytes]) -> Parsed:
    conn = H1Connection()
    out = Parsed()
    body = bytearray()
    for index, piece in enumerate(pieces):
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED, "each request is answered as soon as it is complete"
            if isinstance(event, RequestHead):
                out.heads.append(_fastgate_head(event))
                body = bytearray()
            elif isinstance(event, BodyChunk):
                body += event.data
            elif event is END_OF_REQUEST:
                out.bodies.append(bytes(body))
                conn.start_response(200, [], b"")
                if not conn.start_next_request():
                    out.outcome = "closed"
                    return out
            elif isinstance(event, UpgradeRequest):
                out.heads.append(_fastgate_head(event.head))
                out.outcome = "upgrade"
                out.remainder = event.remainder + b"".join(pieces[index + 1 :])
                return out
            else:
                assert isinstance(event, BadRequest)
                out.outcome, out.status, out.reason = "rejected", event.status, event.reason
                return out
    return out


def _wants_websocket(request: h11.Request) -> bool:
    # The same rule fastgate applies (a policy, not a parse): GET + Connection: upgrade +
    # an Upgrade list naming websocket.
    upgrade = [v for n, v in request.headers if n == b"upgrade"]
    connection = b",".join(v for n, v in request.headers if n == b"connection").lower()
    return (
        request.method == b"GET"
        and b"upgrade" in [t.strip() for t in connection.split(b",")]
        and any(b"websocket" in [t.strip() for t in v.lower().split(b",")] for v in upgrade)
    )


def parse_h11(data: bytes) -> Parsed:
    conn = h11.Connection(h11.SERVER)
    out = Parsed()
    body = bytearray()
    request: h11.Request | None = None
    if data:  # b"" would tell h11 the peer closed
        conn.receive_data(data)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            out.outcome, out.status, out.reason = "rejected", exc.error_status_hint, str(exc)
            return out
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return out
        if isinstance(event, h11.Request):
            request = event
            out.heads.append((event.method, event.target, event.http_version, tuple(event.headers)))
            body = bytearray()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.bodies.append(bytes(body))
            assert request is not None
            if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL and _wants_websocket(request):
                conn.send(h11.InformationalResponse(status_code=101, headers=[("upgrade", "websocket"),
                                                                              ("connection", "upgrade")]))
                out.outcome = "upgrade"
                out.remainder = conn.trailing_data[0]
                return out
            # A 2xx to CONNECT would make h11 switch to a tunnel; fastgate refuses CONNECT.
            status = 405 if request.method == b"CONNECT" else 200
            conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                out.outcome = "closed"
                return out
            conn.start_next_cycle()
        else:  # ConnectionClosed cannot come: no EOF is fed
            raise AssertionError(f"unexpected h11 event {event!r}")


# ---------------------------------------------------------------- comparing


def _normal(head: Head) -> Head:
    # h11 lower-cases Transfer-Encoding's value (its coding names are case-insensitive,
    # RFC 9112 §7); fastgate passes the value on as sent. Not a difference in meaning.
    method, target, version, fields = head
    return method, target, version, tuple((n, v.lower() if n == b"transfer-encoding" else v) for n, v in fields)


def agrees(fg: Parsed, h: Parsed) -> bool:
    """Everything fastgate accepted, h11 accepted the same way.

    fastgate stopping earlier (a rejection, or closing where h11 would read on) is allowed:
    it hands the application less, never something else.
    """
    if len(fg.heads) > len(h.heads) or len(fg.bodies) > len(h.bodies):
        return False
    if any(_normal(a) != _normal(b) for a, b in zip(fg.heads, h.heads, strict=False)):
        return False
    if any(a != b for a, b in zip(fg.bodies, h.bodies, strict=False)):
        return False
    if fg.outcome == "upgrade":
        return h.outcome == "upgrade" and len(h.heads) == len(fg.heads) and fg.remainder == h.remainder
    return True


def stricter(fg: Parsed, h: Parsed) -> bool:
    """fastgate refused a request that h11 took (allowed; counted for the report)."""
    return fg.outcome == "rejected" and (h.outcome != "rejected" or len(h.heads) > len(fg.heads))


# ---------------------------------------------------------------- what neither parser checks

# RFC 9110 §7.2: Host = uri-host [ ":" port ], RFC 3986 §3.2.2 (IP-literal, IPv4 or reg-name;
# an empty value is allowed when the target has no authority).
_UNRESERVED_SUB = rb"A-Za-z0-9\-._~!$&'()*+,;="
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[" + _UNRESERVED_SUB + rb":]+\]|(?:[" + _UNRESERVED_SUB
    + rb"]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)


def rfc_violations(parsed: Parsed) -> list[str]:
    """What fastgate accepted although the RFCs say no, where h11 does not check either."""
    problems = []
    for _method, target, _version, fields in parsed.heads:
        if b"#" in target:
            problems.append(f"fragment in the target {target!r} (RFC 9112 §3.2)")
        for name, value in fields:
            if name == b"host" and not _HOST.fullmatch(value):
                problems.append(f"Host {value!r} is not uri-host [':' port] (RFC 9110 §7.2)")
    return problems


# ---------------------------------------------------------------- disagreement categories


@dataclass(frozen=True)
class Category:
    """A known, deliberate kind of disagreement, and how to take it out of a pair of results.

    Either ``fix_input`` rewrites the request bytes without the quirk (None: the quirk is
    not there), or ``fix_result`` adjusts the parsed pair the way the difference predicts
    (None: it does not apply). Each one is in docs/differential.md with the RFC text that
    makes fastgate's side right, or lets a recipient choose.
    """

    name: str
    fix_input: Callable[[bytes], bytes | None] | None = None
    fix_result: Callable[[Parsed, Parsed], tuple[Parsed, Parsed] | None] | None = None


def _changed(pattern: re.Pattern[bytes], replacement: bytes) -> Callable[[bytes], bytes | None]:
    def fix(data: bytes) -> bytes | None:
        fixed = pattern.sub(replacement, data)
        return fixed if fixed != data else None

    return fix


# Empty lines (CR, LF) before a request-line: at the start, or after a head without body.
_EMPTY_LINES = re.compile(rb"(\A|\r\n\r\n)[\r\n]+(?=[A-Za-z])")
_ABSOLUTE = re.compile(rb"(?i)https?://([^/?]*)")


def _http10_keep_alive(fg: Parsed, h: Parsed) -> tuple[Parsed, Parsed] | None:
    # h11 closes after every HTTP/1.0 request; fastgate honours "Connection: keep-alive".
    if h.outcome != "closed" or not h.heads or h.heads[-1][2] != b"1.0" or len(fg.heads) <= len(h.heads):
        return None
    if b"keep-alive" not in b",".join(v for n, v in h.heads[-1][3] if n == b"connection").lower():
        return None
    return Parsed(fg.heads[: len(h.heads)], fg.bodies[: len(h.bodies)], "closed"), h


def _absolute_form_host(fg: Parsed, h: Parsed) -> tuple[Parsed, Parsed] | None:
    # fastgate puts an absolute-form target's authority in place of Host (RFC 9112 §3.2.2);
    # h11 passes Host on as sent. Apply the same rule to h11's heads.
    heads = []
    for method, target, version, fields in h.heads:
        match = _ABSOLUTE.match(target)
        if match is not None:
            fields = tuple((n, match.group(1) if n == b"host" else v) for n, v in fields)
        heads.append((method, target, version, fields))
    if heads == h.heads:
        return None
    return fg, Parsed(heads, h.bodies, h.outcome, h.status, h.reason, h.remainder)


CATEGORIES = [
    Category("empty-line-before-request", fix_input=_changed(_EMPTY_LINES, rb"\1")),
    Category("http10-keep-alive", fix_result=_http10_keep_alive),
    Category("absolute-form-host", fix_result=_absolute_form_host),
]


def explain(data: bytes, fg: Parsed, h: Parsed) -> list[str] | None:
    """The smallest set of categories that accounts for every difference, or None.

    Input fixes are applied first and both sides re-parsed, then result fixes; every
    category in a set must apply, so the answer names only what is really there.
    """
    if agrees(fg, h):
        return []
    for size in range(1, len(CATEGORIES) + 1):
        for chosen in itertools.combinations(CATEGORIES, size):
            fixed: bytes | None = data
            for category in chosen:
                if category.fix_input is not None:
                    fixed = category.fix_input(fixed) if fixed is not None else None
            if fixed is None:
                continue
            pair: tuple[Parsed, Parsed] | None = (fg, h)
            if fixed != data:
                pair = parse_fastgate([fixed]), parse_h11(fixed)
            for category in chosen:
                if category.fix_result is not None and pair is not None:
                    pair = category.fix_result(*pair)
            if pair is not None and agrees(*pair):
                return sorted(c.name for c in chosen)
    return None
