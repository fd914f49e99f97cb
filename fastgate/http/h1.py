"""HTTP/1.1 server connection: bytes in, events out; response parts in, bytes out.

Theory of operation
-------------------
``H1Connection`` never touches a socket, a loop or a clock. It joins two halves, as h11
separates its readers and writers:

* the receive half, ``RequestReader`` (``h1_receive``): bytes in, request events queued
  (``RequestHead``, ``BodyChunk``, ``END_OF_REQUEST``, ``UpgradeRequest``, ``BadRequest``);
* the send half, ``ResponseWriter`` (``h1_send``): status, headers and body in, framed
  bytes out.

Between them sit the connection's state machines, and nothing else moves them. Three small
machines, because a server may answer before the request body has arrived (RFC 9112 §9.3),
and because the input may end the connection whatever the responses do:

* ``RequestState``: how far ``next_event`` has handed out the current request;
* ``ResponseState``: how far its response has been written;
* ``ConnectionState``: whether the bytes are still HTTP/1.1 of ours to parse.

Every transition is a row of ``TRANSITIONS`` below: a state, a ``Trigger`` (an event
handed out by ``next_event``, or a call), and the state it leads to. A trigger that moves a
machine but has no row for its current state is refused: ``next_event`` answers PAUSED (a
pipelined request waits for the current response, so responses go out strictly in order),
a call raises ``LocalProtocolError``. tests/http/test_h1_states.py walks every pair.

``keep_alive`` has one owner, this class: the request's own wish (HTTP/1.0 without
keep-alive, ``Connection: close``), a broken or cut-short request, the caller's
``disable_keep_alive`` (an abort, an overloaded worker) or ``end_keep_alive`` (a draining
worker: no promise broken), and the writer's verdict on the response
(``ResponseWriter.closing``). ``start_next_request`` reuses the connection only when both
sides are DONE and all of them agree.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, Final

from fastgate.errors import LocalProtocolError
from fastgate.fields import check_field
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
from fastgate.http.h1_receive import PROXY_HEADERS, H1Limits, RequestReader
from fastgate.http.h1_send import CONTINUE, STATUS_LINES, DefaultHeaders, Framing, ResponseWriter


class Trigger(enum.IntEnum):
    """What moves the state machines."""

    HEAD = 0  # next_event hands out a RequestHead
    UPGRADE = 1  # next_event hands out an UpgradeRequest
    END = 2  # next_event hands out END_OF_REQUEST
    BAD = 3  # next_event hands out a BadRequest
    START = 4  # start_response without the body: the body follows
    RESPOND = 5  # start_response with the whole body
    BODY_END = 6  # send_body(end=True), or a body piece that broke the framing
    ERROR_RESPONSE = 7  # error_response
    NEXT = 8  # start_next_request, the connection kept alive
    CLOSE = 9  # close(): the transport is gone


class RequestState(enum.Enum):
    HEAD = "head"  # waiting for the next request head
    BODY = "body"  # the head was handed out, its body is coming
    DONE = "done"  # the request is complete

    moves: tuple[RequestState | None, ...]  # by Trigger, from TRANSITIONS


class ResponseState(enum.Enum):
    WAITING = "waiting"  # nothing written for the current request
    BODY = "body"  # the head was written, the body is being written
    DONE = "done"  # the response is complete

    moves: tuple[ResponseState | None, ...]


class ConnectionState(enum.Enum):
    OPEN = "open"  # parsing HTTP/1.1
    ERROR = "error"  # a BadRequest was handed out: answer it and close
    SWITCHED = "switched"  # an UpgradeRequest was handed out: the bytes belong to another protocol
    CLOSED = "closed"  # the transport is gone

    moves: tuple[ConnectionState | None, ...]


# The one transition table: {machine: {state: {trigger: next state}}}. A machine reacts to
# the triggers named in its rows; any other trigger leaves it as it is.
TRANSITIONS: Final[dict[type[enum.Enum], dict[enum.Enum, dict[Trigger, enum.Enum]]]] = {
    RequestState: {
        RequestState.HEAD: {
            Trigger.HEAD: RequestState.BODY,
            Trigger.UPGRADE: RequestState.DONE,  # what follows the head belongs to the new protocol
            Trigger.BAD: RequestState.HEAD,
        },
        RequestState.BODY: {
            Trigger.END: RequestState.DONE,
            Trigger.BAD: RequestState.BODY,  # a broken body belongs to the request being answered
        },
        RequestState.DONE: {
            Trigger.NEXT: RequestState.HEAD,  # a head or an error of the next request waits: PAUSED
        },
    },
    ResponseState: {
        ResponseState.WAITING: {
            Trigger.START: ResponseState.BODY,
            Trigger.RESPOND: ResponseState.DONE,
            Trigger.ERROR_RESPONSE: ResponseState.DONE,
        },
        ResponseState.BODY: {
            Trigger.BODY_END: ResponseState.DONE,
        },
        ResponseState.DONE: {
            Trigger.NEXT: ResponseState.WAITING,
        },
    },
    ConnectionState: {
        ConnectionState.OPEN: {
            Trigger.UPGRADE: ConnectionState.SWITCHED,
            Trigger.BAD: ConnectionState.ERROR,
            Trigger.CLOSE: ConnectionState.CLOSED,
        },
        ConnectionState.ERROR: {Trigger.CLOSE: ConnectionState.CLOSED},
        ConnectionState.SWITCHED: {Trigger.CLOSE: ConnectionState.CLOSED},
        ConnectionState.CLOSED: {Trigger.CLOSE: ConnectionState.CLOSED},
    },
}


def machine_triggers(machine: type[enum.Enum]) -> frozenset[Trigger]:
    """The triggers a machine reacts to (those named in any of its rows)."""
    return frozenset(trigger for row in TRANSITIONS[machine].values() for trigger in row)


def _compile() -> None:
    # Each state keeps its row as a tuple indexed by trigger: one index at run time, the
    # same cost as the hand-written assignment it replaces. A trigger the machine ignores
    # maps a state to itself; one it reacts to without a row maps it to None (refused).
    for machine, rows in TRANSITIONS.items():
        reacts = machine_triggers(machine)
        for state in machine:
            row = rows[state]
            state.moves = tuple(  # type: ignore[attr-defined]
                row.get(trigger) if trigger in reacts else state for trigger in Trigger
            )


_compile()

# Module-level names for the states compared on the hot path: on Python 3.11 reading a
# member from its Enum class (RequestState.DONE) costs about 1,000 instructions, a global
# about 50 (benchmarks/OPTIMIZATIONS.md).
_REQUEST_HEAD: Final = RequestState.HEAD
_REQUEST_DONE: Final = RequestState.DONE
_RESPONSE_WAITING: Final = ResponseState.WAITING
_RESPONSE_BODY: Final = ResponseState.BODY
_OPEN: Final = ConnectionState.OPEN

# Plain ints for indexing the rows (an IntEnum index takes a slower path).
_HEAD: Final = int(Trigger.HEAD)
_UPGRADE: Final = int(Trigger.UPGRADE)
_END: Final = int(Trigger.END)
_BAD: Final = int(Trigger.BAD)
_START: Final = int(Trigger.START)
_RESPOND: Final = int(Trigger.RESPOND)
_BODY_END: Final = int(Trigger.BODY_END)
_ERROR_RESPONSE: Final = int(Trigger.ERROR_RESPONSE)
_NEXT: Final = int(Trigger.NEXT)
_CLOSE: Final = int(Trigger.CLOSE)


class H1Connection:
    """The server side of one HTTP/1.1 connection, without I/O.

    ``receive_data(data)`` feeds bytes from the peer (never raises on peer input); it is
    the receive half's own method, bound here rather than wrapped: it runs once per read.

    Args:
        limits: request size limits.
        defaults: headers added to every response (Date, Server, --header).
    """

    __slots__ = (
        "reader",
        "writer",
        "receive_data",
        "request_state",
        "response_state",
        "state",
        "_keep_alive",
        "_keep_alive_ends",
        "_events",
        "_method",
        "_http_version",
    )

    def __init__(self, limits: H1Limits | None = None, defaults: DefaultHeaders | None = None) -> None:
        reader = self.reader = RequestReader(limits)
        self.writer = ResponseWriter(defaults)
        self.receive_data: Callable[[bytes], None] = reader.receive_data
        self.request_state = _REQUEST_HEAD
        self.response_state = _RESPONSE_WAITING
        self.state = _OPEN
        self._keep_alive = True
        self._keep_alive_ends = False  # end_keep_alive came after a head that promised it
        self._events = reader.events
        # The request being answered (a HEAD response has no body; HTTP/1.0 frames differently).
        self._method = "GET"
        self._http_version = "1.1"

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after the current response."""
        return self._keep_alive and not self.writer.closing

    def disable_keep_alive(self) -> None:
        """Close after the current response (an abort, an overloaded worker), whatever its
        head said."""
        self._keep_alive = False

    def end_keep_alive(self) -> None:
        """No response from now on promises keep-alive (a graceful drain).

        A response whose head already went out promising it keeps that promise: the
        connection is reused once more, and that request is answered with ``connection:
        close``. Closing right after such a response would race the peer's next request (a
        proxy's pool sends one as soon as a response is in) and reset it, which the proxy
        cannot retry when it is a POST (nginx answers 502).
        """
        if self.response_state is _RESPONSE_WAITING:
            self._keep_alive = False
        else:
            self._keep_alive_ends = True

    # ---------------------------------------------------------------- receiving

    def receive_eof(self) -> None:
        """The peer half-closed. A request cut short is dropped; nothing else to do."""
        if self.state is ConnectionState.OPEN and (self.reader.in_head or self.request_state is RequestState.BODY):
            # An incomplete request: no response is owed (the peer cannot read it reliably).
            self._keep_alive = False

    def close(self) -> None:
        """The transport is gone: parse nothing more and let go of the parser."""
        self.state = self.state.moves[_CLOSE] or ConnectionState.CLOSED  # (every state has a CLOSE row)
        self.reader.close()

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
        if event is END_OF_REQUEST:
            state = self.request_state.moves[_END]  # BODY -> DONE: its head was handed out first
            if state is None:
                return PAUSED
            self.request_state = state
        elif isinstance(event, RequestHead):
            state = self.request_state.moves[_HEAD]
            if state is None:
                return PAUSED
            self.request_state = state
            self._method = event.method
            self._http_version = event.http_version
            if not event.keep_alive:
                self._keep_alive = False
        elif isinstance(event, BodyChunk):
            pass
        elif isinstance(event, BadRequest):
            # A broken body belongs to the current request: deliver it now. A broken next
            # request waits its turn, like any pipelined request.
            state = self.request_state.moves[_BAD]
            connection = self.state.moves[_BAD]
            if state is None or connection is None:
                return PAUSED
            self.request_state, self.state = state, connection
            self._keep_alive = False
            self._method = "HEAD" if event.head else "GET"
        else:
            assert isinstance(event, UpgradeRequest)
            state = self.request_state.moves[_UPGRADE]
            connection = self.state.moves[_UPGRADE]
            if state is None or connection is None:
                return PAUSED
            self.request_state, self.state = state, connection
            self._method = event.head.method
            self._http_version = event.head.http_version
        return events.popleft()

    # ---------------------------------------------------------------- sending

    def start_response(
        self, status: object, headers: Iterable[Any], body: bytes | None = None
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
            LocalProtocolError: invalid status, header name or value, or wrong state
                (nothing changes: an error response can still be sent).
        """
        return b"".join(self._start(status, headers, body))

    def start_response_parts(self, status: object, headers: Iterable[Any], body: bytes) -> list[bytes]:
        """``start_response`` with a known body, as ``[head, body]`` for a vectored write.

        For a large body: joining it to the head would copy all of it once more.
        """
        parts = self._start(status, headers, body)
        return [b"".join(parts[:-1]), parts[-1]]

    def _start(self, status: object, headers: Iterable[Any], body: bytes | None) -> list[bytes]:
        state = self.response_state.moves[_START if body is None else _RESPOND]
        if state is None:
            raise LocalProtocolError("response already started")
        parts = self.writer.start(status, headers, body, self._method, self._http_version, self._keep_alive,
                                  self.request_state is _REQUEST_DONE)
        self.response_state = state
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
                shorter (the response is over and the connection cannot be reused), or
                no response was started.
        """
        self._body_transition(end)
        try:
            return self.writer.body(data, end)
        except LocalProtocolError:
            self.response_state = self.response_state.moves[_BODY_END] or self.response_state
            raise

    def send_body_parts(self, data: bytes, end: bool) -> list[bytes]:
        """``send_body`` for a large piece, as parts for a vectored write: a chunk's
        framing goes around ``data`` instead of being joined to it (which copies it)."""
        self._body_transition(end)
        try:
            return self.writer.body_parts(data, end)
        except LocalProtocolError:
            self.response_state = self.response_state.moves[_BODY_END] or self.response_state
            raise

    def send_file(self, size: int) -> tuple[bytes, int, bytes]:
        """The rest of the body is a file of ``size`` bytes: its framing (``ResponseWriter.file_framing``).

        Raises:
            LocalProtocolError: no response body was started.
        """
        self._body_transition(True)
        return self.writer.file_framing(size)

    def send_trailers(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """End the body (sent with ``end=False``) with trailer fields; the response is over.

        Raises:
            LocalProtocolError: an invalid trailer field, a short body, or no body started.
        """
        self._body_transition(True)
        return self.writer.trailers(headers)

    def _body_transition(self, end: bool) -> None:
        state = self.response_state
        if state is not _RESPONSE_BODY:
            raise LocalProtocolError("send_body outside a response body")
        if end:
            self.response_state = state.moves[_BODY_END] or state

    def error_response(self, status: int, reason: str = "") -> bytes:
        """A complete plain-text error response; the connection must close after it.

        Args:
            status: 4xx or 5xx.
            reason: short text for the body (and the log).

        Raises:
            LocalProtocolError: a response was already started for the current request.
        """
        state = self.response_state.moves[_ERROR_RESPONSE]
        if state is None:
            raise LocalProtocolError("error_response after the response started")
        self.response_state = state
        self._keep_alive = False
        return self.writer.error(status, reason, self._method)

    def set_response_header(self, name: bytes, value: bytes) -> None:
        """Add one header to the response of the current request only (a request id).

        Args:
            name: the field name (lower-case bytes).
            value: the field value.

        Raises:
            LocalProtocolError: not a valid field line (``fastgate.fields.check_field``).
        """
        check_field(name, value)
        self.writer.request_header = name + b": " + value + b"\r\n"

    def start_next_request(self) -> bool:
        """Reset for the next request on a kept-alive connection.

        Returns:
            False (and nothing changes) when the connection must close instead: keep-alive
            is off, the request body was not fully read, or the connection is in error.

        Raises:
            LocalProtocolError: the response has not ended.
        """
        response_state = self.response_state.moves[_NEXT]
        if response_state is None:
            raise LocalProtocolError("start_next_request before the response ended")
        request_state = self.request_state.moves[_NEXT]
        if request_state is None or not self._keep_alive or self.writer.closing:
            # A half-read request body would be parsed as the next request: never reuse.
            self._keep_alive = False
            return False
        self.request_state = request_state
        self.response_state = response_state
        if self._keep_alive_ends:
            self._keep_alive = False
        self._method = "GET"  # until the next head: an error answered meanwhile (408) has a body
        self.writer.request_header = b""  # it named the request just answered
        return True


__all__ = [
    "CONTINUE",
    "PROXY_HEADERS",
    "STATUS_LINES",
    "TRANSITIONS",
    "ConnectionState",
    "DefaultHeaders",
    "Framing",
    "H1Connection",
    "H1Limits",
    "RequestState",
    "ResponseState",
    "Trigger",
    "machine_triggers",
]
