"""Events produced by the sans-I/O HTTP/1.1 connection (``H1Connection.next_event``)."""

from __future__ import annotations

from typing import Final


class RequestHead:
    """A complete request head: request line plus header fields.

    ``headers`` holds ``(lower-cased name, raw value)`` pairs in wire order, as the ASGI
    scope wants them. ``upgrade`` is ``b"websocket"`` only for a well-formed WebSocket
    upgrade request (``Connection: upgrade`` and ``Upgrade: websocket``); any other upgrade
    (``h2c``, ...) is served as a plain request.
    """

    __slots__ = (
        "method",
        "target",
        "raw_path",
        "query_string",
        "http_version",
        "headers",
        "keep_alive",
        "expect_continue",
        "upgrade",
        "forwarded",
        "te_trailers",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes | None,
        forwarded: bool = False,
        te_trailers: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.raw_path = raw_path
        self.query_string = query_string
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.forwarded = forwarded  # carries a proxy header (Forwarded, X-Forwarded-*)
        self.te_trailers = te_trailers  # an HTTP/1.1 request with TE: trailers

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.target!r} HTTP/{self.http_version}, {len(self.headers)} headers)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        # Field by field, spelled out: a compiled (mypyc) class has no __slots__ to walk.
        return (self.method == other.method and self.target == other.target and self.raw_path == other.raw_path
                and self.query_string == other.query_string and self.http_version == other.http_version
                and self.headers == other.headers and self.keep_alive == other.keep_alive
                and self.expect_continue == other.expect_continue and self.upgrade == other.upgrade
                and self.forwarded == other.forwarded)


class BodyChunk:
    """A piece of the request body (already de-chunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"BodyChunk({len(self.data)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BodyChunk) and other.data == self.data


class EndOfRequest:
    """The request body is complete. One shared instance: it carries no data."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_REQUEST"


END_OF_REQUEST: Final = EndOfRequest()


class UpgradeRequest:
    """A WebSocket upgrade request; ``remainder`` is what the peer sent after the head."""

    __slots__ = ("head", "remainder")

    def __init__(self, head: RequestHead, remainder: bytes) -> None:
        self.head = head
        self.remainder = remainder

    def __repr__(self) -> str:
        return f"UpgradeRequest({self.head!r}, {len(self.remainder)} bytes after)"


class BadRequest:
    """The peer broke HTTP/1.1; answer ``status`` (4xx/5xx) and close.

    ``head`` is True when the broken request is a HEAD request: the answer then carries
    no body (RFC 9110 §9.3.2).
    """

    __slots__ = ("status", "reason", "head")

    def __init__(self, status: int, reason: str, head: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.head = head

    def __repr__(self) -> str:
        return f"BadRequest({self.status}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadRequest) and (other.status, other.reason) == (self.status, self.reason)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""No complete event is buffered: feed more bytes."""

PAUSED: Final = _Sentinel("PAUSED")
"""The next event belongs to a pipelined request that must wait for the current response."""

Event = RequestHead | BodyChunk | EndOfRequest | UpgradeRequest | BadRequest | _Sentinel
