"""One WebSocket connection as ASGI ``receive`` / ``send`` (www spec 2.5).

``WebSocketCycle`` enforces the order of ASGI messages with ``ASGIWebSocketState`` and
keeps the bounded queue of incoming messages; the protocol work is the session's
(``fastgate.ws.session``) and the I/O is the channel's. After every session call the cycle
asks the channel to ``flush()``: write what the session has to send and hand the
session's new events back through ``feed``.

Backpressure: when ``max_queue`` messages wait for the app, the cycle pauses reading, so a
fast client fills the kernel buffers (and then its own) instead of our memory; reading
resumes once the app has taken half of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

from fastgate.asgi.types import ASGIApp, Message
from fastgate.errors import ASGIProtocolError, ClientDisconnected, LocalProtocolError
from fastgate.fields import status_code
from fastgate.ws.session import WebSocketSession, checked_headers

logger = logging.getLogger("fastgate.error")


class WebSocketChannel(Protocol):
    """What a ``WebSocketCycle`` needs from its connection."""

    def flush(self) -> None:
        """Write what the session has to send; feed its new events to the cycle."""

    def drain(self) -> Awaitable[None]:
        """Await it to wait until the transport accepts more data."""

    def pause_reading(self) -> None:
        """Stop reading (the incoming queue is full)."""

    def resume_reading(self) -> None:
        """Resume reading."""


class ASGIWebSocketState(enum.Enum):
    CONNECTING = "connecting"  # the app has not answered the handshake
    RESPONSE = "response"  # websocket.http.response.start received, body pending
    CONNECTED = "connected"  # accepted
    CLOSED = "closed"  # the app sent close, finished a denial response, or was answered


_CONNECT: Message = {"type": "websocket.connect"}


class WebSocketCycle:
    """ASGI receive/send for one WebSocket.

    Args:
        scope: the ASGI websocket scope.
        session: the sans-I/O session (handshake already validated).
        channel: the connection's I/O.
        max_queue: incoming messages buffered before reading pauses.
    """

    __slots__ = (
        "scope",
        "session",
        "channel",
        "state",
        "max_queue",
        "_queue",
        "_connect_sent",
        "_disconnect",
        "_waiter",
        "_reading_paused",
        "_status",
        "_headers",
        "_body",
        "_refused",
    )

    def __init__(self, scope: dict[str, Any], session: WebSocketSession, channel: WebSocketChannel,
                 max_queue: int = 32) -> None:
        self.scope = scope
        self.session = session
        self.channel = channel
        self.state = ASGIWebSocketState.CONNECTING
        self.max_queue = max_queue
        self._queue: deque[Message] = deque()
        self._connect_sent = False
        self._disconnect: Message | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._status = 0
        self._headers: Any = ()
        self._body: list[bytes] = []
        self._refused: BaseException | None = None  # the error a 500 was already sent for

    # ----------------------------------------------------------- from the protocol

    def feed(self, message: Message) -> None:
        """A message from the session: ``websocket.receive`` or ``websocket.disconnect``."""
        if message["type"] == "websocket.disconnect":
            self._disconnect = message
        else:
            self._queue.append(message)
            if len(self._queue) >= self.max_queue and not self._reading_paused:
                self._reading_paused = True
                self.channel.pause_reading()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def disconnected(self) -> bool:
        return self._disconnect is not None

    # ----------------------------------------------------------- ASGI callables

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return dict(_CONNECT)
        while True:
            queue = self._queue
            if queue:
                message = queue.popleft()
                if self._reading_paused and len(queue) <= self.max_queue // 2:
                    self._reading_paused = False
                    self.channel.resume_reading()
                return message
            if self._disconnect is not None:
                return dict(self._disconnect)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        state = self.state
        try:
            if state is ASGIWebSocketState.CONNECTED:
                if mtype == "websocket.send":
                    await self._send_data(message)
                    return
                if mtype == "websocket.close":
                    self.state = ASGIWebSocketState.CLOSED
                    self.session.close(message.get("code") or 1000, message.get("reason") or "")
                    self.channel.flush()
                    return
            elif state is ASGIWebSocketState.CONNECTING:
                if mtype == "websocket.accept":
                    self.session.accept(message.get("subprotocol"), message.get("headers") or ())
                    self.state = ASGIWebSocketState.CONNECTED
                    self.channel.flush()
                    return
                if mtype == "websocket.close":
                    # Closed before accepting: the handshake is refused with 403 (www spec).
                    self.state = ASGIWebSocketState.CLOSED
                    self.session.reject(403, [(b"content-type", b"text/plain; charset=utf-8")], b"Forbidden\n")
                    self.channel.flush()
                    return
                if mtype == "websocket.http.response.start":
                    self._start_denial(message)
                    return
            elif state is ASGIWebSocketState.RESPONSE:
                if mtype == "websocket.http.response.body":
                    self._body.append(bytes(message.get("body", b"")))
                    if not message.get("more_body", False):
                        self.state = ASGIWebSocketState.CLOSED
                        self.session.reject(self._status, self._headers, b"".join(self._body))
                        self.channel.flush()
                    return
            elif self.session.disconnected and mtype in ("websocket.send", "websocket.close"):
                raise ClientDisconnected("WebSocket connection is closed")
        except LocalProtocolError as exc:
            error = ASGIProtocolError(str(exc))
            if self.session.handshake_pending and not self.session.disconnected:
                # An invalid accept or denial (a header with CR/LF, a bad subprotocol or
                # status) is refused with a 500 now, whatever the app does with the error:
                # the client gets an answer, never a partial or injected head.
                self._refused = error
                logger.error("Invalid WebSocket handshake answer from the ASGI application (%s): %s",
                             self._where(), exc)
                self._answer(500)
            raise error from None
        raise ASGIProtocolError(f"unexpected ASGI message {mtype!r} in state {state.value}")

    async def _send_data(self, message: Message) -> None:
        text = message.get("text")
        data = message.get("bytes")
        session = self.session
        if text is not None and data is None:
            if not isinstance(text, str):
                raise ASGIProtocolError(f"'text' must be a str, got {type(text).__name__}")
            session.send_text(text)
        elif data is not None and text is None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ASGIProtocolError(f"'bytes' must be bytes, got {type(data).__name__}")
            session.send_bytes(bytes(data))
        else:
            raise ASGIProtocolError("websocket.send needs exactly one of 'text' and 'bytes'")
        channel = self.channel
        channel.flush()
        # Wait for the transport to drain so a fast producer cannot buffer unboundedly.
        await channel.drain()

    def _start_denial(self, message: Message) -> None:
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            raise ASGIProtocolError("websocket.http.response is not enabled")  # pragma: no cover
        status = status_code(message.get("status"))
        try:
            headers = list(message.get("headers") or ())
        except TypeError:
            raise LocalProtocolError(f"headers must be an iterable of pairs, got {message.get('headers')!r}") from None
        checked_headers(headers)  # refused at the start, as http.response.start headers are
        if self.session.disconnected:
            raise ClientDisconnected("client disconnected before the handshake was answered")
        self._status = status
        self._headers = headers
        self.state = ASGIWebSocketState.RESPONSE

    # ----------------------------------------------------------- running the app

    async def run(self, app: ASGIApp) -> None:
        """Run the app for this WebSocket; failures become a 500 or a close 1011."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._on_app_error(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        state = self.state
        if state is ASGIWebSocketState.CONNECTING:
            # Returned without accepting: the handshake is refused (www spec: 403).
            if not self.session.disconnected:
                self._answer(403)
        elif state is ASGIWebSocketState.RESPONSE:
            logger.error("ASGI app returned before the denial response was complete (%s)", self._where())
            self._answer(500)
        elif state is ASGIWebSocketState.CONNECTED:
            self.state = ASGIWebSocketState.CLOSED
            if self.session.is_open:
                self.session.close(1000, "")
                self.channel.flush()

    def _on_app_error(self, exc: BaseException) -> None:
        state = self.state
        self.state = ASGIWebSocketState.CLOSED
        if exc is self._refused:
            return  # answered (500) and logged when the app sent it
        session = self.session
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            # Cancelled by a drain deadline: the connection is being torn down. (A
            # CancelledError nobody requested is the app's own error, answered as any other.)
            if session.is_open or session.handshake_pending:
                session.fail(1012, "server shutdown")
                self.channel.flush()
            return
        if session.disconnected and isinstance(exc, OSError):
            return  # the client left; the app noticed through send(). Not a server error.
        if state in (ASGIWebSocketState.CONNECTING, ASGIWebSocketState.RESPONSE):
            logger.error("Exception in ASGI application (%s)", self._where(), exc_info=exc)
            if session.handshake_pending and not session.disconnected:
                session.reject(500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error\n")
                self.channel.flush()
        else:
            logger.error("Exception in ASGI application (%s)", self._where(), exc_info=exc)
            if session.is_open:
                session.fail(1011, "internal error")
                self.channel.flush()

    def _answer(self, status: int) -> None:
        self.state = ASGIWebSocketState.CLOSED
        session = self.session
        if session.handshake_pending and not session.disconnected:
            body = b"Forbidden\n" if status == 403 else b"Internal Server Error\n"
            session.reject(status, [(b"content-type", b"text/plain; charset=utf-8")], body)
            self.channel.flush()

    def _where(self) -> str:
        return f"WebSocket {self.scope.get('path')}"
