"""WebSocket session: ASGI ``websocket`` messages over ``websockets.server.ServerProtocol``.

Theory of operation
-------------------
``WebSocketSession`` is sans-I/O: bytes in (``receive_data`` / ``receive_eof``), ASGI
messages out (``events_received``), bytes out (``data_to_send``), exactly as in the
``websockets`` sans-I/O guide (docs/howto/sansio.rst). It never sees a socket, a loop or a
clock; the asyncio adapter (``fastgate.worker.websocket``) flushes ``data_to_send()`` after
every call, half-closes on ``b""`` and arms a close timer when ``close_expected()``.

Framing, masking, control frames (pings are answered, close frames echoed), the closing
handshake, ``max_size`` (close 1009) and permessage-deflate all belong to
``ServerProtocol``; this class only adds what ASGI needs on top:

* The opening handshake is split in two. ``receive_request`` takes the upgrade request as
  fastgate's HTTP layer parsed and validated it (a ``RequestHead``: nothing is serialised
  or parsed again), has websockets check it as a handshake (a bad one is answered 400, or
  426 for a wrong version, with ``Sec-WebSocket-Version: 13`` per RFC 6455 §4.4, and the
  app never runs) and keeps the prepared 101 response; the app decides later with
  ``accept`` or ``reject``.
* Bytes the client sends before that decision (pipelined right after its handshake) are
  buffered and fed to the protocol only after the 101 went out. Feeding them earlier would
  let ``ServerProtocol`` answer a ping before the 101, corrupting the stream.
* ``TEXT``/``BINARY``/``CONT`` frames are reassembled into one ``websocket.receive``; text
  is decoded here (``ServerProtocol`` does not), invalid UTF-8 fails the connection with
  1007 (RFC 6455 §8.1).
* Exactly one ``websocket.disconnect`` is produced: with the peer's close code when it
  closes first, with our code when the server fails the connection (1002, 1007, 1009,
  1011, 1012), and 1006 when the connection drops.

State. ``state`` (``SessionState``) is the one account of where the socket stands; the
ASGI cycle derives its own from it, the adapter asks it. It follows the handshake decision
and, once the socket is open, websockets' own protocol state, read after every call that
may move it. Whether the app was told ``websocket.disconnect`` is a separate fact
(``disconnected``): the peer may close while our side still writes, and we may close
before the peer answers.

A little over 500 lines: the one class that maps ASGI onto ``ServerProtocol``, with the
two frame-level corrections and the handshake-header check it needs.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Generator, Iterable, Sequence
from http import HTTPStatus
from typing import Any, Final

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader, InvalidState
from websockets.extensions import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, CLOSING, CONNECTING, OPEN, Protocol
from websockets.server import ServerProtocol

from fastgate.errors import ClientDisconnected, LocalProtocolError
from fastgate.fields import check_field, is_token, status_code
from fastgate.http.events import RequestHead

Message = dict[str, Any]

# Bytes buffered before the app accepts; the adapter pauses reading above this.
PENDING_LIMIT = 64 * 1024

_TEXT, _BINARY, _CONT, _CLOSE, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE, Opcode.PONG

# Each fragment of an unfinished message is charged this many bytes on top of its payload
# against max_size. Without it an empty continuation frame costs nothing: 2,000,000 of them
# (12 MB on the wire) grew a worker by 18 MB, without bound. 64 bytes is about what one
# fragment costs to parse; with it a 16 MiB limit allows 262,144 fragments per message,
# far above what real clients send (the Autobahn suite's finest is 65,536 of 64 bytes).
FRAGMENT_COST = 64


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol, handed the request instead of reading it, with two
    corrections at the frame level."""

    def parse(self) -> Generator[None]:
        # fastgate's HTTP layer parsed and validated the upgrade request, and
        # WebSocketSession.receive_request hands it to accept() as a Request: there are no
        # request bytes to read here. Frames follow once the handshake succeeded (after a
        # refusal, send_response replaces this parser with one that discards everything).
        while self.state is CONNECTING:
            yield
        yield from Protocol.parse(self)

    def recv_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _CLOSE and self.current_size is not None:
            # RFC 6455 §5.4 lets control frames come between fragments, and §5.5.1 answers
            # a Close with a Close. websockets fails the connection with 1002 ("incomplete
            # fragmented message") instead. The peer is leaving: the unfinished message is
            # dropped and the close goes on normally.
            self.current_size = None
        super().recv_frame(frame)
        size = self.current_size
        if not frame.fin and size is not None and opcode is not Opcode.PING and opcode is not _PONG:
            # websockets subtracts current_size from max_size for the next frame, so the
            # charge makes its own check answer 1009 once a message's fragments cost too much.
            # (A plain assignment: mypyc cannot compile += on an attribute of this
            # interpreted base class.)
            self.current_size = size + FRAGMENT_COST


