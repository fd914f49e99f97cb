"""The send half of an HTTP/1.1 server connection: response heads and body framing, as bytes.

``ResponseWriter`` turns the app's status, headers and body pieces into wire bytes. It
knows nothing of the request parser; ``H1Connection`` (``fastgate.http.h1``) owns the
state machines and tells it, on each call, what it needs about the request being answered
(method, HTTP version, whether it may be kept alive, whether its body was fully read).

What the writer decides and reports back through ``closing``: a response that must end
the connection (the app sent ``Connection: close``, a body delimited by the close, a whole
response sent before the request body was read, a body that broke its Content-Length, an
error response). The connection's keep-alive is ``H1Connection.keep_alive``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final

from fastgate.errors import LocalProtocolError
from fastgate.fields import check_field


class Framing(enum.Enum):
    """How the body of the response being written is delimited (RFC 9112 §6)."""

    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "close-delimited"  # an HTTP/1.0 client without a length: the body ends when we close
    NONE = "no body"  # HEAD, 204, 304: whatever the app sends is dropped


_LENGTH, _CHUNKED, _NONE = Framing.LENGTH, Framing.CHUNKED, Framing.NONE


class DefaultHeaders:
    """Headers the server adds to every response; ``date`` is refreshed by the worker.

    ``tail`` is Date, Server and the ``--header`` lines joined, rebuilt when the date
    changes (once a second): a response whose app set neither Date nor Server, nearly
    every one, appends it as one piece.
    """

    __slots__ = ("_date", "server", "extra", "tail")

    def __init__(self, *, server: bytes | None = b"fastgate", extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._date: bytes | None = None
        self.server = b"server: " + server + b"\r\n" if server else b""
        self.extra = b"".join(n + b": " + v + b"\r\n" for n, v in extra)
        self.tail = self.server + self.extra

    @property
    def date(self) -> bytes | None:
        """``b"date: ...\\r\\n"`` once the worker's timer sets it (None: no Date header)."""
        return self._date

    @date.setter
    def date(self, line: bytes | None) -> None:
        self._date = line
        self.tail = (line or b"") + self.server + self.extra


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))


