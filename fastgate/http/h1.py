"""HTTP/1.1 server connection: bytes in, events out; response parts in, bytes out.

Theory of operation
-------------------
``H1Connection`` never touches a socket, a loop or a clock. ``receive_data`` feeds bytes
to an httptools (llhttp) parser whose callbacks append events to a queue; ``next_event``
pops them. The caller (the asyncio adapter) writes whatever bytes the response methods
return.

Two small state machines, one per direction, because a server may answer before the
request body has arrived (RFC 9112 §9.3):

    request_state:  HEAD --RequestHead--> BODY --EndOfRequest--> DONE
    response_state: WAITING --start--> BODY --end--> DONE

``start_next_request`` moves both back to HEAD/WAITING once both are DONE and the
connection may be kept alive. Pipelining falls out of the queue: the parser may run
ahead, but ``next_event`` answers PAUSED instead of handing out the next request while
the current one is still being served, so responses go out strictly in order.

A connection that reached a terminal condition (a bad request, a switch of protocol) stops
parsing: its queue ends with the ``BadRequest`` / ``UpgradeRequest``.

Strictness. llhttp in its default strict mode already rejects bare LF line ends, obs-fold,
control bytes in header values, invalid tokens, Content-Length together with
Transfer-Encoding and duplicate Content-Length (RFC 9112 §2.2, §5.2, §6.3). What it lets
through and we refuse here: HTTP versions other than 1.0/1.1 (including 0.9), transfer
codings other than exactly ``chunked`` and any Transfer-Encoding in HTTP/1.0 (§6.1: its
framing cannot be trusted), CONNECT and other non-origin targets, a missing or repeated Host
in HTTP/1.1 (§3.2), and heads over the configured limits.

httptools buffers a header (or trailer) field until the next one starts, and calls us only
then, so a peer trickling one endless field would grow that buffer unbounded. We count the
bytes of every ``receive_data`` call during which no callback fired ("stalled" bytes) and
refuse with 431 once they exceed one field's limit: a field can only be that large.

Upgrades. httptools tells llhttp to skip the body of any request carrying ``Connection:
upgrade`` + ``Upgrade``. For a WebSocket upgrade that is what we want (the bytes after the
head belong to the new protocol). Any other upgrade (``h2c``) is served as plain HTTP
(RFC 9110 §7.8 lets a server ignore Upgrade): when such a request has a body, we replay
its framing into a fresh parser so the body is delivered and parsing continues after it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from fastgate.errors import LocalProtocolError
from fastgate.fields import check_field, is_token_bytes, is_valid_host, status_code
from fastgate.http.events import (
    END_OF_REQUEST,
    NEED_DATA,
    PAUSED,
    BadRequest,
    BodyChunk,
    Event,
    RequestHead,
    UpgradeRequest,
)

# Slack over max_header_size for a stalled field: ": ", CRLF and a little optional whitespace.
_FIELD_SLACK = 64


class RequestState(enum.Enum):
    HEAD = "head"
    BODY = "body"
    DONE = "done"


class ResponseState(enum.Enum):
    WAITING = "waiting"
    BODY = "body"
    DONE = "done"


class ConnectionState(enum.Enum):
    OPEN = "open"
    ERROR = "error"  # a BadRequest was queued: answer it and close
    SWITCHED = "switched"  # an UpgradeRequest was queued: bytes now belong to another protocol
    CLOSED = "closed"  # the transport is gone (see close)


@dataclass(frozen=True, slots=True)
class H1Limits:
    """Request limits (RFC 9112 leaves them to the server)."""

    max_request_line: int = 8190
    max_header_count: int = 100
    max_header_size: int = 8190
    websocket: bool = True  # False: upgrade requests are served as plain HTTP


class DefaultHeaders:
    """Headers the server adds to every response; ``date`` is refreshed by the worker."""

    __slots__ = ("date", "server", "extra")

    def __init__(self, *, server: bytes | None = b"fastgate", extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.date: bytes | None = None  # b"date: ...\r\n" once the worker's timer sets it
        self.server = b"server: " + server + b"\r\n" if server else b""
        self.extra = b"".join(n + b": " + v + b"\r\n" for n, v in extra)


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))


# Precomputed for every valid code, so the hot path is one dict lookup.
STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Validated "name: value\r\n" lines of ordinary response headers (not framing, Server or
# Date, which start_response must see), keyed by the app's (name, value) tuple. Bounded:
# once full, new pairs are validated each time (a per-request value, like an ETag, would
# otherwise push out the ones that repeat).
_HEADER_LINES: dict[tuple[bytes, bytes], bytes] = {}
_HEADER_CACHE_SIZE = 512

# Host values seen valid lately (bounded like _HEADER_LINES): most clients send the same few.
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_SIZE = 256
_H, _SP = 72, 32  # b"H"[0], b" "[0]
_NO_LINES: frozenset[bytes] = frozenset()
# Headers a proxy uses to describe the original request (read only from trusted peers).
PROXY_HEADERS = frozenset(
    (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
     b"x-forwarded-prefix")
)
_NO_BODY_STATUS = frozenset((204, 304))  # RFC 9110 §6.4.1 (1xx never reach start_response)


class _Reject(Exception):
    """Raised inside a parser callback to abort parsing with a status."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