def deflate_factory() -> ServerPerMessageDeflateFactory:
    """permessage-deflate (RFC 7692) tuned for many idle connections.

    The server compresses each message with a fresh 4 KiB-window compressor that is freed
    once the message is sent (``server_no_context_takeover``), so an idle connection holds
    no compressor, the expensive zlib object. The client keeps its context (small chatty
    messages compress to ~0.42 of their size with it, ~0.72 without), so the server keeps a
    4 KiB-window inflater. Measured idle cost per connection (benchmarks/ws_memory.py,
    benchmarks/WS_RESULTS.md): 14 KiB without compression, 26 KiB with these settings,
    58 KiB with websockets' defaults, 117 KiB with zlib's.
    """
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"  # valid upgrade request, waiting for the app's decision
    OPEN = "open"  # 101 sent: messages flow both ways
    CLOSING = "closing"  # a close frame went out or came in: the closing handshake runs
    CLOSED = "closed"  # refused, failed, closed, or the connection is gone


# As module names: reading a member from its Enum class costs about 1,000 instructions on
# Python 3.11, a global about 50.
_HANDSHAKE: Final = SessionState.HANDSHAKE
_OPEN: Final = SessionState.OPEN
_CLOSING: Final = SessionState.CLOSING
_CLOSED: Final = SessionState.CLOSED


