"""One HTTP request/response as ASGI ``receive`` / ``send``.

``RequestCycle`` owns the ASGI side of a single request. Bytes go through the connection's
``H1Connection`` (framing) and its ``Channel`` (I/O); the cycle only enforces the order of
ASGI messages and the request-body buffer with its backpressure.

The response head is held back until the first body message: when that message is also the
last (the common case), head and body leave in one write, framed with Content-Length
instead of chunked encoding.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any

from fastgate.asgi.channel import Channel
from fastgate.asgi.types import ASGIApp, Message
from fastgate.errors import ASGIProtocolError, ClientDisconnected, LocalProtocolError
from fastgate.fields import status_code
from fastgate.http.h1 import CONTINUE, H1Connection

logger = logging.getLogger("fastgate.error")

# Above this many buffered request-body bytes, stop reading until the app catches up.
HIGH_WATER = 64 * 1024

# Response bodies from this size on are written next to their framing (writelines)
# instead of joined to it: the join would copy the whole body once more in user space.
VECTOR_MIN = 16 * 1024


class ASGIHTTPState(enum.Enum):
    START = "start"  # no response message yet
    STARTED = "started"  # http.response.start received, head not written yet
    BODY = "body"  # head written, body streaming
    DONE = "done"  # last body message sent (or error response written)


AccessLog = Callable[["RequestCycle"], None]


class RequestCycle:
    """ASGI receive/send for one request.

    Args:
        scope: the ASGI http scope.
        conn: the connection's HTTP/1.1 state machine (for framing).
        channel: the connection's I/O.
        expect_continue: the client sent ``Expect: 100-continue``.
        access_log: called once when the response ends, or None.
        start_time: loop time the request head arrived (for the access log).
    """

    __slots__ = (
        "scope",
        "conn",
        "channel",
        "state",
        "status",
        "headers",
        "body_bytes",
        "start_time",
        "_access_log",
        "_expect_continue",
        "_body",
        "_body_size",
        "_more_body",
        "_disconnected",
        "_peer_closed",
        "_waiter",
        "_reading_paused",
        "_refused",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        conn: H1Connection,
        channel: Channel,
        *,
        expect_continue: bool = False,
        access_log: AccessLog | None = None,
        start_time: float = 0.0,
    ) -> None:
        self.scope = scope
        self.conn = conn
        self.channel = channel
        self.state = ASGIHTTPState.START
        self.status = 0
        self.headers: Any = ()
        self.body_bytes = 0
        self.start_time = start_time
        self._access_log = access_log
        self._expect_continue = expect_continue
        self._body: list[bytes] = []
        self._body_size = 0
        self._more_body = True
        self._disconnected = False
        self._peer_closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._refused: BaseException | None = None  # the error a 500 was already sent for

    # ----------------------------------------------------------- from the protocol

    def feed(self, data: bytes) -> None:
        """A request-body chunk arrived."""
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
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
            if self.state is ASGIHTTPState.START and not self._disconnected:
                self.channel.write(CONTINUE)
        while True:
            if self._body or (not self._more_body and self._body_size >= 0):
                if self._body:
                    body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
                    self._body.clear()
                else:
                    body = b""
                self._body_size = 0
                if self._reading_paused:
                    self._reading_paused = False
                    self.channel.resume_reading()
                more = self._more_body
                if not more:
                    self._body_size = -1  # the final http.request went out; next: disconnect
                return {"type": "http.request", "body": body, "more_body": more}
            if self._disconnected or self._peer_closed or self.state is ASGIHTTPState.DONE:
                return {"type": "http.disconnect"}
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        state = self.state
        if mtype == "http.response.body":
            # The helpers are plain functions: an extra coroutine per message is measurable.
            if state is ASGIHTTPState.BODY:
                more_body = message.get("more_body", False)
                if self._send_body(message.get("body", b""), more_body):
                    # Wait for the transport to drain so a fast producer cannot buffer unboundedly.
                    await self.channel.drain()
                if not more_body:
                    self._finish()
                return
            if state is ASGIHTTPState.STARTED:
                self._send_first_body(message.get("body", b""), message.get("more_body", False))
                return
            raise ASGIProtocolError(f"'http.response.body' not expected in state {state.value}")
        if mtype == "http.response.start":
            if state is not ASGIHTTPState.START:
                raise ASGIProtocolError(f"'http.response.start' not expected in state {state.value}")
            if self._disconnected:
                raise ClientDisconnected("client disconnected")
            status = message["status"]
            if status.__class__ is not int:
                try:
                    status = status_code(status)  # HTTPStatus.OK is an int too
                except LocalProtocolError as exc:
                    raise self._refuse(exc) from None
            self.status = status
            self.headers = message.get("headers", ())
            self.state = ASGIHTTPState.STARTED
            return
        raise ASGIProtocolError(f"unexpected ASGI message type {mtype!r}")

    def _send_first_body(self, body: bytes, more_body: bool) -> None:
        """The head goes out with the first body message, in one write."""
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
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
            raise self._refuse(exc) from None
        self.state = ASGIHTTPState.BODY
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

    def _finish(self) -> None:
        self.state = ASGIHTTPState.DONE
        if self._access_log is not None:
            self._access_log(self)
        self.channel.response_complete()

    # ----------------------------------------------------------- running the app

    async def run(self, app: ASGIApp) -> None:
        """Run the app for this request; turn failures into a 500 or a closed connection."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._on_app_error(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        if self.state is not ASGIHTTPState.DONE:
            if self.state in (ASGIHTTPState.START, ASGIHTTPState.STARTED):
                # A peer whose EOF cut its request body short has left, as one that reset.
                if not self._disconnected and not (self._peer_closed and self._more_body):
                    logger.error("ASGI app returned without sending a response (%s)", self._where())
                self._error_response(500, "")
            else:
                if not self._disconnected and not self._peer_closed:
                    logger.error("ASGI app returned before the response body was complete (%s)", self._where())
                self._abort()

    def _refuse(self, exc: LocalProtocolError) -> ASGIProtocolError:
        """An invalid response head (status, a header with CR/LF, ...), refused before any
        byte of it was written: answer 500 now, whatever the app does with the error it
        gets, and log it here, once."""
        error = ASGIProtocolError(str(exc))
        self._refused = error
        logger.error("Invalid response from the ASGI application (%s): %s", self._where(), exc)
        self._error_response(500, "")
        return error

    def _on_app_error(self, exc: BaseException) -> None:
        if exc is self._refused:
            return  # answered (500) and logged when the app sent it
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            # Cancelled by a drain deadline: the connection is being torn down anyway. (A
            # CancelledError nobody requested is the app's own error, answered as any other.)
            if self.state is not ASGIHTTPState.DONE:
                self._abort()
            return
        if self._disconnected and isinstance(exc, OSError):
            return  # the client left; the app noticed through send()/receive(). Not an error.
        if self.state in (ASGIHTTPState.START, ASGIHTTPState.STARTED):
            logger.error("Exception in ASGI application (%s)", self._where(), exc_info=exc)
            self._error_response(500, "")
        elif self.state is ASGIHTTPState.BODY:
            logger.error("Exception in ASGI application after the response started (%s)", self._where(),
                         exc_info=exc)
            self._abort()
        else:
            logger.error("Exception in ASGI application after the response ended (%s)", self._where(),
                         exc_info=exc)

    def _where(self) -> str:
        return f"{self.scope.get('method')} {self.scope.get('path')}"

    def _error_response(self, status: int, reason: str) -> None:
        if self._disconnected or self.channel.is_closing():
            self.state = ASGIHTTPState.DONE
            return
        self.status = status
        self.channel.write(self.conn.error_response(status, reason))
        self.state = ASGIHTTPState.DONE
        if self._access_log is not None:
            self._access_log(self)
        self.channel.response_complete()

    def _abort(self) -> None:
        # The head (and maybe part of the body) is out: the only honest signal left is to
        # close, so the client sees a truncated response rather than a corrupted one.
        self.state = ASGIHTTPState.DONE
        self.conn.disable_keep_alive()
        self.channel.close()
