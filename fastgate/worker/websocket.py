"""The asyncio protocol for an upgraded WebSocket connection.

``HttpProtocol`` hands the transport over with ``transport.set_protocol()`` once an upgrade
request arrived; from then on this class moves bytes between the transport and the
``WebSocketSession``, and runs the app's ``WebSocketCycle`` as a task. It is the cycle's
``Channel`` and the worker's ``Connection``.

One upgrade's path: ``start(UpgradeRequest)`` -> the session checks the head as it is
(``receive_request``) -> the scope is built with the subprotocols the session read -> the
app's task starts -> its ``websocket.accept`` moves the session -> ``state_changed``
writes the 101 and what followed -> frames flow: ``data_received`` -> session ->
``_sync`` (write its output, put its events in the inbox) -> the app's ``receive``.

After every session call, ours or the cycle's, ``_sync`` follows websockets' sans-I/O guide:
write ``data_to_send()`` (``b""`` means half-close: ``write_eof``, or close when the
transport cannot half-close, as with TLS), then look at the session's state:

* close: once the session expects the TCP connection to end (closing handshake done or
  failed), the peer gets ``CLOSE_TIMEOUT`` seconds to close its side before we abort. This
  is the connection's ``deadline``, polled by the worker's sweeper like the HTTP ones.
* keepalive: once open, every ``ws_ping_interval`` a ping with a random payload; no pong
  within ``ws_ping_timeout`` fails the connection with 1011. A pong cannot be read while
  reading is paused for backpressure, so the timeout is then postponed, not fired.

This object refers to the session, the inbox and the task, never to the cycle: the cycle
refers to it (as its channel), not the other way round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

from fastgate.asgi.scope import ConnectionInfo, build_scope
from fastgate.asgi.ws_cycle import Inbox, WebSocketCycle
from fastgate.http.events import UpgradeRequest
from fastgate.worker.connection import Host
from fastgate.worker.flow import READ_BACKLOG, READ_HANDSHAKE, FlowControl
from fastgate.worker.output import WriteBuffer
from fastgate.ws.session import PENDING_LIMIT, SessionState, WebSocketSession, deflate_factory

ws_logger = logging.getLogger("fastgate.ws")

# Seconds the peer has to close TCP after the closing handshake (websockets' default).
CLOSE_TIMEOUT = 10.0

_SESSION_OPEN: Final = SessionState.OPEN  # a module name: cheaper than the Enum class attribute


class WebSocketProtocol(asyncio.Protocol):
    """One upgraded connection speaking WebSocket.

    Args:
        worker: the worker serving it.
        transport: the transport taken over from ``HttpProtocol``.
        flow: its flow-control state (write pauses carry over).
        info: the connection's shared facts (for the scope).
    """

    def __init__(self, worker: Host, transport: asyncio.Transport, flow: FlowControl, info: ConnectionInfo) -> None:
        settings = worker.settings.websocket
        self.worker = worker
        self.loop = loop = worker.loop or asyncio.get_running_loop()
        self.transport = transport
        self.flow = flow
        self.info = info
        self.out = WriteBuffer(transport, loop)
        self.session = WebSocketSession(
            max_size=settings.ws_max_size,
            extensions=[deflate_factory()] if settings.ws_per_message_deflate else [],
            logger=ws_logger,
        )
        self.inbox = Inbox(settings.ws_max_queue)
        self.task: asyncio.Task[None] | None = None
        self.deadline = 0.0  # the close timeout, once armed
        self.ping_interval = settings.ws_ping_interval
        self.ping_timeout = settings.ws_ping_timeout
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._released = False

    def start(self, upgrade: UpgradeRequest) -> None:
        """Check the handshake; if valid run the app; then process what followed the head."""
        self.worker.add(self)
        session = self.session
        head = upgrade.head
        if session.receive_request(head):
            scope = build_scope(head, self.info, session.subprotocols)
            cycle = WebSocketCycle(scope, session, self, self.inbox)
            self.task = self.loop.create_task(cycle.run(self.worker.settings.app))
            self.task.add_done_callback(self._task_done)
        if upgrade.remainder:
            self.data_received(upgrade.remainder)
        else:
            self._sync()

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - set_protocol
        pass

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.receive_data(data)
        self._sync()
        if session.handshake_pending and session.pending_size > PENDING_LIMIT:
            # The app has not accepted yet: bound what we buffer for it (lifted in _sync).
            self.flow.pause_reading(READ_HANDSHAKE)

    def eof_received(self) -> bool | None:
        self.session.receive_eof()
        self._sync()
        # Returning None closes the transport: write what is held back first.
        self.out.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.close()
        self.deadline = 0.0
        self._cancel_timers()
        self.flow.connection_lost()
        self.session.connection_lost()
        self._deliver()
        self._maybe_release()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # ------------------------------------------------------------ after every session call

    def _sync(self) -> None:
        """Write what the session has to send, deliver its events, follow its state."""
        session = self.session
        out = self.out
        if out.closed:
            session.data_to_send()  # nothing can be written any more
        else:
            for data in session.data_to_send():
                if data:
                    # Messages sent during one loop iteration leave in one write (one
                    # syscall instead of one per message).
                    out.gather()
                    out.write(data)
                else:
                    out.flush()
                    transport = self.transport
                    if transport.can_write_eof():
                        transport.write_eof()
                    else:
                        transport.close()
            # An open session expects no close (websockets' own answer while OPEN): two
            # calls per message spared, the session's state read instead.
            if self.deadline == 0.0 and session.state is not _SESSION_OPEN and session.close_expected():
                self.deadline = self.loop.time() + CLOSE_TIMEOUT
        self._deliver()
        flow = self.flow
        if flow.read_block & READ_HANDSHAKE and not session.handshake_pending:
            flow.resume_reading(READ_HANDSHAKE)
        if self._ping_timer is None and self.ping_interval > 0 and session.is_open and not out.closed:
            self._ping_timer = self.loop.call_later(self.ping_interval, self._on_ping)

    def _deliver(self) -> None:
        events = self.session.events_received()
        if events:
            put = self.inbox.put
            for message in events:
                if put(message):
                    self.pause_reading()  # the app is behind: resumed once it took half

    # ------------------------------------------------------------ Channel

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.writelines(parts)

    def drain(self) -> Awaitable[None]:
        return self.flow.drain()  # its awaitable, not a coroutine wrapped around it

    def pause_reading(self) -> None:
        if not self.out.closed:
            self.flow.pause_reading(READ_BACKLOG)

    def resume_reading(self) -> None:
        if not self.out.closed:
            self.flow.resume_reading(READ_BACKLOG)

    def close(self) -> None:
        if not self.out.closed:
            self.out.flush()
            self.transport.close()

    def is_closing(self) -> bool:
        return self.out.closed or self.transport.is_closing()

    def state_changed(self) -> None:
        """The cycle moved the session (accept, send, close, deny): act on it."""
        self._sync()

    # ------------------------------------------------------------ Connection: drain and deadline

    def shutdown(self) -> None:
        """Graceful drain: close 1012 (service restart); the app hears of it at once."""
        session = self.session
        if self.out.closed:
            return
        if session.is_open:
            session.close(1012, "server restart", by_app=False)
        elif session.handshake_pending:
            session.fail(1012, "server restart")
        elif session.output_finished:
            # Our side is finished (close frame and EOF sent): waiting for the peer to
            # close TCP is pointless when the process is going away.
            self.out.flush()
            self.transport.close()
            return
        self._sync()

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._abort_transport()

    def on_deadline(self) -> None:
        """The peer did not close TCP within CLOSE_TIMEOUT of the closing handshake."""
        self.deadline = 0.0
        self._abort_transport()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._maybe_release()

    def _maybe_release(self) -> None:
        # Registered until both the connection and the app are done, so a graceful drain
        # waits for the app to handle websocket.disconnect.
        if self.out.closed and (self.task is None or self.task.done()) and not self._released:
            self._released = True
            self.worker.discard(self)

    # ------------------------------------------------------------ keepalive

    def _on_ping(self) -> None:
        self._ping_timer = None
        session = self.session
        if self.out.closed or not session.is_open:
            return
        if not session.pong_pending:
            session.ping()
            self._sync()
            if self.ping_timeout > 0:
                self._pong_timer = self.loop.call_later(self.ping_timeout, self._on_pong_timeout)
        self._ping_timer = self.loop.call_later(self.ping_interval, self._on_ping)

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        session = self.session
        if self.out.closed or not session.is_open or not session.pong_pending:
            return
        if self.flow.read_paused:
            # We stopped reading: the pong may be sitting in our socket buffer.
            self._pong_timer = self.loop.call_later(self.ping_timeout, self._on_pong_timeout)
            return
        session.fail(1011, "keepalive ping timeout")
        self._sync()

    def _abort_transport(self) -> None:
        if not self.out.closed:
            self.transport.abort()
            # connection_lost comes on the next iteration; nothing may be written before.
            self.out.close()

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
