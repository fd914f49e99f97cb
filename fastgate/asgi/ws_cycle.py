"""One WebSocket connection as ASGI ``receive`` / ``send`` (www spec 2.5).

``WebSocketCycle`` enforces the order of ASGI messages with ``ASGIWebSocketState`` and
keeps the bounded queue of incoming messages; the protocol work is the session's
(``fastgate.ws.session``) and the I/O is the channel's. After every session call the cycle
tells the channel (``state_changed``): it writes what the session has to send and hands
the session's new events back through ``feed``. App errors are handled by the boundary
both cycles share (``fastgate.asgi.cycle``).

Backpressure: when ``max_queue`` messages wait for the app, the cycle pauses reading, so a
fast client fills the kernel buffers (and then its own) instead of our memory; reading
resumes once the app has taken half of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Any

from fastgate.asgi.channel import Channel
from fastgate.asgi.cycle import AppCycle
from fastgate.asgi.types import Message, Scope
from fastgate.errors import ASGIProtocolError, ClientDisconnected, LocalProtocolError
from fastgate.fields import status_code
from fastgate.ws.session import WebSocketSession, checked_headers

logger = logging.getLogger("fastgate.error")


class ASGIWebSocketState(enum.Enum):
    CONNECTING = "connecting"  # the app has not answered the handshake
    RESPONSE = "response"  # websocket.http.response.start received, body pending
    CONNECTED = "connected"  # accepted
    CLOSED = "closed"  # the app sent close, finished a denial response, or was answered


_CONNECT: Message = {"type": "websocket.connect"}


class WebSocketCycle(AppCycle):
    """ASGI receive/send for one WebSocket.

    Args:
        scope: the ASGI websocket scope.
        session: the sans-I/O session (handshake already validated).
        channel: the connection's I/O.
        max_queue: incoming messages buffered before reading pauses.
    """

    __slots__ = (
        "session",
        "channel",
        "state",
        "max_queue",
        "_queue",
        "_connect_sent",
        "_disconnect",
        "_waiter",
        "_status",
        "_headers",
        "_body",
    )

    def __init__(self, scope: Scope, session: WebSocketSession, channel: Channel, max_queue: int = 32) -> None:
        self.scope = scope
        self.session = session
        self.channel = channel
        self.state = ASGIWebSocketState.CONNECTING
        self.max_queue = max_queue
        self._queue: deque[Message] = deque()
        self._connect_sent = False
        self._disconnect: Message | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: Any = ()
        self._body: list[bytes] = []
        self._refused = None

    # ----------------------------------------------------------- from the protocol

    def feed(self, message: Message) -> None:
        """A message from the session: ``websocket.receive`` or ``websocket.disconnect``."""
        if message["type"] == "websocket.disconnect":
            self._disconnect = message
        else:
            self._queue.append(message)
            if len(self._queue) == self.max_queue:
                # Full: stop reading until the app has taken half (receive). The channel
                # keeps the pause; the queue length alone says when to lift it.
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
                if len(queue) == self.max_queue // 2:
                    # Going down from full passes here exactly once (one message at a time);
                    # when reading was not paused, resuming is a no-op.
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
                    self.channel.state_changed()
                    return
            elif state is ASGIWebSocketState.CONNECTING:
                if mtype == "websocket.accept":
                    self.session.accept(message.get("subprotocol"), message.get("headers") or ())
                    self.state = ASGIWebSocketState.CONNECTED
                    self.channel.state_changed()
                    return
                if mtype == "websocket.close":
                    # Closed before accepting: the handshake is refused with 403 (www spec).
                    self.state = ASGIWebSocketState.CLOSED
                    self.session.reject(403, [(b"content-type", b"text/plain; charset=utf-8")], b"Forbidden\n")
                    self.channel.state_changed()
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
                        self.channel.state_changed()
                    return
            elif self.session.disconnected and mtype in ("websocket.send", "websocket.close"):
                raise ClientDisconnected("WebSocket connection is closed")
        except LocalProtocolError as exc:
            if self.session.handshake_pending and not self.session.disconnected:
                # An invalid accept or denial (a header with CR/LF, a bad subprotocol or
                # status) is refused with a 500 now, whatever the app does with the error:
                # the client gets an answer, never a partial or injected head.
                raise self._refuse(exc, "WebSocket handshake answer") from None
            raise ASGIProtocolError(str(exc)) from None
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
        channel.state_changed()
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

    # ----------------------------------------------------------- the app boundary (AppCycle)

    def _returned(self) -> None:
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
                self.channel.state_changed()

    def _answer_error(self) -> str:
        state = self.state
        self.state = ASGIWebSocketState.CLOSED
        session = self.session
        if state in (ASGIWebSocketState.CONNECTING, ASGIWebSocketState.RESPONSE):
            if session.handshake_pending and not session.disconnected:
                session.reject(500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error\n")
                self.channel.state_changed()
        elif session.is_open:
            session.fail(1011, "internal error")
            self.channel.state_changed()
        return ""

    def _answer_refusal(self) -> None:
        self._answer(500)

    def _cancelled(self) -> None:
        # Cancelled by a drain deadline: the connection is being torn down.
        self.state = ASGIWebSocketState.CLOSED
        session = self.session
        if session.is_open or session.handshake_pending:
            session.fail(1012, "server shutdown")
            self.channel.state_changed()

    def _peer_gone(self) -> bool:
        if self.session.disconnected:
            self.state = ASGIWebSocketState.CLOSED
            return True
        return False

    def _answer(self, status: int) -> None:
        self.state = ASGIWebSocketState.CLOSED
        session = self.session
        if session.handshake_pending and not session.disconnected:
            body = b"Forbidden\n" if status == 403 else b"Internal Server Error\n"
            session.reject(status, [(b"content-type", b"text/plain; charset=utf-8")], body)
            self.channel.state_changed()

    def _where(self) -> str:
        return f"WebSocket {self.scope.get('path')}"
