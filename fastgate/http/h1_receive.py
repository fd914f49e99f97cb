"""The receive half of an HTTP/1.1 server connection: bytes in, request events out.

``RequestReader`` feeds bytes to an httptools (llhttp) parser whose callbacks append
events to ``events``: ``RequestHead``, ``BodyChunk``, ``END_OF_REQUEST``,
``UpgradeRequest``, ``BadRequest``. It never raises on peer input and never looks at the
response side: ``H1Connection`` (``fastgate.http.h1``) hands the events out in order and
moves the state machines. The parser may run ahead of the responses (pipelining); once it
queued a ``BadRequest`` or an ``UpgradeRequest`` the reader stops: later bytes are not
HTTP/1.1 any more, or not worth reading.

Strictness. llhttp in its default strict mode already rejects bare LF line ends, obs-fold,
control bytes in header values, invalid tokens, Content-Length together with
Transfer-Encoding and duplicate Content-Length (RFC 9112 §2.2, §5.2, §6.3). What it lets
through and we refuse here: HTTP versions other than 1.0/1.1 (including 0.9), transfer
codings other than exactly ``chunked`` and any Transfer-Encoding in HTTP/1.0 (§6.1: its
framing cannot be trusted), CONNECT and other non-origin targets, a missing, repeated or
malformed Host in HTTP/1.1 (§3.2, RFC 9110 §7.2), request lines llhttp reads leniently
(other protocols than HTTP/, extra spaces: §3), and heads over the configured limits.

httptools buffers a header (or trailer) field until the next one starts, and calls us only
then, so a peer trickling one endless field would grow that buffer unbounded. We count the
bytes of every ``receive_data`` call during which no callback fired ("stalled" bytes) and
refuse with 431 once they exceed one field's limit: a field can only be that large.

Upgrades. httptools tells llhttp to skip the body of any request carrying ``Connection:
upgrade`` + ``Upgrade``. For a WebSocket upgrade that is what we want (the bytes after the
head belong to the new protocol). Any other upgrade (``h2c``) is served as plain HTTP
(RFC 9110 §7.8 lets a server ignore Upgrade): when such a request has a body, we replay
its framing into a fresh parser so the body is delivered and parsing continues after it.

This runs once per request and was tuned with instruction counts (callgrind; see
benchmarks/OPTIMIZATIONS.md): the cheap tests come first, the rare headers set one flag.
It is a little over 500 lines because it is one parser's callbacks and the state they share.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import httptools

from fastgate.fields import is_token_bytes, is_valid_host
from fastgate.http.events import (
    END_OF_REQUEST,
    BadRequest,
    BodyChunk,
    Event,
    RequestHead,
    UpgradeRequest,
)

# Slack over max_header_size for a stalled field: ": ", CRLF and a little optional whitespace.
_FIELD_SLACK: Final = 64


@dataclass(frozen=True, slots=True)
class H1Limits:
    """Request limits (RFC 9112 leaves them to the server)."""

    max_request_line: int = 8190
    max_header_count: int = 100
    max_header_size: int = 8190
    websocket: bool = True  # False: upgrade requests are served as plain HTTP


# Host values seen valid lately (bounded): most clients send the same few.
_GOOD_HOSTS: set[bytes] = set()
_GOOD_HOSTS_SIZE: Final = 256
_H: Final = 72  # b"H"[0]
_SP: Final = 32  # b" "[0]
_NO_LINES: Final[frozenset[bytes]] = frozenset()
# Headers a proxy uses to describe the original request (read only from trusted peers).
PROXY_HEADERS: Final = frozenset(
    (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
     b"x-forwarded-prefix")
)


# What a closed reader holds instead of its parser (never fed: the reader has stopped).
_DETACHED: Final = httptools.HttpRequestParser(None)


class _Reject(Exception):
    """Raised inside a parser callback to abort parsing with a status."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


# llhttp errors whose right answer is not a plain 400, keyed by llhttp's reason text.
_ERROR_STATUS: Final = {
    "Invalid HTTP version": (505, "HTTP version not supported"),
    "Pause on PRI/Upgrade": (505, "HTTP/2 is not supported over cleartext"),
}