# llhttp errors whose right answer is not a plain 400, keyed by llhttp's reason text.
_ERROR_STATUS = {
    "Invalid HTTP version": (505, "HTTP version not supported"),
    "Pause on PRI/Upgrade": (505, "HTTP/2 is not supported over cleartext"),
}


class H1Connection:
    """The server side of one HTTP/1.1 connection, without I/O.

    Args:
        limits: request size limits.
        defaults: headers added to every response (Date, Server, --header).
    """

    __slots__ = (
        "limits",
        "defaults",
        "request_state",
        "response_state",
        "state",
        "keep_alive",
        "_parser",
        "_events",
        "_url",
        "_headers",
        "_in_head",
        "_progress",
        "_stalled",
        "_trailers",
        "_replaying",
        "_host_count",
        "_expect_continue",
        "_upgrade",
        "_chunked",
        "_te_other",
        "_forwarded",
        "_rare",
        "_pending_upgrade",
        "_method",
        "_http_version",
        "_no_body",
        "_framing",
        "_remaining",
        "_data",
        "_carry",
        "_between",
        "_fresh",
        "_line_here",
        "_irregular",
        "_irregular_of",
    )

    def __init__(self, limits: H1Limits | None = None, defaults: DefaultHeaders | None = None) -> None:
        self.limits = limits or H1Limits()
        self.defaults = defaults or DefaultHeaders()
        self.request_state = RequestState.HEAD
        self.response_state = ResponseState.WAITING
        self.state = ConnectionState.OPEN
        self.keep_alive = True
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._progress = False  # a parser callback fired during the current receive_data
        self._stalled = 0  # bytes fed since the last receive_data that made progress
        self._trailers = 0
        self._replaying = False  # parsing a synthetic head (see _on_upgrade)
        self._host_count = 0
        self._expect_continue = False
        self._upgrade: bytes | None = None
        self._chunked = False
        self._te_other: bytes | None = None  # a transfer coding other than chunked (501)
        self._forwarded = False
        self._rare = False  # one of the five flags above was set (see on_message_begin)
        # A WebSocket head waiting for llhttp's upgrade pause, or the framing head to replay
        # for an ignored upgrade (h2c) that carries a body.
        self._pending_upgrade: RequestHead | bytes | None = None
        # Response side, for the request being answered.
        self._method = "GET"
        self._http_version = "1.1"
        self._no_body = False
        self._framing = 0  # 0 content-length, 1 chunked, 2 until close
        self._remaining = 0
        # Request-line check (see _irregular_line).
        self._data = b""  # the bytes being fed, while feeding
        self._carry = b""  # the last bytes of a head that continues in the next read
        self._between = True  # no message in progress: the next one starts a read's bytes
        self._fresh = True  # no message began yet in this read, and none was in progress
        self._line_here = False  # the current request line starts the window (carry + data)
        self._irregular = _NO_LINES  # request lines of one read that are not HTTP/1.1's...
        self._irregular_of = b""  # ...namely of this read (compared by identity)

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. Never raises on peer input: errors become BadRequest.

        Args:
            data: bytes as read from the transport.
        """
        if self.state is not ConnectionState.OPEN:
            return
        self._data = data
        self._fresh = self._between
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._fail(reject.status, reject.reason)
            else:  # a bug in our callbacks: still never raise on peer input
                self._fail(400, f"invalid request: {reject!r}")
            return
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data, int(exc.args[0]))
            return
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            status, reason = _ERROR_STATUS.get(reason, (400, reason))
            if reason == "Invalid method encountered" and self._unknown_method():
                status, reason = 501, "method not implemented"
            self._fail(status, reason)
            return
        if self._progress:
            self._progress = False
            self._stalled = 0
        else:
            self._stalled += len(data)
            if self._stalled > self.limits.max_header_size + _FIELD_SLACK:
                self._fail(431, "header field too large")
                return
        if self._in_head:
            # A head continues in the next read. Judge its request line now if it is complete
            # (it may scroll out of the carried bytes before the head ends), and keep enough
            # of the stream to see a request line still arriving (at most the URL limit plus
            # a little).
            window = self._carry + data if self._carry else data
            if self._url and self._irregular_line():
                self._fail(400, "invalid request line: expected METHOD SP target SP HTTP/1.x")
                return
            carry = self._carry = window[-(self.limits.max_request_line + _FIELD_SLACK):]
            self._irregular_of = b""  # the window of the same data changes with the carry
            if len(carry) < len(window):
                self._line_here = False  # the head's start is no longer in the window
        elif self._carry:
            self._carry = b""
            self._irregular_of = b""

    def close(self) -> None:
        """The transport is gone: parse nothing more and let go of the parser.

        The parser holds this object for its callbacks: a reference cycle, which would
        leave every closed connection's objects to the cyclic garbage collector instead of
        freeing them at once.
        """
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSED
            del self._parser

    def receive_eof(self) -> None:
        """The peer half-closed. A request cut short is dropped; nothing else to do."""
        if self.state is ConnectionState.OPEN and (self._in_head or self.request_state is RequestState.BODY):
            # An incomplete request: no response is owed (the peer cannot read it reliably).
            self.keep_alive = False

    @property
    def queued(self) -> int:
        """How many parsed events wait in the queue (pipelined requests parsed ahead)."""
        return len(self._events)

    def next_event(self) -> Event:
        """The next event, NEED_DATA when more bytes are needed, or PAUSED.

        Returns:
            RequestHead, BodyChunk, END_OF_REQUEST, UpgradeRequest, BadRequest,
            NEED_DATA or PAUSED.
        """
        events = self._events
        if not events:
            return NEED_DATA
        event = events[0]
        state = self.request_state
        cls = event.__class__
        if cls is BodyChunk:
            return events.popleft()
        if cls is RequestHead or cls is UpgradeRequest:
            if state is not RequestState.HEAD:
                return PAUSED
            self.request_state = RequestState.BODY
            assert isinstance(event, (RequestHead, UpgradeRequest))
            head = event if cls is RequestHead else event.head  # type: ignore[union-attr]
            # The response to this request begins (inlined: once per request).
            self.response_state = ResponseState.WAITING
            self._method = head.method  # type: ignore[union-attr]
            self._http_version = head.http_version  # type: ignore[union-attr]
            self.keep_alive = self.keep_alive and head.keep_alive  # type: ignore[union-attr]
        elif event is END_OF_REQUEST:
            self.request_state = RequestState.DONE
        else:  # BadRequest (the queue holds nothing else)
            # A broken body belongs to the current request: deliver it now. A broken next
            # request waits its turn, like any pipelined request.
            if state is RequestState.DONE:
                return PAUSED
            self.keep_alive = False
            self._method = "HEAD" if event.head else "GET"  # type: ignore[union-attr]
        return events.popleft()

    # -- httptools callbacks (peer input; raise _Reject to abort) --

    def on_message_begin(self) -> None:
        # No _progress mark here (nor in on_headers_complete / on_message_complete): the
        # url, header, body and chunk callbacks cover every read that carries real
        # progress, and this is the hot path.
        self._in_head = True
        self._line_here = self._fresh
        self._fresh = self._between = False
        self._url = b""
        self._headers = []
        self._host_count = 0
        if self._rare:  # flags only rare headers set: reset them only when one was set
            self._rare = False
            self._expect_continue = False
            self._upgrade = None
            self._chunked = False
            self._te_other = None
            self._forwarded = False

    def on_url(self, url: bytes) -> None:
        self._progress = True
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        # llhttp drops the whitespace before a value but keeps what follows it; both are
        # optional whitespace around the field value, not part of it (RFC 9112 §5.1).
        # rstrip returns the value itself when there is nothing to strip.
        value = value.rstrip(b" \t")
        if not self._in_head:
            # Trailer fields of a chunked body: not exposed in the ASGI http scope, but
            # held to the same limits as header fields.
            self._trailers += 1
            if self._trailers > self.limits.max_header_count:
                raise _Reject(431, "too many trailer fields")
            if len(name) + len(value) > self.limits.max_header_size:
                raise _Reject(431, "trailer field too large")
            return
        headers = self._headers
        if len(headers) >= self.limits.max_header_count:
            raise _Reject(431, "too many header fields")
        if len(name) + len(value) > self.limits.max_header_size:
            raise _Reject(431, "header field too large")
        name = name.lower()
        headers.append((name, value))
        special = _SPECIAL_HEADERS.get(name)
        if special is not None:
            special(self, value)

    def _on_host(self, value: bytes) -> None:
        self._host_count += 1
        if self._host_count > 1:
            raise _Reject(400, "more than one Host header")
        if value not in _GOOD_HOSTS:
            # Frameworks build URLs from Host: 'a b', 'a/b', 'a@b' or 'a#b' must not reach
            # them as a host (RFC 9110 §7.2, RFC 3986 §3.2.2).
            if not is_valid_host(value):
                raise _Reject(400, "invalid Host header")
            if len(_GOOD_HOSTS) < _GOOD_HOSTS_SIZE:
                _GOOD_HOSTS.add(value)

    def _on_transfer_encoding(self, value: bytes) -> None:
        # RFC 9112 §6.1, §6.3: chunked must be the final coding and appear once; anything
        # after it, or an unparseable list, makes the body length unknowable: 400. A coding
        # we do not implement (gzip, ...) before a final chunked is well-formed but not
        # supported: 501, decided once the head is complete (on_headers_complete).
        self._rare = True
        for item in value.split(b","):
            name, parameters, _ = item.partition(b";")
            coding = name.strip().lower()
            if self._chunked or not is_token_bytes(coding):
                raise _Reject(400, "invalid Transfer-Encoding")
            if coding == b"chunked":
                if parameters:
                    # chunked takes no parameters (RFC 9112 §7.1 defines none). llhttp refuses
                    # "chunked;q=1" too, but only after the head was handed to the app.
                    raise _Reject(400, "invalid Transfer-Encoding")
                self._chunked = True
            else:
                self._te_other = coding
        self._trailers = 0  # only chunked messages have trailers: reset here, off the GET path

    def _on_expect(self, value: bytes) -> None:
        self._expect_continue = value.strip().lower() == b"100-continue"
        self._rare = True

    def _on_upgrade_header(self, value: bytes) -> None:
        self._upgrade = value.strip().lower()
        self._rare = True

    def _on_proxy_header(self, value: bytes) -> None:
        # Noted here, where every header passes anyway, so that building the scope only
        # walks the headers again for the rare request that carries one.
        self._forwarded = self._rare = True

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        if self._replaying:
            self._replaying = False  # the synthetic head of an ignored upgrade: body follows
            return
        raw_method = parser.get_method()
        url = self._url
        # The common case costs three index tests: the request line starts this read (no
        # CR/LF before it), one space follows the method, and at "METHOD SP target SP" stands
        # an H, the start of HTTP/ and of no other protocol llhttp accepts. Anything else
        # (pipelined heads, a long head split over reads) takes the exact check. The whole
        # head is in the window when it started it, so the indexes are in range.
        if self._line_here:
            data = self._carry + self._data if self._carry else self._data
            method_end = len(raw_method)
            regular = data[0] > _SP and data[method_end + 1] != _SP and data[method_end + len(url) + 2] == _H
        else:
            regular = False
        if not regular and self._irregular_line():
            raise _Reject(400, "invalid request line: expected METHOD SP target SP HTTP/1.x")
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version.startswith("0."):
                raise _Reject(400, "HTTP/0.9 is not supported")
            raise _Reject(505, f"HTTP/{version} is not supported")
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        if method == "CONNECT":
            raise _Reject(400, "CONNECT is not supported")
        authority: bytes | None = None
        if 35 in url:  # b"#"[0]; an int test is a memchr, a bytes one costs 6x more
            # A fragment is the client's business and never sent (RFC 9112 §3.2.1,
            # RFC 9110 §4.2.5); one on the wire would reach the app inside path or query.
            raise _Reject(400, "fragment in the request target")
        if url[:1] == b"/":
            raw_path, sep, query = url.partition(b"?")
        elif url == b"*" and method == "OPTIONS":
            raw_path, query = b"*", b""
        elif url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            authority, raw_path, query = _split_absolute_form(url)
        else:
            raise _Reject(400, "invalid request target")
        if self._host_count == 0 and version == "1.1":
            raise _Reject(400, "missing Host header")
        if (self._chunked or self._te_other is not None) and version == "1.0":
            raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        if self._te_other is not None:
            if not self._chunked:
                raise _Reject(400, "Transfer-Encoding: chunked is not the final coding")
            raise _Reject(501, f"transfer coding {self._te_other.decode('latin-1')!r} is not supported")
        if authority is not None:
            # RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore Host and
            # use the target's authority, which is what a proxy in front routed on.
            self._headers = [(n, authority if n == b"host" else v) for n, v in self._headers]
        upgrade = None
        if self._upgrade is not None and parser.should_upgrade():  # llhttp needs an Upgrade field
            if (
                self._upgrade is not None
                and self.limits.websocket
                and method == "GET"
                and b"websocket" in [t.strip() for t in self._upgrade.split(b",")]
            ):
                if self._body_framing() is not None:
                    # The protocol switches only after the whole request (RFC 9110 §7.8), so
                    # these body bytes would be HTTP, yet the WebSocket would read them as
                    # frames. A handshake has no body (RFC 6455 §4.1): refuse it.
                    raise _Reject(400, "WebSocket upgrade request with a body")
                upgrade = b"websocket"
            else:
                # Served as plain HTTP, but httptools makes llhttp skip the body: remember
                # its framing to replay it once llhttp pauses (see _on_upgrade).
                framing = self._body_framing()
                if framing is not None:
                    self._pending_upgrade = framing
        head = RequestHead(
            method,
            url,
            raw_path,
            query,
            version,
            self._headers,
            parser.should_keep_alive(),
            self._expect_continue and version == "1.1",  # never 100 to HTTP/1.0 (RFC 9110 §10.1.1)
            upgrade,
            self._forwarded,
        )
        if upgrade is not None:
            self._pending_upgrade = head  # becomes an UpgradeRequest once llhttp stops
        else:
            self._events.append(head)

    def _unknown_method(self) -> bool:
        """Whether llhttp refused a method that is a well-formed token it does not know.

        llhttp parses a fixed list of methods; any other token is still a valid method
        (RFC 9110 §9.1), which a server that does not implement it answers with 501 (§15.6.2),
        not 400. Told apart only when the request line starts the window, else 400.
        """
        if not self._line_here:
            return False
        method = (self._carry + self._data).partition(b" ")[0]
        return len(method) <= 32 and is_token_bytes(method) is not None

    def _irregular_line(self) -> bool:
        """Whether the request line being parsed is one llhttp accepts but HTTP/1.1 does not.

        llhttp also parses RTSP/ and ICE/ request lines and skips extra spaces between the
        parts, and reports neither (RFC 9112 §3: one SP between method, target and
        HTTP-version). Every line of this read (after what is left of an unfinished head,
        so the request line being judged is in it) that looks like such a request line is
        collected once per read, in one linear pass, and this request's "METHOD target" is
        looked up among them: pipelined requests cost a lookup each, not a search each. A
        false positive needs a body line of the same read that repeats this request's
        method and target with a bad protocol: it costs that request, no one else's.
        """
        data = self._data
        if self._irregular_of is not data:
            self._irregular_of = data
            self._irregular = _irregular_request_lines(self._carry + data if self._carry else data)
        irregular = self._irregular
        return bool(irregular) and self._parser.get_method() + b" " + self._url in irregular

    def _body_framing(self) -> bytes | None:
        """A minimal head with this request's body framing, or None if it has no body."""
        if self._chunked:
            return b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for name, value in self._headers:
            if name == b"content-length" and value.strip() not in (b"0", b""):
                return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value.strip() + b"\r\n\r\n"
        return None

    def on_body(self, body: bytes) -> None:
        self._progress = True
        self._events.append(BodyChunk(body))

    def on_message_complete(self) -> None:
        self._between = True
        if self._pending_upgrade is None:
            self._events.append(END_OF_REQUEST)

    def _on_upgrade(self, data: bytes, offset: int) -> None:
        pending = self._pending_upgrade
        self._pending_upgrade = None
        rest = data[offset:]
        if pending is None:
            # llhttp pauses on any Connection: upgrade + Upgrade pair. An upgrade we don't
            # speak (h2c, ...) without a body is a plain request that is already complete:
            # go on parsing what follows it.
            if rest:
                self.receive_data(rest)
            return
        if pending.__class__ is bytes:
            # An ignored upgrade with a body that llhttp skipped: a fresh parser reads the
            # body from a synthetic head with the same framing, then whatever follows.
            assert isinstance(pending, bytes)
            self._parser = httptools.HttpRequestParser(self)
            self._replaying = True
            self.receive_data(pending + rest)
            return
        assert isinstance(pending, RequestHead)
        self._events.append(UpgradeRequest(pending, rest))
        self.state = ConnectionState.SWITCHED

    def _fail(self, status: int, reason: str) -> None:
        # The answer to a HEAD request has no body, an error too (RFC 9110 §9.3.2). The
        # method is known once the target started (on_url runs after the method is parsed).
        head = bool(self._url) and self._parser.get_method() == b"HEAD"
        self._in_head = False
        self._events.append(BadRequest(status, reason, head=head))
        self.state = ConnectionState.ERROR

    # ---------------------------------------------------------------- sending

    def start_response(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None = None
    ) -> bytes:
        """Serialise the response head, choosing the body framing.

        Args:
            status: the final status code (200-599).
            headers: ``(name, value)`` byte pairs from the app.
            body: the whole body when it is already known (the app sent its only body
                chunk together with the start); it is framed with Content-Length and
                appended, and the response is complete.

        Returns:
            bytes to write.

        Raises:
            LocalProtocolError: invalid status, header name or value, or wrong state.
        """
        return b"".join(self._start(status, headers, body))

    def start_response_parts(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> list[bytes]:
        """``start_response`` with a known body, as ``[head, body]`` for a vectored write.

        For a large body: joining it to the head would copy all of it once more.
        """
        parts = self._start(status, headers, body)
        return [b"".join(parts[:-1]), parts[-1]]

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None) -> list[bytes]:
        # The wire form of start_response: head lines, then (when ``body`` is given) the
        # framed body as the last element.
        if self.response_state is not ResponseState.WAITING:
            raise LocalProtocolError("response already started")
        if status.__class__ is not int:
            status = status_code(status)  # an int subclass such as HTTPStatus.OK, or refused
        status_line = STATUS_LINES.get(status)
        if status_line is None or status < 200:
            # 1xx are interim responses (100 Continue is ours to send; 101 is an upgrade):
            # never the final response the caller is starting here.
            raise LocalProtocolError(f"invalid status code {status!r} for a final response")
        no_body = status in _NO_BODY_STATUS or self._method == "HEAD"
        if body is not None and self.request_state is not RequestState.DONE:
            # The whole response goes out before the request body was read: the connection
            # cannot be reused (start_next_request), so say so.
            self.keep_alive = False
        content_length: int | None = None
        has_server = has_date = False
        parts = [status_line]
        append = parts.append
        cache = _HEADER_LINES
        for pair in headers:
            # Most response headers repeat from one response to the next (content-type,
            # cache-control, ...): their validated wire form is looked up, not rebuilt.
            try:
                line = cache.get(pair)
            except TypeError:  # an unhashable pair (a list): validate it every time
                line = None
            if line is not None:
                append(line)
                continue
            name, value = pair
            check_field(name, value)
            lname = name.lower()
            if lname == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise LocalProtocolError(f"invalid content-length {value!r}") from None
                if length < 0 or (content_length is not None and length != content_length):
                    raise LocalProtocolError(f"invalid content-length {value!r}")
                content_length = length
            elif lname == b"transfer-encoding":
                continue  # framing is ours to choose
            elif lname == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue  # written below, once, from keep_alive
            elif lname == b"server":
                has_server = True
            elif lname == b"date":
                has_date = True
            else:
                line = name + b": " + value + b"\r\n"
                if pair.__class__ is tuple and len(cache) < _HEADER_CACHE_SIZE:
                    cache[pair] = line
                append(line)
                continue
            append(name + b": " + value + b"\r\n")
        defaults = self.defaults
        if not has_date and defaults.date:
            append(defaults.date)
        if not has_server and defaults.server:
            append(defaults.server)
        if defaults.extra:
            append(defaults.extra)

        if no_body:
            self._framing = 0
            self._remaining = 0
        elif content_length is not None:
            self._framing = 0
            self._remaining = content_length
        elif body is not None:
            # The common single-shot response: the length is ours, so the body needs none
            # of send_body's checks and goes straight after the head.
            append(b"content-length: %d\r\n" % len(body))
            self._framing = 0
            self._remaining = 0
            self._no_body = False
            append(b"connection: close\r\n\r\n" if not self.keep_alive
                   else b"connection: keep-alive\r\n\r\n" if self._http_version == "1.0" else b"\r\n")
            append(body)
            self.response_state = ResponseState.DONE
            return parts
        elif self._http_version == "1.1":
            append(b"transfer-encoding: chunked\r\n")
            self._framing = 1
        else:
            self._framing = 2  # HTTP/1.0 client: the body ends when we close
            self.keep_alive = False
        self._no_body = no_body

        if not self.keep_alive:
            append(b"connection: close\r\n\r\n")
        elif self._http_version == "1.0":
            append(b"connection: keep-alive\r\n\r\n")
        else:
            append(b"\r\n")
        self.response_state = ResponseState.BODY
        if body is not None:
            append(self.send_body(body, end=True))
        return parts

    def send_body(self, data: bytes, end: bool) -> bytes:
        """Frame a piece of the response body.

        Args:
            data: body bytes (may be empty).
            end: this is the last piece.

        Returns:
            bytes to write (possibly empty).

        Raises:
            LocalProtocolError: the body is longer than its Content-Length, or ends
                shorter, or no response was started.
        """
        if self.response_state is not ResponseState.BODY:
            raise LocalProtocolError("send_body outside a response body")
        if end:
            self.response_state = ResponseState.DONE
        if self._no_body:
            return b""
        framing = self._framing
        if framing == 0:
            self._remaining -= len(data)
            if self._remaining < 0:
                self.keep_alive = False
                self.response_state = ResponseState.DONE
                raise LocalProtocolError("response body longer than its Content-Length")
            if end and self._remaining:
                self.keep_alive = False
                raise LocalProtocolError("response body shorter than its Content-Length")
            return data
        if framing == 1:
            if data:
                chunk = b"%x\r\n%b\r\n" % (len(data), data)
                return chunk + b"0\r\n\r\n" if end else chunk
            return b"0\r\n\r\n" if end else b""
        return data

    def send_body_parts(self, data: bytes, end: bool) -> list[bytes]:
        """``send_body`` for a large piece, as parts for a vectored write: a chunk's
        framing goes around ``data`` instead of being joined to it (which copies it)."""
        if self._framing == 1 and data and not self._no_body and self.response_state is ResponseState.BODY:
            if end:
                self.response_state = ResponseState.DONE
            return [b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n" if end else b"\r\n"]
        return [self.send_body(data, end)]

    def error_response(self, status: int, reason: str = "") -> bytes:
        """A complete plain-text error response; the connection must close after it.

        Args:
            status: 4xx or 5xx.
            reason: short text for the body (and the log).
        """
        body = (HTTPStatus(status).phrase + (": " + reason if reason else "") + "\n").encode("utf-8", "replace")
        defaults = self.defaults
        self.keep_alive = False
        self.response_state = ResponseState.DONE
        return b"".join(
            (
                STATUS_LINES[status],
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                defaults.date or b"",
                defaults.server,
                b"connection: close\r\n\r\n",
                b"" if self._method == "HEAD" else body,  # RFC 9110 §9.3.2
            )
        )

    def start_next_request(self) -> bool:
        """Reset for the next request on a kept-alive connection.

        Returns:
            False (and nothing changes) when the connection must close instead: keep-alive
            is off, the request body was not fully read, or the connection is in error.
        """
        if self.response_state is not ResponseState.DONE:
            raise LocalProtocolError("start_next_request before the response ended")
        if not self.keep_alive or self.request_state is not RequestState.DONE:
            # A half-read request body would be parsed as the next request: never reuse.
            self.keep_alive = False
            return False
        self.request_state = RequestState.HEAD
        self.response_state = ResponseState.WAITING
        self._method = "GET"  # until the next head: an error answered meanwhile (408) has a body
        return True


def _irregular_request_lines(window: bytes) -> frozenset[bytes]:
    """``METHOD SP target`` of every line of ``window`` that reads as a request line with a
    protocol other than HTTP/ or with more than one space between its parts (also one still
    arriving, whose protocol is not there yet)."""
    if b"TSP/" not in window and b"ICE/" not in window and b"  " not in window:
        return _NO_LINES
    found = set()
    for line in window.split(b"\r\n"):
        # llhttp skips CR and LF bytes before a request line: "\nGET / RTSP/1.0" is one.
        parts = line.lstrip(b"\r\n").split(b" ")
        words = [part for part in parts if part]
        if len(words) == 3 and (len(parts) != 3 or not words[2].startswith(b"HTTP/")):
            found.add(words[0] + b" " + words[1])
        elif len(words) == 2 and len(parts) > 3:
            # A request line still arriving, with a run of spaces already: judge it now.
            # llhttp takes any number of them, and a few KiB would push its method and
            # target out of the carried bytes before the protocol name arrives.
            found.add(words[0] + b" " + words[1])
    return frozenset(found)


def _split_absolute_form(url: bytes) -> tuple[bytes, bytes, bytes]:
    """``(authority, path, query)`` of an absolute-form target ``http[s]://authority/path?query``.

    Raises:
        _Reject: the authority is empty or not ``host[:port]`` (RFC 9110 §4.2.1: an http
            URI needs a host), or carries userinfo (§4.2.4: treat it as an error).
    """
    rest = url[url.index(b"://") + 3 :]
    end = len(rest)
    for separator in (b"/", b"?"):
        index = rest.find(separator)
        if index != -1 and index < end:
            end = index
    authority, rest = rest[:end], rest[end:]
    if b"@" in authority:
        raise _Reject(400, "userinfo in the request target")
    if not authority or authority[:1] == b":" or not is_valid_host(authority):
        raise _Reject(400, "invalid authority in the request target")
    raw_path, _, query = rest.partition(b"?")
    return authority, raw_path or b"/", query


_SPECIAL_HEADERS = {
    b"host": H1Connection._on_host,
    b"transfer-encoding": H1Connection._on_transfer_encoding,
    b"expect": H1Connection._on_expect,
    b"upgrade": H1Connection._on_upgrade_header,
    **dict.fromkeys(PROXY_HEADERS, H1Connection._on_proxy_header),
}

# Interned method names: one dict lookup instead of a decode per request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