# Precomputed for every valid code, so the hot path is one dict lookup.
STATUS_LINES: Final[dict[int, bytes]] = {code: _status_line(code) for code in range(100, 600)}
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Validated "name: value\r\n" lines of ordinary response headers (not framing, Server or
# Date, which start must see), keyed by the app's (name, value) tuple. Bounded: once full,
# new pairs are validated each time (a per-request value, like an ETag, would otherwise
# push out the ones that repeat).
_HEADER_LINES: dict[tuple[bytes, bytes], bytes] = {}
_HEADER_CACHE_SIZE: Final = 512
_NO_BODY_STATUS: Final = frozenset((204, 304))  # RFC 9110 §6.4.1 (1xx never reach start)
_KEEP_ALIVE_10: Final = b"connection: keep-alive\r\n\r\n"
_CLOSE: Final = b"connection: close\r\n\r\n"


class ResponseWriter:
    """Serialises one response at a time.

    Args:
        defaults: headers added to every response (Date, Server, ``--header``).
    """

    __slots__ = ("defaults", "framing", "closing", "request_header", "_remaining")

    def __init__(self, defaults: DefaultHeaders | None = None) -> None:
        self.defaults = defaults or DefaultHeaders()
        # One validated "name: value\r\n" line for this response only (--request-id-header),
        # set through H1Connection.set_response_header, cleared for the next request.
        self.request_header = b""
        self.framing = _LENGTH
        self.closing = False  # this response ends the connection
        self._remaining = 0  # body bytes still owed under Framing.LENGTH

    def start(
        self,
        status: object,
        headers: Iterable[Any],
        body: bytes | None,
        method: str,
        http_version: str,
        keep_alive: bool,
        request_done: bool,
    ) -> list[bytes]:
        """The response head as wire parts; with ``body`` (the whole body), the framed body last.

        Args:
            status: the final status code (200-599; an int subclass such as HTTPStatus is taken
                as its int).
            headers: ``(name, value)`` byte pairs from the app.
            body: the whole body when it is already known, else None (``body`` follows).
            method: the request's method (a HEAD response has no body).
            http_version: the request's version (``"1.1"`` or ``"1.0"``).
            keep_alive: whether the connection may stay open after this response so far.
            request_done: whether the request body was fully read.

        Returns:
            the head lines, then (when ``body`` is given) the framed body as the last element.

        Raises:
            LocalProtocolError: invalid status, header name or value (nothing is changed).
        """
        # An int subclass (HTTPStatus.OK) finds its line as the int does; a bool finds none
        # (True is 1), a float that equals an int is no int.
        status_line = STATUS_LINES.get(status) if isinstance(status, int) else None
        if status_line is None or not isinstance(status, int) or status < 200:
            # 1xx are interim responses (100 Continue is ours to send; 101 is an upgrade):
            # never the final response the caller is starting here.
            raise LocalProtocolError(f"invalid status code {status!r} for a final response")
        no_body = status in _NO_BODY_STATUS or method == "HEAD"
        # The whole response goes out before the request body was read: the connection
        # cannot be reused, so say so.
        closing = body is not None and not request_done
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
                    closing = True
                continue  # written below, once, from keep-alive
            elif lname == b"server":
                has_server = True
            elif lname == b"date":
                has_date = True
            else:
                line = name + b": " + value + b"\r\n"
                # Only exact tuples: a subclass may hash and compare as it likes.
                if type(pair) is tuple and len(cache) < _HEADER_CACHE_SIZE:
                    cache[pair] = line
                append(line)
                continue
            append(name + b": " + value + b"\r\n")
        defaults = self.defaults
        if has_date or has_server:
            date = defaults.date
            if not has_date and date:
                append(date)
            if not has_server and defaults.server:
                append(defaults.server)
            if defaults.extra:
                append(defaults.extra)
        else:
            tail = defaults.tail
            if tail:
                append(tail)
        if self.request_header:
            append(self.request_header)

        if no_body:
            framing = _NONE
        elif content_length is not None:
            framing = _LENGTH
            self._remaining = content_length
        elif body is not None:
            # The common single-shot response: the length is ours, so the body needs none
            # of body()'s checks and goes straight after the head.
            append(b"content-length: %d\r\n" % len(body))
            self.framing = _LENGTH
            self._remaining = 0
            if closing:
                self.closing = True
            append(_CLOSE if closing or not keep_alive else _KEEP_ALIVE_10 if http_version == "1.0" else b"\r\n")
            append(body)
            return parts
        elif http_version == "1.1":
            append(b"transfer-encoding: chunked\r\n")
            framing = _CHUNKED
        else:
            framing = Framing.CLOSE  # HTTP/1.0 client: the body ends when we close
            closing = True
        self.framing = framing
        if closing:
            self.closing = True
        append(_CLOSE if closing or not keep_alive else _KEEP_ALIVE_10 if http_version == "1.0" else b"\r\n")
        if body is not None:
            append(self.body(body, end=True))
        return parts

    def body(self, data: bytes, end: bool) -> bytes:
        """Frame a piece of the response body.

        Args:
            data: body bytes (may be empty).
            end: this is the last piece.

        Returns:
            bytes to write (possibly empty).

        Raises:
            LocalProtocolError: the body is longer than its Content-Length, or ends shorter
                (``closing`` is then set: the connection cannot be reused).
        """
        framing = self.framing
        if framing is _LENGTH:
            self._remaining -= len(data)
            if self._remaining < 0:
                self.closing = True
                raise LocalProtocolError("response body longer than its Content-Length")
            if end and self._remaining:
                self.closing = True
                raise LocalProtocolError("response body shorter than its Content-Length")
            return data
        if framing is _CHUNKED:
            if data:
                chunk = b"%x\r\n%b\r\n" % (len(data), data)
                return chunk + b"0\r\n\r\n" if end else chunk
            return b"0\r\n\r\n" if end else b""
        if framing is _NONE:
            return b""
        return data  # close-delimited

    def body_parts(self, data: bytes, end: bool) -> list[bytes]:
        """``body`` for a large piece, as parts for a vectored write: a chunk's framing goes
        around ``data`` instead of being joined to it (which copies it)."""
        if self.framing is _CHUNKED and data:
            return [b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n" if end else b"\r\n"]
        return [self.body(data, end)]

    def file_framing(self, size: int) -> tuple[bytes, int, bytes]:
        """Frame a file of ``size`` bytes sent as the whole rest of the body (pathsend).

        Returns:
            ``(before, count, after)``: bytes to write before the file, how many bytes of
            the file to send, bytes to write after them. Under Content-Length ``count`` is
            what the header promised: a file that turns out shorter breaks the response,
            and the sender must close (``closing``).
        """
        framing = self.framing
        if framing is _LENGTH:
            count, self._remaining = self._remaining, 0
            return b"", count, b""
        if framing is _CHUNKED:
            if size:
                return b"%x\r\n" % size, size, b"\r\n0\r\n\r\n"
            return b"", 0, b"0\r\n\r\n"
        if framing is _NONE:
            return b"", 0, b""
        return b"", size, b""  # close-delimited

    def trailers(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """End a chunked body with trailer fields (``http.response.trailers``).

        Under any other framing the trailers are dropped (the extension allows it: they are
        advisory), and the body must be complete.

        Raises:
            LocalProtocolError: an invalid trailer field, or a Content-Length body that
                ended short (``closing`` is then set).
        """
        lines = []
        for name, value in headers:
            check_field(name, value)
            lines.append(name + b": " + value + b"\r\n")
        if self.framing is _CHUNKED:
            return b"0\r\n" + b"".join(lines) + b"\r\n"
        if self.framing is _LENGTH and self._remaining:
            self.closing = True
            raise LocalProtocolError("response body shorter than its Content-Length")
        return b""

    def error(self, status: int, reason: str, method: str) -> bytes:
        """A complete plain-text error response; the connection closes after it.

        Args:
            status: 4xx or 5xx.
            reason: short text for the body (and the log).
            method: the method of the request answered (a HEAD answer has no body).
        """
        body = (HTTPStatus(status).phrase + (": " + reason if reason else "") + "\n").encode("utf-8", "replace")
        defaults = self.defaults
        self.closing = True
        return b"".join(
            (
                STATUS_LINES[status],
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                defaults.date or b"",
                defaults.server,
                self.request_header,
                _CLOSE,
                b"" if method == "HEAD" else body,  # RFC 9110 §9.3.2
            )
        )