class RequestReader:
    """Parses the requests of one connection into events.

    Args:
        limits: request size limits.
    """

    __slots__ = (
        "limits",
        "events",
        "stopped",
        "in_head",
        "_parser",
        "_url",
        "_headers",
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
        "_te_trailers",
        "_rare",
        "_upgrade_head",
        "_replay",
        "_data",
        "_carry",
        "_between",
        "_fresh",
        "_line_here",
        "_irregular",
        "_irregular_of",
    )

    def __init__(self, limits: H1Limits | None = None) -> None:
        self.limits = limits or H1Limits()
        self.events: deque[Event] = deque()
        self.stopped = False  # a BadRequest or UpgradeRequest was queued, or close() ran
        self.in_head = False  # a request head is being parsed
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
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
        self._te_trailers = False  # TE: trailers (the client accepts response trailers)
        self._rare = False  # one of the six flags above was set (see on_message_begin)
        # A WebSocket head waiting for llhttp's upgrade pause (it becomes an UpgradeRequest).
        self._upgrade_head: RequestHead | None = None
        # The framing head to replay for an ignored upgrade (h2c) that carries a body.
        self._replay: bytes | None = None
        # Request-line check (see _irregular_line).
        self._data = b""  # the bytes being fed, while feeding
        self._carry = b""  # the last bytes of a head that continues in the next read
        self._between = True  # no message in progress: the next one starts a read's bytes
        self._fresh = True  # no message began yet in this read, and none was in progress
        self._line_here = False  # the current request line starts the window (carry + data)
        self._irregular = _NO_LINES  # request lines of one read that are not HTTP/1.1's...
        self._irregular_of = b""  # ...namely of this read (compared by identity)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. Never raises on peer input: errors become BadRequest.

        Args:
            data: bytes as read from the transport.
        """
        if self.stopped:
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
        if self.in_head:
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
        self.stopped = True
        self._parser = _DETACHED

    # -- httptools callbacks (peer input; raise _Reject to abort) --

    def on_message_begin(self) -> None:
        # No _progress mark here (nor in on_headers_complete / on_message_complete): the
        # url, header, body and chunk callbacks cover every read that carries real
        # progress, and this is the hot path.
        self.in_head = True
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
            self._te_trailers = False

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
        if not self.in_head:
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

    def _on_te(self, value: bytes) -> None:
        # RFC 9110 §10.1.4: "trailers" in TE says the client will not drop trailer fields.
        # Noted here for the scope's http.response.trailers extension.
        if b"trailers" in [t.partition(b";")[0].strip().lower() for t in value.split(b",")]:
            self._te_trailers = True
        self._rare = True

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.in_head = False
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
        version: str | None = None
        if self._line_here:
            data = self._carry + self._data if self._carry else self._data
            method_end = len(raw_method)
            protocol = method_end + len(url) + 2
            regular = data[0] > _SP and data[method_end + 1] != _SP and data[protocol] == _H
            if regular:
                # llhttp checked "HTTP/d.d" there: the version is read off the line, since
                # httptools' get_http_version formats a new string each time (2.2K
                # instructions a request, OPTIMIZATIONS row 22).
                version = _VERSIONS.get(data[protocol + 5 : protocol + 8])
        else:
            regular = False
        if not regular and self._irregular_line():
            raise _Reject(400, "invalid request line: expected METHOD SP target SP HTTP/1.x")
        if version is None:
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
                self._replay = self._body_framing()
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
            self._te_trailers and version == "1.1",  # trailers need chunked framing
        )
        if upgrade is not None:
            self._upgrade_head = head  # becomes an UpgradeRequest once llhttp stops
        else:
            self.events.append(head)

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
        if not irregular:
            return False
        # A line may begin with the end of the previous request's body ("\x00GET / RTSP/1.0"
        # after a one-byte body): llhttp's request starts after it, so the match is a suffix.
        key = self._parser.get_method() + b" " + self._url
        return any(line.endswith(key) for line in irregular)

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
        self.events.append(BodyChunk(body))

    def on_message_complete(self) -> None:
        self._between = True
        if self._upgrade_head is None and self._replay is None:
            # (Else the upgrade pause follows: see _on_upgrade.)
            self.events.append(END_OF_REQUEST)

    def _on_upgrade(self, data: bytes, offset: int) -> None:
        # llhttp paused after a head carrying Connection: upgrade + Upgrade.
        rest = data[offset:]
        head = self._upgrade_head
        if head is not None:
            # A WebSocket upgrade: the bytes after the head belong to the new protocol.
            self._upgrade_head = None
            self.events.append(UpgradeRequest(head, rest))
            self.stopped = True
            return
        replay = self._replay
        if replay is not None:
            # An ignored upgrade with a body that llhttp skipped: a fresh parser reads the
            # body from a synthetic head with the same framing, then whatever follows.
            self._replay = None
            self._parser = httptools.HttpRequestParser(self)
            self._replaying = True
            self.receive_data(replay + rest)
            return
        # An upgrade we don't speak (h2c, ...) without a body: a plain request that is
        # already complete. Go on parsing what follows it.
        if rest:
            self.receive_data(rest)

    def _fail(self, status: int, reason: str) -> None:
        # The answer to a HEAD request has no body, an error too (RFC 9110 §9.3.2). The
        # method is known once the target started (on_url runs after the method is parsed).
        head = bool(self._url) and self._parser.get_method() == b"HEAD"
        self.in_head = False
        self.events.append(BadRequest(status, reason, head=head))
        self.stopped = True


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
    b"host": RequestReader._on_host,
    b"transfer-encoding": RequestReader._on_transfer_encoding,
    b"expect": RequestReader._on_expect,
    b"upgrade": RequestReader._on_upgrade_header,
    b"te": RequestReader._on_te,
    **dict.fromkeys(PROXY_HEADERS, RequestReader._on_proxy_header),
}

# The versions served, by their bytes on the request line (see on_headers_complete).
_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
# Interned method names: one dict lookup instead of a decode per request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
