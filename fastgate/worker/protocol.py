"""The asyncio protocol for HTTP/1.1: the only code that touches an HTTP transport.

It moves bytes between the transport and ``H1Connection``, starts one ``RequestCycle``
task per request, runs the per-connection timers (request-head deadline, keep-alive idle
close) and implements ``Channel`` for the cycle.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from fastgate.asgi.http_cycle import RequestCycle
from fastgate.asgi.scope import build_http_scope
from fastgate.http.events import END_OF_REQUEST, NEED_DATA, PAUSED, BadRequest, BodyChunk, RequestHead, UpgradeRequest
from fastgate.http.h1 import H1Connection, RequestState
from fastgate.logs import access_logger
from fastgate.worker.context import WorkerContext
from fastgate.worker.flow import FlowControl


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


class HttpProtocol(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (until it upgrades)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport
        self.flow: FlowControl
        self.conn = H1Connection(ctx.limits, ctx.defaults)
        self.cycle: RequestCycle | None = None
        self.task: asyncio.Task[None] | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.proxy_trusted = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_is_idle = False  # idle keep-alive timer (reset by new bytes) vs head deadline (never reset)
        self._closed = False

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.flow = FlowControl(transport)
        ctx = self.ctx
        ctx.register(self)
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = _address(peer)
        self.server = _address(local)
        if self.server is None and isinstance(local, str):
            self.server = (local, None)  # UNIX socket: the path, no port
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        trust = ctx.trust
        if trust.enabled:
            unix = sock is not None and getattr(sock, "family", None) == socket.AF_UNIX
            self.proxy_trusted = trust.trusts(None if unix else (self.client[0] if self.client else None))
        # Accepted while draining (the accept raced the listener close): the client has
        # sent or will send a request; serve it with keep-alive off rather than reset it.
        self._arm_timer(ctx.timeout_request_header, self._on_header_timeout)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        if self._timer_is_idle:
            self._cancel_timer()  # a new request is arriving on a kept-alive connection
        self._process_events()
        if self._timer is None and self.cycle is None and conn.request_state is RequestState.HEAD:
            # Part of a head arrived: the client now has a deadline to finish it, which
            # further bytes do not extend (slowloris).
            if not self._closed and not self.transport.is_closing():
                self._arm_timer(self.ctx.timeout_request_header, self._on_header_timeout)

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        if self.cycle is not None:
            # Half-closed after sending a request: answer it, then close.
            self.conn.keep_alive = False
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
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
            elif cls is RequestHead:
                self._on_request(event)  # type: ignore[arg-type]
                if self._closed or self.transport.is_closing():
                    return
            elif event is NEED_DATA:
                return
            elif event is PAUSED:
                # A pipelined request waits for the current response: stop reading so the
                # queue stays bounded (RFC 9112 §9.3.2).
                self.flow.pause_reading()
                return
            elif cls is BadRequest:
                self._on_bad_request(event)  # type: ignore[arg-type]
                return
            elif cls is UpgradeRequest:
                self._on_upgrade(event)  # type: ignore[arg-type]
                return

    def _on_request(self, head: RequestHead) -> None:
        self._cancel_timer()
        ctx = self.ctx
        if ctx.draining:
            self.conn.keep_alive = False
        raw_path = head.raw_path
        if raw_path == ctx.health_path or raw_path == ctx.ready_path:
            self._answer_probe(head)
            return
        if ctx.limit_concurrency is not None and len(ctx.connections) > ctx.limit_concurrency:
            self._send_simple(503, b"Service Unavailable\n")
            return
        scope = build_http_scope(
            head,
            client=self.client,
            server=self.server,
            scheme=self.scheme,
            root_path=ctx.root_path,
            state=ctx.lifespan_state,
            proxy_trusted=self.proxy_trusted,
            trust=ctx.trust,
        )
        access = self._log_access if ctx.access_formatter is not None else None
        cycle = self.cycle = RequestCycle(
            scope,
            self.conn,
            self,
            expect_continue=head.expect_continue,
            access_log=access,
            start_time=time.perf_counter() if access is not None else 0.0,
        )
        self.task = self.loop.create_task(cycle.run(ctx.app))

    def _answer_probe(self, head: RequestHead) -> None:
        ctx = self.ctx
        if head.raw_path == ctx.health_path:
            ok = True
        else:
            ok = ctx.ready and not ctx.draining
        if ok:
            self._send_simple(200, b"OK\n")
        else:
            self._send_simple(503, b"Unavailable\n")

    def _send_simple(self, status: int, body: bytes) -> None:
        """Answer without the app (probes, overload), then continue as after any response."""
        conn = self.conn
        data = conn.start_response(status, [(b"content-type", b"text/plain; charset=utf-8")], body)
        self.transport.write(data)
        self.response_complete()

    def _on_bad_request(self, event: BadRequest) -> None:
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
        self.transport.close()

    def _on_upgrade(self, event: UpgradeRequest) -> None:
        # WebSocket support lands with its own protocol; until then refuse clearly.
        self.transport.write(self.conn.error_response(501, "WebSocket is not supported by this build"))
        self.transport.close()

    # ------------------------------------------------------------ Channel

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    async def drain(self) -> None:
        await self.flow.drain()

    def pause_reading(self) -> None:
        self.flow.pause_reading()

    def resume_reading(self) -> None:
        if not self._closed:
            self.flow.resume_reading()

    def close(self) -> None:
        if not self._closed:
            self.transport.close()

    def is_closing(self) -> bool:
        return self._closed or self.transport.is_closing()

    def response_complete(self) -> None:
        """The response ended: reuse the connection for the next request, or close it."""
        ctx = self.ctx
        ctx.count_request()
        self.cycle = None
        if self._closed:
            return
        if ctx.draining:
            self.conn.keep_alive = False
        if not self.conn.start_next_request():
            self.transport.close()
            return
        self.flow.resume_reading()
        self._process_events()
        if self.cycle is None and not self._closed and not self.transport.is_closing():
            if self.conn.request_state is RequestState.HEAD:
                self._arm_timer(ctx.timeout_keep_alive, self._on_keep_alive_timeout, idle=True)

    # ------------------------------------------------------------ drain and timers

    def shutdown(self) -> None:
        """Graceful drain: close if idle, otherwise close after the current response."""
        self.conn.keep_alive = False
        # Close only connections idle between requests. One that has not sent its first
        # request yet (just accepted) gets it answered: closing it would reset a request
        # the client already sent. The head deadline bounds how long it can take.
        if self.cycle is None and not self._closed and self._timer_is_idle:
            self.transport.close()

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self._closed:
            self.transport.abort()

    def _arm_timer(self, delay: float, callback: Any, idle: bool = False) -> None:
        self._cancel_timer()
        self._timer_is_idle = idle
        if delay > 0:
            self._timer = self.loop.call_later(delay, callback)
        else:
            self._timer = self.loop.call_soon(callback)  # type: ignore[assignment]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_is_idle = False

    def _on_header_timeout(self) -> None:
        self._timer = None
        self._timer_is_idle = False
        if self._closed or self.cycle is not None:
            return
        ctx = self.ctx
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unix"
        ctx.rejections.warning("request head not received within %gs from %s: 408", ctx.timeout_request_header,
                               client)
        self.transport.write(self.conn.error_response(408, "request head not received in time"))
        self.transport.close()

    def _on_keep_alive_timeout(self) -> None:
        self._timer = None
        self._timer_is_idle = False
        if not self._closed and self.cycle is None:
            self.transport.close()

    # ------------------------------------------------------------ access log

    def _log_access(self, cycle: RequestCycle) -> None:
        fmt = self.ctx.access_formatter
        if fmt is None:
            return
        scope = cycle.scope
        atoms = fmt.atoms(
            client=scope.get("client"),
            method=scope["method"],
            raw_path=scope["raw_path"],
            query=scope["query_string"],
            http_version=scope["http_version"],
            status=cycle.status,
            length=cycle.body_bytes,
            duration=time.perf_counter() - cycle.start_time,
            headers=scope["headers"],
        )
        if fmt.json_mode:
            access_logger.info("%s %s %s", atoms["m"], atoms["U"], atoms["s"], extra={"access": atoms})
        else:
            access_logger.info("%s", fmt.line(atoms))

