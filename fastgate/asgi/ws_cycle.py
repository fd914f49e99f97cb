"""One WebSocket connection as ASGI ``receive`` / ``send`` (www spec 2.5).

``WebSocketCycle`` checks the order of the app's messages and turns them into calls on the
``WebSocketSession``; after each call it tells the channel (``state_changed``), which
writes what the session has to send and puts the session's new events in the ``Inbox``.
The app's ``receive`` takes them from there.

The cycle keeps no state machine of its own: ``state`` (``ASGIWebSocketState``) is read
from the session's, plus whether a denial response has been started. Nothing refers back
from the connection to the cycle either: the adapter holds the session and the inbox, the
cycle holds them and the channel, so a finished WebSocket is freed by reference counting.

Backpressure: when ``max_queue`` messages wait for the app, the inbox tells the adapter to
pause reading, so a fast client fills the kernel buffers (and then its own) instead of our
memory; reading resumes once the app has taken half of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final

from fastgate.asgi.channel import Channel
from fastgate.asgi.cycle import AppCycle
from fastgate.asgi.types import Message, Scope
from fastgate.errors import ASGIProtocolError, ClientDisconnected, LocalProtocolError
from fastgate.fields import status_code
from fastgate.ws.session import SessionState, WebSocketSession, checked_headers

logger = logging.getLogger("fastgate.error")


class ASGIWebSocketState(enum.Enum):
    CONNECTING = "connecting"  # the app has not answered the handshake
    RESPONSE = "response"  # websocket.http.response.start received, body pending
    CONNECTED = "connected"  # accepted
    CLOSED = "closed"  # the app sent close, finished a denial response, or was answered


_CONNECTING: Final = ASGIWebSocketState.CONNECTING
_RESPONSE: Final = ASGIWebSocketState.RESPONSE
_CONNECTED: Final = ASGIWebSocketState.CONNECTED
_CLOSED: Final = ASGIWebSocketState.CLOSED
_SESSION_OPEN: Final = SessionState.OPEN
_SESSION_HANDSHAKE: Final = SessionState.HANDSHAKE

_CONNECT: Final[Message] = {"type": "websocket.connect"}
# What the app may send; once the client is gone, each of these raises ClientDisconnected.
_APP_MESSAGES: Final = frozenset(("websocket.accept", "websocket.send", "websocket.close",
                                  "websocket.http.response.start", "websocket.http.response.body"))
_TEXT_PLAIN: Final = [(b"content-type", b"text/plain; charset=utf-8")]


class Inbox:
    """Messages from the session waiting for the app's ``receive``.

    The adapter puts (``put`` says when the queue just filled up, to pause reading); the
    cycle takes (``get``, then ``drained`` says when to resume).

    Args:
        max_queue: messages buffered before reading pauses.
    """

    __slots__ = ("max_queue", "_queue", "_disconnect", "_waiter")

    def __init__(self, max_queue: int = 32) -> None:
        self.max_queue = max_queue
        self._queue: deque[Message] = deque()
        self._disconnect: Message | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: Message) -> bool:
        """Queue a ``websocket.receive`` or ``websocket.disconnect``; True when the queue is now full."""
        full = False
        if message["type"] == "websocket.disconnect":
            self._disconnect = message
        else:
            queue = self._queue
            queue.append(message)
            full = len(queue) == self.max_queue
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return full

    async def get(self) -> tuple[Message, bool]:
        """The next message, and whether taking it brought the queue down to half (resume reading).

        Going down from full passes that mark exactly once (one message at a time); when
        reading was not paused, resuming is a no-op.
        """
        while True:
            queue = self._queue
            if queue:
                message = queue.popleft()
                return message, len(queue) == self.max_queue // 2
            if self._disconnect is not None:
                return dict(self._disconnect), False
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter


class WebSocketCycle(AppCycle):
    """ASGI receive/send for one WebSocket.

    Args:
        scope: the ASGI websocket scope.
        session: the sans-I/O session (handshake already validated).
        channel: the connection's I/O.
        inbox: where the connection puts the session's events.
    """

    __slots__ = ("session", "channel", "inbox", "_connect_sent", "_denial", "_body")

    def __init__(self, scope: Scope, session: WebSocketSession, channel: Channel, inbox: Inbox) -> None:
        self.scope = scope
        self._refused = None
        self.session = session
        self.channel = channel
        self.inbox = inbox
        self._connect_sent = False
        self._denial: tuple[int, list[Any]] | None = None  # status and headers of a started denial
        self._body: list[bytes] = []

    @property
    def state(self) -> ASGIWebSocketState:
        """Where the exchange stands for the app, read from the session."""
        session_state = self.session.state
        if session_state is _SESSION_OPEN:
            return _CONNECTED
        if session_state is _SESSION_HANDSHAKE:
            return _CONNECTING if self._denial is None else _RESPONSE
        return _CLOSED

    # ----------------------------------------------------------- ASGI callables

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return dict(_CONNECT)
        message, resume = await self.inbox.get()
        if resume:
            self.channel.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        mtype = message["type"]
        state = self.state
        try:
            if state is _CONNECTED:
                if mtype == "websocket.send":
                    await self._send_data(message)
                    return
                if mtype == "websocket.close":
                    self.session.close(message.get("code") or 1000, message.get("reason") or "")
                    self.channel.state_changed()
                    return
            elif state is _CONNECTING:
                if mtype == "websocket.accept":
                    self.session.accept(message.get("subprotocol"), message.get("headers") or ())
                    self.channel.state_changed()
                    return
                if mtype == "websocket.close":
                    # Closed before accepting: the handshake is refused with 403 (www spec).
                    self.session.reject(403, _TEXT_PLAIN, b"Forbidden\n")
                    self.channel.state_changed()
                    return
                if mtype == "websocket.http.response.start":
                    self._start_denial(message)
                    return
            elif state is _RESPONSE:
                if mtype == "websocket.http.response.body":
                    self._body.append(bytes(message.get("body", b"")))
                    if not message.get("more_body", False):
                        assert self._denial is not None
                        status, headers = self._denial
                        self.session.reject(status, headers, b"".join(self._body))
                        self.channel.state_changed()
                    return
            elif self.session.disconnected and mtype in _APP_MESSAGES:
                raise ClientDisconnected("WebSocket connection is closed")
        except LocalProtocolError as exc:
            if self.session.handshake_pending:
                # An invalid accept or denial (a header with CR/LF, a bad subprotocol or
                # status) is refused with a 500 now, whatever the app does with the error:
                # the client gets an answer, never a partial or injected head.
                raise self._refuse(exc, "WebSocket handshake answer") from None
            raise ASGIProtocolError(str(exc)) from None
        raise ASGIProtocolError(f"unexpected ASGI message {mtype!r} in state {state.value}")

    def _send_data(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the drain to await: one coroutine per message
        # instead of two (about 2 % of an echoed message's instructions).
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
        # Waited for by send: the transport drains, so a fast producer cannot buffer unboundedly.
        return channel.drain()

    def _start_denial(self, message: Message) -> None:
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            raise ASGIProtocolError("websocket.http.response is not enabled")  # pragma: no cover
        status = status_code(message.get("status"))
        try:
            headers = list(message.get("headers") or ())
        except TypeError:
            raise LocalProtocolError(f"headers must be an iterable of pairs, got {message.get('headers')!r}") from None
        checked_headers(headers)  # refused at the start, as http.response.start headers are
        self._denial = (status, headers)

    # ----------------------------------------------------------- the app boundary (AppCycle)

    def _returned(self) -> None:
        state = self.state
        if state is _CONNECTING:
            # Returned without accepting: the handshake is refused (www spec: 403).
            self._answer(403)
        elif state is _RESPONSE:
            logger.error("ASGI app returned before the denial response was complete (%s)", self._where())
            self._answer(500)
        elif state is _CONNECTED:
            self.session.close(1000, "")
            self.channel.state_changed()

    def _answer_error(self) -> str:
        state = self.state
        if state is _CONNECTING or state is _RESPONSE:
            self._answer(500)
        elif state is _CONNECTED:
            self.session.fail(1011, "internal error")
            self.channel.state_changed()
        return ""

    def _answer_refusal(self) -> None:
        self._answer(500)

    def _cancelled(self) -> None:
        # Cancelled by a drain deadline: the connection is being torn down.
        state = self.state
        if state is not _CLOSED:
            self.session.fail(1012, "server shutdown")
            self.channel.state_changed()

    def _peer_gone(self) -> bool:
        return self.session.disconnected

    def _answer(self, status: int) -> None:
        session = self.session
        if session.handshake_pending:
            session.reject(status, _TEXT_PLAIN, b"Forbidden\n" if status == 403 else b"Internal Server Error\n")
            self.channel.state_changed()

    def _where(self) -> str:
        return f"WebSocket {self.scope.get('path')}"
