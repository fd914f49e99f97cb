"""The asyncio protocol for an upgraded WebSocket connection.

``HttpProtocol`` hands the transport over with ``transport.set_protocol()`` once an upgrade
request arrived; from then on this class moves bytes between the transport and the
``WebSocketSession`` and runs the app's ``WebSocketCycle`` task. It owns the timers:

* keepalive: every ``ws_ping_interval`` a ping with a random payload; no pong within
  ``ws_ping_timeout`` fails the connection with 1011. A pong cannot be read while reading
  is paused for backpressure, so the timeout is then postponed, not fired.
* close: once the session expects the TCP connection to end (closing handshake done or
  failed), the peer gets ``CLOSE_TIMEOUT`` seconds to close its side before we abort. This
  is the connection's ``deadline``, polled by the worker's sweeper like the HTTP ones.

Flushing follows websockets' sans-I/O guide: after every session call, write
``data_to_send()``; ``b""`` means half-close (``write_eof``, or close when the transport
cannot half-close, as with TLS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from fastgate.asgi.types import Scope
from fastgate.asgi.ws_cycle import WebSocketCycle
from fastgate.worker.connection import Host
from fastgate.worker.flow import READ_BACKLOG, READ_HANDSHAKE, FlowControl
from fastgate.worker.output import WriteBuffer
from fastgate.ws.session import PENDING_LIMIT, WebSocketSession, deflate_factory

ws_logger = logging.getLogger("fastgate.ws")

# Seconds the peer has to close TCP after the closing handshake (websockets' default).
CLOSE_TIMEOUT = 10.0


class WebSocketProtocol(asyncio.Protocol):
    """One upgraded connection speaking WebSocket.

    Args:
        worker: the worker serving it.
        transport: the transport taken over from ``HttpProtocol``.
        flow: its flow-control state (write pauses carry over).
        scope: the ASGI websocket scope.
    """

    def __init__(self, worker: Host, transport: asyncio.Transport, flow: FlowControl, scope: Scope) -> None:
        settings = worker.settings.websocket
        self.worker = worker
        self.loop = loop = worker.loop or asyncio.get_running_loop()
        self.transport = transport
        self.flow = flow
        self.out = WriteBuffer(transport, loop)
        self.deadline = 0.0  # the close timeout, once armed
        self.session = WebSocketSession(
            max_size=settings.ws_max_size,
            extensions=[deflate_factory()] if settings.ws_per_message_deflate else [],
            logger=ws_logger,
        )
        self.cycle = WebSocketCycle(scope, self.session, self, max_queue=settings.ws_max_queue)
        self.task: asyncio.Task[None] | None = None
        self.ping_interval = settings.ws_ping_interval
        self.ping_timeout = settings.ws_ping_timeout
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._handshake_paused = False
        self._closed = False
        self._released = False

    def start(self, method: str, target: bytes, http_version: str, headers: list[tuple[bytes, bytes]],
              remainder: bytes) -> None:
        """Check the handshake; if valid run the app, then process ``remainder``."""
        session = self.session
        self.worker.add(self)
        if session.receive_request(method, target, http_version, headers):
            self.task = self.loop.create_task(self.cycle.run(self.worker.settings.app))
            self.task.add_done_callback(self._task_done)
        if remainder:
            self.data_received(remainder)
        else:
            self.flush()

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover - set_protocol
        pass

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.receive_data(data)
        self.flush()
        if session.handshake_pending and session.pending_size > PENDING_LIMIT and not self._handshake_paused:
            # The app has not accepted yet: bound what we buffer for it.
            self._handshake_paused = True
            self._pause_reading(READ_HANDSHAKE)

    def eof_received(self) -> bool | None:
        self.session.receive_eof()
        self.flush()
        # Returning None closes the transport: write what is held back first.
        self.out.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.out.close()
        self.deadline = 0.0
        self._cancel_timers()
        self.flow.connection_lost()
        self.session.connection_lost()
        self._dispatch()
        self._maybe_unregister()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # ------------------------------------------------------------ WebSocketChannel

    def state_changed(self) -> None:
        self.flush()

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.writelines(parts)

    def close(self) -> None:
        self.out.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self._closed or self.transport.is_closing()

    def flush(self) -> None:
        """Write what the session has to send, then hand its events to the app."""
        session = self.session
        if not self._closed:
            out = self.out
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
            if self.deadline == 0.0 and session.close_expected():
                self.deadline = self.loop.time() + CLOSE_TIMEOUT
        else:
            session.data_to_send()
        self._dispatch()
        if self._handshake_paused and not session.handshake_pending:
            self._handshake_paused = False
            self._resume_reading(READ_HANDSHAKE)
        if self._ping_timer is None and self.ping_interval > 0 and session.is_open and not self._closed:
            self._ping_timer = self.loop.call_later(self.ping_interval, self._on_ping)

    def _dispatch(self) -> None:
        events = self.session.events_received()
        if events:
            feed = self.cycle.feed
            for message in events:
                feed(message)

    def drain(self) -> Awaitable[None]:
        return self.flow.drain()  # its coroutine, not one more wrapped around it

    def pause_reading(self) -> None:
        self._pause_reading(READ_BACKLOG)

    def resume_reading(self) -> None:
        self._resume_reading(READ_BACKLOG)

    def _pause_reading(self, reason: int) -> None:
        if not self._closed:
            self.flow.pause_reading(reason)

    def _resume_reading(self, reason: int) -> None:
        if not self._closed:
            self.flow.resume_reading(reason)

    # ------------------------------------------------------------ drain

    def shutdown(self) -> None:
        """Graceful drain: close 1012 (service restart); the app hears of it at once."""
        session = self.session
        if self._closed:
            return
        if session.is_open:
            session.close(1012, "server restart", by_app=False)
        elif session.handshake_pending:
            session.fail(1012, "server restart")
        elif self.session.protocol.eof_sent:
            # Our side is finished (close frame and EOF sent): waiting for the peer to
            # close TCP is pointless when the process is going away.
            self.out.flush()
            self.transport.close()
            return
        self.flush()

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._abort_transport()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._maybe_unregister()

    def _maybe_unregister(self) -> None:
        # Registered until both the connection and the app are done, so a graceful drain
        # waits for the app to handle websocket.disconnect.
        if self._closed and (self.task is None or self.task.done()) and not self._released:
            self._released = True
            self.worker.discard(self)
            # Both sides are done: the cycle (whose channel is this object) goes, so nothing
            # refers back here and the connection is freed at once, not by the cyclic GC.
            del self.cycle

    # ------------------------------------------------------------ timers

    def _on_ping(self) -> None:
        self._ping_timer = None
        session = self.session
        if self._closed or not session.is_open:
            return
        if not session.pong_pending:
            session.ping()
            self.flush()
            if self.ping_timeout > 0:
                self._pong_timer = self.loop.call_later(self.ping_timeout, self._on_pong_timeout)
        self._ping_timer = self.loop.call_later(self.ping_interval, self._on_ping)

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        session = self.session
        if self._closed or not session.is_open or not session.pong_pending:
            return
        if self.flow.read_paused:
            # We stopped reading: the pong may be sitting in our socket buffer.
            self._pong_timer = self.loop.call_later(self.ping_timeout, self._on_pong_timeout)
            return
        session.fail(1011, "keepalive ping timeout")
        self.flush()

    def on_deadline(self) -> None:
        """The peer did not close TCP within CLOSE_TIMEOUT of the closing handshake."""
        self.deadline = 0.0
        self._abort_transport()

    def _abort_transport(self) -> None:
        if not self._closed:
            self.transport.abort()
            # connection_lost comes on the next iteration; nothing may be written before.
            self._closed = True
            self.out.close()

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