def offered_subprotocols(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a client offers (``Sec-WebSocket-Protocol``, RFC 6455 §4.1), in order."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return offered


class WebSocketSession:
    """One WebSocket connection, from the upgrade request to the close.

    Args:
        max_size: largest incoming message in bytes (bigger: close 1009); None: no limit.
        extensions: server extension factories (``[deflate_factory()]`` or ``[]``).
        logger: logger handed to ``ServerProtocol``.
    """

    __slots__ = (
        "protocol",
        "state",
        "subprotocols",
        "disconnected",
        "_response",
        "_pending",
        "_fragments",
        "_fragments_text",
        "_events",
        "_app_closed",
        "_ping_payload",
        "_reject_disconnect",
    )

    def __init__(
        self,
        *,
        max_size: int | None = 16 * 1024 * 1024,
        extensions: Sequence[ServerExtensionFactory] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        self.protocol = _ServerProtocol(
            extensions=list(extensions),
            max_size=max_size,
            logger=logger or logging.getLogger("fastgate.ws"),
            # The app picks the subprotocol in websocket.accept, after the handshake check.
            select_subprotocol=lambda _protocol, _offered: None,
        )
        self.state = _HANDSHAKE
        self.subprotocols: list[str] = []  # offered by the client, in order
        self.disconnected = False  # websocket.disconnect was produced (the app was told)
        self._response: Response | None = None
        self._pending = bytearray()
        self._fragments = bytearray()  # an unfinished fragmented message, reassembled in place
        self._fragments_text = False
        self._events: list[Message] = []
        self._app_closed = False
        self._ping_payload: bytes | None = None
        self._reject_disconnect: tuple[int, str] | None = None

    # ------------------------------------------------------------------ handshake

    def receive_request(self, head: RequestHead) -> bool:
        """Check the upgrade request, as fastgate's HTTP layer parsed and validated it.

        Args:
            head: the request head of the ``UpgradeRequest``.

        Returns:
            True when the handshake is valid and the app should decide; False when it was
            answered with an error already (``data_to_send`` holds it, then EOF).
        """
        self.subprotocols = offered_subprotocols(head.headers)
        headers = Headers()
        for name, value in head.headers:
            headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol = self.protocol
        if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
            # A handshake carries no body (websockets' own request parser refuses one too).
            self._send_error(protocol.reject(HTTPStatus.BAD_REQUEST, "Invalid WebSocket handshake request.\n"))
            return False
        request = Request(head.target.decode("latin-1"), headers, method=head.method,
                          protocol="HTTP/" + head.http_version)
        response = protocol.accept(request)
        if response.status_code != 101:
            exc = protocol.handshake_exc
            if isinstance(exc, InvalidHeader) and exc.name == "Sec-WebSocket-Version" and exc.value is not None:
                # A version we do not speak: 426 and the one we do (RFC 6455 §4.4).
                response = protocol.reject(HTTPStatus.UPGRADE_REQUIRED, f"Unsupported WebSocket version {exc.value}.\n")
                response.headers["Upgrade"] = "websocket"
            response.headers["Sec-WebSocket-Version"] = "13"
            self._send_error(response)
            return False
        self._response = response
        return True

    def _send_error(self, response: Response) -> None:
        self.protocol.send_response(response)
        self.state = _CLOSED
        self.disconnected = True

    # The parameters of accept and reject are what the app sent, checked here: typed as such
    # (object, Any) so that the compiled build refuses bad values as the pure one does.
    def accept(self, subprotocol: object = None, headers: Iterable[Any] = ()) -> None:
        """Send the 101 response; bytes received meanwhile are processed now.

        Args:
            subprotocol: the subprotocol the app chose, or None.
            headers: extra response headers from the app.

        Raises:
            ClientDisconnected: the client went away before the app decided.
            LocalProtocolError: not waiting for a decision, or invalid values.
        """
        # Everything is checked before the decision is taken: a refused value must leave the
        # handshake answerable (with a 500), never half-built.
        extra = checked_headers(headers)
        if subprotocol is not None:
            if not isinstance(subprotocol, str) or not is_token(subprotocol):
                raise LocalProtocolError(f"invalid subprotocol {subprotocol!r}")
            if subprotocol not in self.subprotocols:
                # RFC 6455 §4.1: the client must fail a connection whose subprotocol it
                # did not offer; saying so here names the culprit.
                raise LocalProtocolError(f"subprotocol {subprotocol!r} was not offered by the client "
                                         f"(offered: {', '.join(self.subprotocols) or 'none'})")
        response = self._decision()
        if subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
            self.protocol.subprotocol = subprotocol  # type: ignore[assignment]
        for name, value in extra:
            response.headers[name] = value
        self.protocol.send_response(response)
        self.state = _OPEN
        if self._pending:
            pending, self._pending = bytes(self._pending), bytearray()
            self._receive(pending)

    def reject(self, status: object, headers: Iterable[Any] = (), body: object = b"") -> None:
        """Answer the upgrade request with a plain HTTP response (denial), then close.

        Args:
            status: HTTP status (403 when the app closed before accepting).
            headers: response headers from the app.
            body: the whole response body.

        Raises:
            ClientDisconnected: the client went away before the app decided.
            LocalProtocolError: not waiting for a decision, or invalid values.
        """
        code = status_code(status)
        extra = checked_headers(headers)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"the denial body must be bytes, got {type(body).__name__}")
        self._decision()
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        response_headers = Headers()
        for name, value in extra:
            response_headers[name] = value
        for name in ("Content-Length", "Transfer-Encoding", "Connection"):
            if name in response_headers:
                del response_headers[name]
        response_headers["Content-Length"] = str(len(body))
        response_headers["Connection"] = "close"
        self.protocol.send_response(Response(code, phrase, response_headers, bytes(body)))
        self.state = _CLOSED
        self._pending.clear()
        # No WebSocket was ever open: no close frame either (RFC 6455 §7.1.5: 1006).
        self._disconnect(*(self._reject_disconnect or (1006, "")))

    def _decision(self) -> Response:
        if self.state is not _HANDSHAKE:
            if self.disconnected:
                raise ClientDisconnected("client disconnected before the handshake was answered"
                                         if self._response is not None else "client disconnected")
            raise LocalProtocolError(f"the handshake was already answered (session {self.state.value})")
        response = self._response
        assert response is not None
        self._response = None
        return response

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer. Never raises on peer input (errors fail the connection)."""
        state = self.state
        if state is _HANDSHAKE:
            self._pending += data
        elif state is not _CLOSED:
            self._receive(data)

    @property
    def pending_size(self) -> int:
        """Bytes received before the app answered the handshake (for read backpressure)."""
        return len(self._pending)

    def receive_eof(self) -> None:
        """The peer half-closed (or closed)."""
        if self.state is _HANDSHAKE:
            # The client left before the app decided: nothing can be answered any more.
            self.state = _CLOSED
            self._disconnect(1006, "")
            return
        self.protocol.receive_eof()
        self._after_receive()

    def connection_lost(self) -> None:
        """The transport is gone: the app gets ``websocket.disconnect`` (1006) if not already."""
        self.state = _CLOSED
        self._disconnect(1006, "")

    def _receive(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        append = self._events.append
        for frame in protocol.events_received():
            assert isinstance(frame, Frame)
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._deliver(opcode is _TEXT, frame.data, append)
                else:
                    self._fragments_text = opcode is _TEXT
                    self._fragments = bytearray(frame.data)
            elif opcode is _CONT:
                self._fragments += frame.data
                if frame.fin:
                    data_ = bytes(self._fragments)
                    self._fragments = bytearray()
                    self._deliver(self._fragments_text, data_, append)
            elif opcode is _PONG:
                if self._ping_payload is not None and bytes(frame.data) == self._ping_payload:
                    self._ping_payload = None
            # PING is answered by ServerProtocol; CLOSE is handled in _after_receive.
            if protocol.state is not OPEN and self.disconnected:
                break
        self._after_receive()

    def _deliver(self, text: bool, data: bytes | bytearray | memoryview, append: Any) -> None:
        if self.disconnected:
            return
        if text:
            try:
                append({"type": "websocket.receive", "text": bytes(data).decode("utf-8")})
            except UnicodeDecodeError as exc:
                # RFC 6455 §8.1: invalid UTF-8 in a text message fails the connection.
                self.fail(1007, f"invalid UTF-8 at position {exc.start}")
        else:
            append({"type": "websocket.receive", "bytes": bytes(data)})

    def _follow_protocol(self) -> None:
        # Once open, websockets' protocol state is ours (it moves inside its own calls).
        if self.state is not _CLOSED:
            state = self.protocol.state
            self.state = _OPEN if state is OPEN else _CLOSING if state is CLOSING else _CLOSED

    def _after_receive(self) -> None:
        self._follow_protocol()
        if self.disconnected:
            return
        protocol = self.protocol
        close = protocol.close_rcvd
        if close is not None:
            self._disconnect(close.code, close.reason)
        elif protocol.state is not OPEN:
            # The server failed the connection (1002, 1009, ...) or the stream ended.
            sent = protocol.close_sent
            if sent is not None and not self._app_closed:
                self._disconnect(sent.code, sent.reason)
            elif protocol.state is CLOSED:
                self._disconnect(1006, "")

    def _disconnect(self, code: int, reason: str) -> None:
        if not self.disconnected:
            self.disconnected = True
            self._fragments = bytearray()
            self._events.append({"type": "websocket.disconnect", "code": code, "reason": reason})

    def events_received(self) -> list[Message]:
        """ASGI messages produced since the last call: ``websocket.receive`` / ``.disconnect``."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ sending

    def _check_open(self) -> None:
        state = self.state
        if state is not _OPEN:
            if state is _HANDSHAKE:
                raise LocalProtocolError("the WebSocket is not accepted yet")
            raise ClientDisconnected("WebSocket connection is closed")

    def send_text(self, text: str) -> None:
        """Send a text message.

        Raises:
            ClientDisconnected: the connection is closing or closed.
        """
        self._check_open()
        self.protocol.send_text(text.encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        """Send a binary message.

        Raises:
            ClientDisconnected: the connection is closing or closed.
        """
        self._check_open()
        self.protocol.send_binary(data)

    def close(self, code: int = 1000, reason: str = "", *, by_app: bool = True) -> None:
        """Start the closing handshake.

        Args:
            code: close code (RFC 6455 §7.4).
            reason: close reason (at most 123 UTF-8 bytes).
            by_app: the app asked (it hears of the end when the peer answers); False for a
                server-initiated close (shutdown), delivered to the app at once.

        Raises:
            ClientDisconnected: the connection is already closing or closed.
            LocalProtocolError: invalid code or reason.
        """
        self._check_open()
        if len(reason.encode("utf-8")) > 123:
            raise LocalProtocolError("close reason longer than 123 bytes")
        try:
            self.protocol.send_close(code, reason)
        except InvalidState:  # pragma: no cover - _check_open guards it
            raise ClientDisconnected("WebSocket connection is closed") from None
        except Exception as exc:  # websockets' ProtocolError: invalid close code
            raise LocalProtocolError(f"invalid close code {code!r}: {exc}") from None
        self._follow_protocol()
        self._app_closed = by_app
        if not by_app:
            self._disconnect(code, reason)

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 §7.1.7): close frame, EOF, app told at once."""
        state = self.state
        if state is _HANDSHAKE:
            self._reject_disconnect = (code, reason)
            self.reject(503 if code == 1012 else 500)
        elif state is not _CLOSED:
            self.protocol.fail(code, reason)
            self.state = _CLOSED
        self._disconnect(code, reason)

    def ping(self) -> bytes:
        """Send a keepalive ping with a random payload; ``pong_pending`` until answered."""
        payload = os.urandom(4)
        self.protocol.send_ping(payload)
        self._ping_payload = payload
        return payload

    @property
    def pong_pending(self) -> bool:
        """A keepalive ping is still waiting for its pong."""
        return self._ping_payload is not None

    @property
    def is_open(self) -> bool:
        return self.state is _OPEN

    @property
    def handshake_pending(self) -> bool:
        return self.state is _HANDSHAKE

    @property
    def output_finished(self) -> bool:
        """Our side is done: the close frame (or the refusal) and EOF were sent."""
        return self.protocol.eof_sent

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order; ``b""`` means half-close (write EOF)."""
        return self.protocol.data_to_send()

    def close_expected(self) -> bool:
        """The TCP connection should close soon: arm a close timer."""
        return self.protocol.close_expected()


def checked_headers(headers: Iterable[Any]) -> list[tuple[str, str]]:
    """The app's handshake headers as ``(name, value)`` strings for websockets, each one
    checked like every header fastgate writes (``fastgate.fields.check_field``).

    Raises:
        LocalProtocolError: a pair is not two bytes objects forming a valid field.
    """
    out: list[tuple[str, str]] = []
    try:
        for name, value in headers:
            check_field(name, value)
            out.append((name.decode("latin-1"), value.decode("latin-1")))
    except (TypeError, ValueError):
        raise LocalProtocolError(f"headers must be an iterable of (name, value) pairs, got {headers!r}") from None
    return out


__all__ = ["WebSocketSession", "SessionState", "deflate_factory", "checked_headers", "offered_subprotocols",
           "PENDING_LIMIT"]
