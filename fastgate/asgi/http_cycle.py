"""One HTTP request/response as ASGI ``receive`` / ``send``.

``RequestCycle`` owns the ASGI side of a single request. Bytes go through the connection's
``H1Connection`` (framing) and its ``Channel`` (I/O); the cycle only enforces the order of
ASGI messages and the request-body buffer with its backpressure.

The response head is held back until the first body message: when that message is also the
last (the common case), head and body leave in one write, framed with Content-Length
instead of chunked encoding.

When the response is over the cycle tells the channel (``state_changed``); what happened
(``status``, ``body_bytes``) stays on the cycle for the protocol's access log. App errors
are handled by the boundary both cycles share (``fastgate.asgi.cycle``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from typing import Any, Final

from fastgate.asgi.channel import HTTPChannel
from fastgate.asgi.cycle import AppCycle
from fastgate.asgi.types import Message, Scope
from fastgate.errors import ASGIProtocolError, ClientDisconnected, LocalProtocolError
from fastgate.fields import status_code
from fastgate.http.h1 import CONTINUE, H1Connection

logger = logging.getLogger("fastgate.error")

# Above this many buffered request-body bytes, stop reading until the app catches up.
HIGH_WATER = 64 * 1024

# Response bodies from this size on are written next to their framing (writelines)
# instead of joined to it: the join would copy the whole body once more in user space.
VECTOR_MIN = 16 * 1024



def body_of(message: Message) -> bytes:
    """The ``body`` of an ``http.response.body`` message, as the exact ``bytes`` the writers take.

    bytes-like bodies (bytearray, memoryview) are copied; anything else is the app's error.
    Checked here, at the app boundary, so that both builds answer alike: the compiled one
    would otherwise raise TypeError wherever the annotation ``bytes`` first meets the value.
    """
    body = message.get("body", b"")
    if type(body) is bytes:
        return body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")

class ASGIHTTPState(enum.Enum):
    START = "start"  # no response message yet
    STARTED = "started"  # http.response.start received, head not written yet
    BODY = "body"  # head written, body streaming
    DONE = "done"  # last body message sent (or error response written)


# Module-level names for the states the hot path compares: on Python 3.11 reading a member
# from its Enum class costs about 1,000 instructions, a global about 50.
_START: Final = ASGIHTTPState.START
_STARTED: Final = ASGIHTTPState.STARTED
_BODY: Final = ASGIHTTPState.BODY
_DONE: Final = ASGIHTTPState.DONE


class RequestCycle(AppCycle):
    """ASGI receive/send for one request.

    Args:
        scope: the ASGI http scope.
        conn: the connection's HTTP/1.1 state machine (for framing).
        channel: the connection's I/O.
        expect_continue: the client sent ``Expect: 100-continue``.
    """

    __slots__ = (
        "conn",
        "channel",
        "state",
        "status",
        "headers",
        "body_bytes",
        "start_time",
        "_expect_continue",
        "_body",
        "_body_size",
        "_more_body",
        "_disconnected",
        "_peer_closed",
        "_waiter",
        "_trailers",
        "_trailer_fields",
    )

    def __init__(self, scope: Scope, conn: H1Connection, channel: HTTPChannel, *,
                 expect_continue: bool = False) -> None:
        self.scope = scope
        self._refused = None
        self.conn = conn
        self.channel = channel
        self.state = _START
        self.status = 0  # the response status, once known (for the access log)
        self.headers: Any = ()
        self.body_bytes = 0  # body bytes the app sent (for the access log)
        self.start_time = 0.0  # perf_counter() when the head arrived, set by a protocol that logs
        self._expect_continue = expect_continue
        self._body: list[bytes] = []
        self._body_size = 0  # buffered body bytes; -1 once the final http.request went out
        self._more_body = True
        self._disconnected = False
        self._peer_closed = False
        self._waiter: asyncio.Future[None] | None = None
        # http.response.trailers: the app announced trailers (1), its last body message
        # went out and they are awaited (2); 0: none.
        self._trailers = 0
        self._trailer_fields: list[Any] = []

    # ----------------------------------------------------------- from the protocol

    def feed(self, data: bytes) -> None:
        """A request-body chunk arrived."""
        self._body.append(data)
        size = self._body_size = self._body_size + len(data)
        if size > HIGH_WATER and size - len(data) <= HIGH_WATER:
            # Crossing the mark: stop reading until the app takes the buffer (receive). The
            # channel keeps the pause; the buffer size alone says when to lift it.
            self.channel.pause_reading()
        self._wake()

    def feed_end(self) -> None:
        """The request body is complete."""
        self._more_body = False
        if self._waiter is not None:
            self._wake()

    def disconnect(self) -> None:
        """The connection is gone: wake ``receive`` with ``http.disconnect``."""
        self._disconnected = True
        self._wake()

    def peer_closed(self) -> None:
        """The peer sent EOF: ``receive`` answers ``http.disconnect`` once the buffered body
        is consumed, but ``send`` still works (the peer may only have half-closed)."""
        self._peer_closed = True
        self._wake()

    def time_out(self) -> bool:
        """The app ran out of time (``--timeout-request``); its task is cancelled next.

        Answers 503 when nothing of the response was written (the head may have been given
        but not sent), else closes the connection: the client sees a truncated response.
        Either way the connection is not reused, and a later ``send`` or ``receive`` of the
        app behaves as if the client had left (no error logged for it).

        Returns:
            True when a 503 went out.
        """
        state = self.state
        self.conn.disable_keep_alive()
        answered = state is _START or state is _STARTED
        if answered:
            self._error_response(503, "the application did not answer in time")
        elif state is _BODY:
            self._abort()
        self._disconnected = True
        self._wake()
        return answered

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ----------------------------------------------------------- ASGI callables

    async def receive(self) -> Message:
        if self._expect_continue:
            self._expect_continue = False
            if self.state is _START and not self._disconnected:
                self.channel.write(CONTINUE)
        while True:
            if self._body or (not self._more_body and self._body_size >= 0):
                if self._body:
                    body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
                    self._body.clear()
                else:
                    body = b""
                if self._body_size > HIGH_WATER:
                    self.channel.resume_reading()  # paused when the buffer crossed the mark
                self._body_size = 0
                more = self._more_body
                if not more:
                    self._body_size = -1  # the final http.request went out; next: disconnect
                return {"type": "http.request", "body": body, "more_body": more}
            if self._disconnected or self._peer_closed or self.state is _DONE:
                return {"type": "http.disconnect"}
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        state = self.state
        if mtype == "http.response.body":
            # The helpers are plain functions: an extra coroutine per message is measurable.
            if state is _BODY:
                more_body = bool(message.get("more_body", False))
                if self._send_body(body_of(message), more_body):
                    # Wait for the transport to drain so a fast producer cannot buffer unboundedly.
                    await self.channel.drain()
                if not more_body and not self._trailers:
                    self._finish()
                return
            if state is _STARTED:
                self._send_first_body(body_of(message), bool(message.get("more_body", False)))
                return
            raise self._out_of_order(mtype, state)
        if mtype == "http.response.pathsend":
            if state is not _STARTED:
                raise self._out_of_order(mtype, state)
            await self._send_path(message["path"])
            return
        if mtype == "http.response.trailers":
            if state is not _BODY or self._trailers != 2:
                if self._disconnected:
                    raise ClientDisconnected("client disconnected")
                raise ASGIProtocolError("'http.response.trailers' not expected: trailers were not announced in "
                                        "http.response.start, or the body is not complete")
            self._send_trailers(message.get("headers", ()), message.get("more_trailers", False))
            return
        if mtype == "http.response.start":
            if state is not _START:
                raise self._out_of_order(mtype, state)
            if self._disconnected:
                raise ClientDisconnected("client disconnected")
            status = message["status"]
            if type(status) is not int:  # exact ints skip the validator; everything else meets it
                try:
                    status = status_code(status)  # HTTPStatus.OK is an int too: logged as 200
                except LocalProtocolError as exc:
                    raise self._refuse(exc, "response") from None
            self.status = status
            self.headers = message.get("headers", ())
            if message.get("trailers", False):
                if "http.response.trailers" not in self.scope.get("extensions", ()):
                    raise ASGIProtocolError("'trailers' in http.response.start, but the http.response.trailers "
                                            "extension is not offered (the client sent no TE: trailers)")
                self._trailers = 1
            self.state = _STARTED
            return
        raise ASGIProtocolError(f"unexpected ASGI message type {mtype!r}")

    def _out_of_order(self, mtype: str, state: ASGIHTTPState) -> OSError | ASGIProtocolError:
        # After a disconnect (or a timeout, which ends the response for the app) the app
        # is told the client is gone, as it would be in any state: not an app error.
        if self._disconnected:
            return ClientDisconnected("client disconnected")
        return ASGIProtocolError(f"{mtype!r} not expected in state {state.value}")

    def _send_first_body(self, body: bytes, more_body: bool) -> None:
        """The head goes out with the first body message, in one write."""
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        if self._trailers and not more_body:
            # The body ends, the response does not: the trailers close the chunked body.
            self._trailers = 2
            more_body = True
        conn = self.conn
        try:
            if len(body) >= VECTOR_MIN:  # beside the head, not joined to it: no copy
                parts = ([conn.start_response(self.status, self.headers), *conn.send_body_parts(body, False)]
                         if more_body else conn.start_response_parts(self.status, self.headers, body))
            elif more_body:
                parts = [conn.start_response(self.status, self.headers) + conn.send_body(body, False)]
            else:
                parts = [conn.start_response(self.status, self.headers, body)]
        except LocalProtocolError as exc:
            raise self._refuse(exc, "response") from None
        self.state = _BODY
        self.body_bytes = len(body)
        if len(parts) == 1:
            self.channel.write(parts[0])
        else:
            self.channel.writelines(parts)
        if not more_body:
            self._finish()

    def _send_body(self, body: bytes, more_body: bool) -> bool:
        """Write a body chunk; True when something was written (the caller drains)."""
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        end = not more_body
        if self._trailers and (end or self._trailers == 2):
            if self._trailers == 2:
                raise ASGIProtocolError("'http.response.body' after the last body message: trailers expected")
            self._trailers = 2
            end = False
        try:
            if len(body) >= VECTOR_MIN:  # framed around the data, not joined to it: no copy
                parts = self.conn.send_body_parts(body, end)
            else:
                parts = [self.conn.send_body(body, end)]
        except LocalProtocolError as exc:
            raise ASGIProtocolError(str(exc)) from None
        self.body_bytes += len(body)
        if not parts[0]:
            return False  # nothing to write (an empty chunk, or a HEAD response)
        if len(parts) == 1:
            self.channel.write(parts[0])
        else:
            self.channel.writelines(parts)
        return True

    async def _send_path(self, path: str) -> None:
        """``http.response.pathsend``: the whole body is the file at ``path``, sent by the
        connection (zero copy where it can); the states go STARTED -> BODY -> DONE as for
        a body message."""
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        if self._trailers:
            raise ASGIProtocolError("'http.response.pathsend' cannot be followed by trailers")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            # Nothing is out yet: the app's error boundary answers 500.
            raise ASGIProtocolError(f"http.response.pathsend: cannot open {path!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            conn = self.conn
            try:
                head = conn.start_response(self.status, self.headers)
                before, count, after = conn.send_file(size)
            except LocalProtocolError as exc:
                raise self._refuse(exc, "response") from None
            self.state = _BODY
            self.channel.write(head + before if before else head)
            sent = await self.channel.send_file(fd, count) if count else 0
        finally:
            os.close(fd)
        self.body_bytes = sent
        if sent < count:
            if not self._disconnected and not self.channel.is_closing():
                logger.warning("%s: the file %r ended after %d of %d bytes (truncated while sent?): closing the "
                               "connection", self._where(), path, sent, count)
            self._abort()
            return
        if after:
            self.channel.write(after)
        self._finish()

    def _send_trailers(self, headers: Any, more_trailers: bool) -> None:
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        fields = self._trailer_fields
        fields.extend(headers)
        if more_trailers:
            return  # written in one piece with the last trailers message
        try:
            data = self.conn.send_trailers(fields)
        except LocalProtocolError as exc:
            raise ASGIProtocolError(str(exc)) from None
        if data:
            self.channel.write(data)
        self._trailers = 0
        self._finish()

    def _finish(self) -> None:
        self.state = _DONE
        self.channel.state_changed()

    # ----------------------------------------------------------- the app boundary (AppCycle)

    def _returned(self) -> None:
        state = self.state
        if state is _DONE:
            return
        if state is _START or state is _STARTED:
            # A peer whose EOF cut its request body short has left, as one that reset.
            if not self._disconnected and not (self._peer_closed and self._more_body):
                logger.error("ASGI app returned without sending a response (%s)", self._where())
            self._error_response(500, "")
        else:
            if not self._disconnected and not self._peer_closed:
                logger.error("ASGI app returned before the response body was complete (%s)", self._where())
            self._abort()

    def _answer_error(self) -> str:
        state = self.state
        if state is _START or state is _STARTED:
            self._error_response(500, "")
            return ""
        if state is _BODY:
            self._abort()
            return " after the response started"
        return " after the response ended"

    def _answer_refusal(self) -> None:
        self._error_response(500, "")

    def _cancelled(self) -> None:
        # Cancelled by a drain deadline: the connection is being torn down anyway.
        if self.state is not _DONE:
            self._abort()

    def _peer_gone(self) -> bool:
        return self._disconnected

    def _where(self) -> str:
        return f"{self.scope.get('method')} {self.scope.get('path')}"

    def _error_response(self, status: int, reason: str) -> None:
        if self._disconnected or self.channel.is_closing():
            self.state = _DONE
            return
        self.status = status
        self.channel.write(self.conn.error_response(status, reason))
        self._finish()

    def _abort(self) -> None:
        # The head (and maybe part of the body) is out: the only honest signal left is to
        # close, so the client sees a truncated response rather than a corrupted one.
        self.state = _DONE
        self.conn.disable_keep_alive()
        self.channel.close()
