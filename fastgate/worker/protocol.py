"""The asyncio protocol for HTTP/1.1: the only code that touches an HTTP transport.

It moves bytes between the transport and ``H1Connection``, starts one ``RequestCycle``
task per request, runs the per-connection timers (request-head deadline, keep-alive idle
close) and implements ``Channel`` for the cycle.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastgate.asgi.http_cycle import RequestCycle
from fastgate.asgi.scope import ConnectionInfo, build_scope
from fastgate.http.events import END_OF_REQUEST, NEED_DATA, PAUSED, BadRequest, BodyChunk, RequestHead, UpgradeRequest
from fastgate.http.h1 import H1Connection, RequestState
from fastgate.worker.context import WorkerContext
from fastgate.worker.flow import READ_ALL, READ_BACKLOG, READ_PIPELINE, FlowControl
from fastgate.worker.websocket import WebSocketProtocol
from fastgate.ws.session import offered_subprotocols

# Python 3.12 can start a task eagerly: its first step runs inside create, with the task
# already current. Before 3.12 every request pays a call_soon and a loop iteration.
EAGER_TASKS = sys.version_info >= (3, 12)

# Bytes of pipelined responses gathered before they are written anyway.
WRITE_GATHER_LIMIT = 64 * 1024


class HttpProtocol(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (until it upgrades)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        loop = ctx.loop
        if loop is None:
            # Cached: on Python 3.11 get_running_loop() makes a getpid() system call, once
            # per connection here.
            loop = ctx.loop = asyncio.get_running_loop()
        self.loop = loop
        self.transport: asyncio.Transport
        self.flow: FlowControl
        self.conn = H1Connection(ctx.limits, ctx.defaults)
        self.cycle: RequestCycle | None = None
        self.task: asyncio.Task[None] | None = None
        self.info: ConnectionInfo
        self.client: tuple[str, int] | None = None
        # Loop time at which the pending timeout fires (0.0: none), checked by the worker's
        # DeadlineSweeper: cheaper than a call_later per request.
        self.deadline = 0.0
        # Which deadline: idle keep-alive (reset by new bytes) or request head (never reset).
        self._deadline_idle = False
        self._closed = False
        self._pending: Callable[[], None] | None = None  # starts the app once the head's events are in
        self._in_events = False
        # Responses to pipelined requests are gathered here and written together (one send
        # instead of one per response); None when not gathering. See response_complete.
        self._wbuf: list[bytes] | None = None
        self._wbuf_size = 0
        self._progress = False  # a response completed since the last flush tick
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._probe = 0  # status of a probe answer, sent once its request is fully read
        self._start_time = 0.0

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.flow = FlowControl(self.transport)
        ctx = self.ctx
        ctx.register(self)
        self.info = info = ConnectionInfo(
            transport.get_extra_info("peername"), transport.get_extra_info("sockname"),
            tls=transport.get_extra_info("sslcontext") is not None, root_path=ctx.root_path,
            state=ctx.lifespan_state, trust=ctx.trust)
        self.client = info.client
        # Accepted while draining (the accept raced the listener close): the client has
        # sent or will send a request; serve it with keep-alive off rather than reset it.
        self._arm_timer(ctx.timeout_request_header)
        ctx.sweeper.wake(self.loop)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        if self._deadline_idle:
            # A new request is arriving on a kept-alive connection (inlined _cancel_timer).
            self.deadline = 0.0
            self._deadline_idle = False
        self._process_events()
        if self.deadline == 0.0 and self.cycle is None and conn.request_state is RequestState.HEAD:
            # Part of a head arrived: the client now has a deadline to finish it, which
            # further bytes do not extend (slowloris).
            if not self._closed and not self.transport.is_closing():
                self._arm_timer(self.ctx.timeout_request_header)

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        if self.cycle is not None:
            # The client is gone, or half-closed after sending its request(s): tell the
            # app (http.disconnect from receive), but keep the transport open so the
            # response, and those to requests already parsed, can still go out; close in
            # response_complete. A client that really left fails the write and we get
            # connection_lost.
            self._eof = True
            self.cycle.peer_closed()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        # Drop the references back to this object (a stored bound method, the parser's callbacks):
        # with no cycle left, a closed connection is freed at once, not by the cyclic GC.
        self._pending = None
        self.conn.close()
        self.flow.connection_lost()
        if self.cycle is not None:
            self.cycle.disconnect()
        self.ctx.unregister(self)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # ------------------------------------------------------------ event dispatch

    def _process_events(self) -> None:
        # A response that completes synchronously (a probe, or an app run by an eager task)
        # calls response_complete from inside this loop: the loop, not a recursive call,
        # then moves on to the next pipelined request, so the stack stays flat.
        if self._in_events:
            return
        self._in_events = True
        try:
            self._event_loop()
        finally:
            self._in_events = False
        if self._eof and self.cycle is None and not self._closed and not self.transport.is_closing():
            self._flush()
            self.transport.close()  # everything the client sent is answered; nothing more can arrive

    def _event_loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            cls = event.__class__
            if cls is BodyChunk:
                if self.cycle is not None:
                    self.cycle.feed(event.data)  # type: ignore[union-attr]
            elif event is END_OF_REQUEST:
                if self.cycle is not None:
                    self.cycle.feed_end()
                elif self._probe:
                    # A request the server answers itself, now fully read: the answer goes
                    # out and the connection stays reusable.
                    status, self._probe = self._probe, 0
                    self._send_simple(status, b"OK\n" if status == 200 else b"Unavailable\n")
                    self.response_complete()
                    if self._closed or self.transport.is_closing() or self.cycle is not None:
                        return
            elif cls is RequestHead:
                self._on_request(event)  # type: ignore[arg-type]
                if self._closed or self.transport.is_closing():
                    return
            elif event is NEED_DATA or event is PAUSED:
                # The app starts once the events at hand are consumed, so that a response
                # completing at once finds its request complete (END_OF_REQUEST seen) and
                # the connection reusable.
                start = self._pending
                if start is not None:
                    self._pending = None
                    start()
                    if self.cycle is None and not self._closed and not self.transport.is_closing():
                        continue  # answered already: the next pipelined request may go
                if event is PAUSED:
                    # A pipelined request waits for the current response: stop reading so
                    # the queue stays bounded (RFC 9112 §9.3.2).
                    self.flow.pause_reading(READ_PIPELINE)
                return
            elif cls is BadRequest:
                self._on_bad_request(event)  # type: ignore[arg-type]
                return
            elif cls is UpgradeRequest:
                self._on_upgrade(event)  # type: ignore[arg-type]
                return

    def _on_request(self, head: RequestHead) -> None:
        self.deadline = 0.0  # inlined _cancel_timer
        self._deadline_idle = False
        ctx = self.ctx
        if ctx.draining:
            self.conn.disable_keep_alive()
        raw_path = head.raw_path
        if raw_path == ctx.health_path or raw_path == ctx.ready_path:
            self._answer_probe(head)
            return
        if ctx.limit_concurrency is not None and len(ctx.connections) > ctx.limit_concurrency:
            # Shed the connection, at once (no linger: it would hold the slot longer).
            self.conn.disable_keep_alive()
            self._send_simple(503, b"Service Unavailable\n")
            self.transport.close()
            return
        if ctx.access_formatter is not None:
            self._start_time = time.perf_counter()
        cycle = RequestCycle(build_scope(head, self.info), self.conn, self, expect_continue=head.expect_continue)
        if self._eof:
            cycle.peer_closed()
        self.cycle = cycle
        self._pending = self._start_app

    def _start_app(self) -> None:
        cycle = self.cycle
        assert cycle is not None
        if EAGER_TASKS:
            # The app runs now, up to its first real suspension, and usually to the end:
            # no call_soon and loop iteration per request. It is still a Task, so
            # asyncio.current_task() (anyio cancel scopes) sees the same task throughout.
            coro = cycle.run(self.ctx.app)
            self.task = asyncio.Task(coro, loop=self.loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        else:
            self.task = self.loop.create_task(cycle.run(self.ctx.app))

    def _answer_probe(self, head: RequestHead) -> None:
        ctx = self.ctx
        if head.raw_path == ctx.health_path:
            ok = True
        else:
            ok = ctx.ready and not ctx.draining
        self._probe = 200 if ok else 503  # answered at END_OF_REQUEST

    def _send_simple(self, status: int, body: bytes) -> None:
        """Answer without the app (probes, overload)."""
        data = self.conn.start_response(status, [(b"content-type", b"text/plain; charset=utf-8")], body)
        self.write(data)

    def _on_bad_request(self, event: BadRequest) -> None:
        self._flush()
        ctx = self.ctx
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unix"
        ctx.rejections.warning("rejected request from %s: %d %s", client, event.status, event.reason)
        if self.cycle is not None and self.cycle.state.value != "start":
            # The broken part was the body of a request already being answered.
            self.transport.close()
            return
        if self.cycle is not None:
            self.cycle.disconnect()
        self.transport.write(self.conn.error_response(event.status, event.reason))
        self._close_after_response()

    def _on_upgrade(self, event: UpgradeRequest) -> None:
        self._flush()
        self._cancel_timer()
        ctx = self.ctx
        if ctx.draining:
            self.transport.write(self.conn.error_response(503, "shutting down"))
            self.transport.close()
            return
        head = event.head
        scope = build_scope(head, self.info, offered_subprotocols(head.headers))
        # The bytes now belong to the WebSocket protocol; this one steps aside (it is
        # registered again as a websocket first, so the drain event never blinks).
        ws = WebSocketProtocol(ctx, self.transport, self.flow, scope)
        self.transport.set_protocol(ws)
        ws.start(head.method, head.target, head.http_version, head.headers, event.remainder)
        self._closed = True
        self._pending = None  # no cycle left (see connection_lost)
        self.conn.close()
        ctx.unregister(self)

    # ------------------------------------------------------------ Channel

    def write(self, data: bytes) -> None:
        if not self._closed:
            wbuf = self._wbuf
            if wbuf is None:
                self.transport.write(data)
            else:
                wbuf.append(data)
                self._wbuf_size += len(data)
                if self._wbuf_size > WRITE_GATHER_LIMIT:
                    self._flush()

    def writelines(self, parts: list[bytes]) -> None:
        if self._wbuf is not None:
            for part in parts:  # gathering pipelined responses: as write() does
                self.write(part)
        elif not self._closed:
            self.transport.writelines(parts)

    def _flush(self) -> None:
        """Write what was gathered and stop gathering; before any other transport call."""
        wbuf = self._wbuf
        if wbuf is not None:
            self._wbuf = None
            self._wbuf_size = 0
            if wbuf and not self._closed:
                self.transport.write(b"".join(wbuf))

    def _flush_tick(self) -> None:
        # Runs once per loop iteration while gathering: as long as pipelined responses keep
        # completing (each request's task runs in the iteration after the previous one
        # ended) keep gathering; once an iteration brings none, a slow app is at work and
        # what is ready must go out now.
        if self._wbuf is None:
            return
        if self._progress and self.cycle is not None and self.conn.queued:
            self._progress = False
            self.loop.call_soon(self._flush_tick)
            return
        self._flush()

    def drain(self) -> Awaitable[None]:
        return self.flow.drain()  # its coroutine, not one more wrapped around it

    def pause_reading(self) -> None:
        self.flow.pause_reading()

    def resume_reading(self) -> None:
        if not self._closed:
            self.flow.resume_reading()

    def close(self) -> None:
        if not self._closed:
            self._flush()
            self.transport.close()

    def is_closing(self) -> bool:
        return self._closed or self.transport.is_closing()

    def state_changed(self) -> None:
        self.response_complete()

    def response_complete(self) -> None:
        """The response ended: reuse the connection for the next request, or close it."""
        ctx = self.ctx
        ctx.requests_served += 1  # inlined: once per response
        if ctx.access_formatter is not None and self.cycle is not None:
            self._log_access(self.cycle)
        if ctx.max_requests is not None:
            ctx.check_max_requests()
        self.cycle = None
        if self._closed:
            return
        if ctx.draining:
            self.conn.disable_keep_alive()
        if not self.conn.start_next_request():
            self._flush()
            if self.conn.request_state is RequestState.DONE:
                self.transport.close()  # the client sent all it meant to: a plain close
            else:
                self._close_after_response()  # it may still be sending a body we never read
            return
        if self.flow.read_paused:
            # The next request may be read now, unless the client is not reading our
            # responses (FlowControl keeps that reason until the transport drains).
            self.flow.resume_reading(READ_PIPELINE | READ_BACKLOG)
        queued = self.conn.queued
        if queued:
            # More pipelined requests are already parsed: gather their responses.
            self._progress = True
            if self._wbuf is None:
                self._wbuf = []
                self.loop.call_soon(self._flush_tick)
        elif self._wbuf is not None:
            self._flush()  # the last of a pipelined batch
        if self._in_events:
            # Answered synchronously from inside _process_events, whose loop goes on with
            # the next request (and closes after the last one on EOF); until one arrives
            # the connection is idle.
            if not self._eof:
                self._arm_timer(ctx.timeout_keep_alive, True)
            return
        if queued or self._eof:  # otherwise there is nothing to process: skip the calls
            self._process_events()
        if self.cycle is None and not self._closed and not self.transport.is_closing():
            if self._eof:
                self._flush()
                self.transport.close()  # nothing more can arrive
            elif self.conn.request_state is RequestState.HEAD:
                self._arm_timer(ctx.timeout_keep_alive, True)

    def _close_after_response(self) -> None:
        """Close while the client may still be sending (an unread body, a rejected head).

        Closing a socket with unread input makes the kernel send RST, and a client still
        uploading would then often lose the response we just wrote (RFC 9112 §9.6). So:
        shut down our side after the response (FIN), discard what keeps coming until the
        client closes, for at most LINGER_SECONDS.
        """
        self._flush()
        transport = self.transport
        if self._closed or transport.is_closing():
            return
        if not transport.can_write_eof():  # e.g. TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading(READ_ALL)
        self._cancel_timer()
        transport.set_protocol(_Lingering(self, transport))

    # ------------------------------------------------------------ drain and timers

    def shutdown(self) -> None:
        """Graceful drain: no new request on this connection will be kept alive.

        Nothing is closed here. A connection idle between requests is left to its own
        keep-alive deadline: a client (typically a proxy's connection pool) may be sending
        a request on it at this very moment, and closing would reset that request, which a
        proxy cannot retry when it is a POST. Proxies keep their idle timeout below ours
        (deploy/nginx: 4 s < 5 s), so they close first. A request arriving meanwhile is
        answered with ``connection: close``; an in-flight one closes after its response; a
        just-accepted connection gets its first request answered. The drain deadline
        (``--timeout-graceful-shutdown``) bounds all of it.
        """
        self.conn.disable_keep_alive()

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self._closed:
            self.transport.abort()

    def _arm_timer(self, delay: float, idle: bool = False) -> None:
        """Set the request-head deadline, or with ``idle`` the keep-alive one."""
        self._deadline_idle = idle
        now = self.loop.time()
        self.deadline = now + delay if delay > 0 else now
        if delay <= 0:
            self.loop.call_soon(self._fire_if_due, self.deadline)  # no keep-alive: don't wait for a sweep

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        self._deadline_idle = False

    def _fire_if_due(self, deadline: float) -> None:
        if self.deadline == deadline:
            self.on_deadline()

    def on_deadline(self) -> None:
        """Called by the worker's DeadlineSweeper once ``deadline`` has passed."""
        idle = self._deadline_idle
        self._cancel_timer()
        if idle:
            self._on_keep_alive_timeout()
        else:
            self._on_header_timeout()

    def _on_header_timeout(self) -> None:
        if self._closed or self.cycle is not None:
            return
        ctx = self.ctx
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unix"
        ctx.rejections.warning("request head not received within %gs from %s: 408", ctx.timeout_request_header,
                               client)
        self.transport.write(self.conn.error_response(408, "request head not received in time"))
        self.transport.close()

    def _on_keep_alive_timeout(self) -> None:
        if not self._closed and self.cycle is None:
            self.transport.close()

    # ------------------------------------------------------------ access log

    def _log_access(self, cycle: RequestCycle) -> None:
        fmt = self.ctx.access_formatter
        if fmt is None:
            return
        scope = cycle.scope
        fmt.log(
            client=scope.get("client"),
            method=scope["method"],
            raw_path=scope["raw_path"],
            query=scope["query_string"],
            http_version=scope["http_version"],
            status=cycle.status,
            length=cycle.body_bytes,
            duration=time.perf_counter() - self._start_time,
            headers=scope["headers"],
        )



LINGER_SECONDS = 2.0


class _Lingering(asyncio.Protocol):
    """The last moments of a connection closed by us mid-request: input is discarded
    until the peer closes or LINGER_SECONDS pass; ``connection_lost`` goes to the owner."""

    def __init__(self, owner: HttpProtocol, transport: Any) -> None:
        self.owner = owner
        self.transport = transport
        self.timer = owner.loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the peer is done too: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.owner.connection_lost(exc)
