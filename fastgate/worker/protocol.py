"""The asyncio protocol for HTTP/1.1: the only code that touches an HTTP transport.

``HttpProtocol`` moves bytes from the transport into ``H1Connection`` and hands the events
out, one request at a time, to a ``RequestCycle`` whose app runs as a task. It is the
cycle's ``Channel`` (writes go through the ``WriteBuffer``, read pauses through
``FlowControl``) and the worker's ``Connection`` (a deadline for the request head or the
idle keep-alive, drain and abort).

One request's path: ``data_received`` -> ``H1Connection.receive_data`` -> ``_serve`` hands
out ``RequestHead`` (a cycle is made over ``build_scope``), body events (fed to the cycle),
then starts the app once the events at hand are in -> the app's ``send`` writes through the
channel -> the cycle says ``state_changed`` when the response is over -> the access line is
written from the cycle's outcome and the connection is reused (``start_next_request``) or
closed.

``_serve`` is the one place events are handed out. It runs from ``data_received`` and from
``state_changed`` (a response that ended in a later loop iteration); a response that ends
while ``_serve`` runs (an app answering without suspending, a probe) only does its
bookkeeping, and the running ``_serve`` goes on with the next pipelined request: the stack
stays flat however many requests one read carries.

Size: about 650 lines, over the ~500 the design aims at: besides the request path it holds
the per-request deadlines (``--timeout-request``), the file path (pathsend) and request ids,
which all read the connection's state. The timeout and pathsend parts are the next to move
into small pieces of their own, as probes and lingering close did.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Final

from fastgate.asgi.http_cycle import ASGIHTTPState, RequestCycle
from fastgate.asgi.scope import ConnectionInfo, build_scope
from fastgate.http.events import END_OF_REQUEST, NEED_DATA, PAUSED, BadRequest, BodyChunk, RequestHead, UpgradeRequest
from fastgate.http.h1 import H1Connection, RequestState, ResponseState
from fastgate.tls import tls_extension
from fastgate.worker.connection import Host
from fastgate.worker.flow import READ_BACKLOG, READ_PIPELINE, FlowControl
from fastgate.worker.linger import linger
from fastgate.worker.output import WriteBuffer
from fastgate.worker.probes import probe_response, text_response

# Python 3.12 can start a task eagerly: its first step runs inside create, with the task
# already current. Before 3.12 every request pays a call_soon and a loop iteration.
EAGER_TASKS = sys.version_info >= (3, 12)

# The name of every request's task. Python 3.11 formats a fresh "Task-<n>" for an unnamed
# task at creation (about 1,400 instructions, 1.5 % of a request); 3.12 only when asked.
REQUEST_TASK_NAME: Final = "fastgate.request"

# States compared on the hot path, as module names: reading a member from its Enum class
# costs about 1,000 instructions on Python 3.11, a global about 50.
_REQUEST_HEAD: Final = RequestState.HEAD
_REQUEST_DONE: Final = RequestState.DONE
_RESPONSE_WAITING: Final = ResponseState.WAITING
_CYCLE_START: Final = ASGIHTTPState.START
_CYCLE_BODY: Final = ASGIHTTPState.BODY
_NEVER: Final = float("inf")


# Bytes of a file read per write when it cannot be sent with sendfile (TLS).
FILE_CHUNK = 256 * 1024


async def send_file_zero_copy(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, fd: int, count: int,
                              gone: Callable[[], bool], progress: Callable[[], None] | None = None) -> int:
    """Send ``count`` bytes of file ``fd`` to the transport's socket with ``os.sendfile``.

    uvloop has no ``loop.sendfile``, and its transport owns the socket's fd in its own
    poller, so the file goes out through a duplicate of that fd: first the transport's
    buffer (the response head) must be empty, then the kernel copies file pages to the
    socket, waiting for writability on the duplicate between calls. The loop runs others
    after every call, so a fast reader cannot monopolise it. ``progress`` is called after
    each call that sent bytes (the request's idle deadline counts them as writes).

    Returns:
        the bytes sent: fewer than ``count`` when the file ended early, the peer went away
        or the socket failed.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    out_fd = os.dup(sock.fileno())
    try:
        while transport.get_write_buffer_size():
            if gone():
                return 0
            await _writable(loop, out_fd)
            await asyncio.sleep(0)  # the transport's own writer runs in this iteration too
        sent = 0
        while sent < count:
            if gone():
                break
            try:
                n = os.sendfile(out_fd, fd, sent, count - sent)
            except BlockingIOError:
                await _writable(loop, out_fd)
                continue
            except OSError:
                break  # EPIPE, ECONNRESET: the peer left; connection_lost follows
            if n == 0:
                break  # end of file before count: it was truncated
            sent += n
            if progress is not None:
                progress()
            await asyncio.sleep(0)
        return sent
    finally:
        os.close(out_fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)


class HttpProtocol(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (until it upgrades).

    Args:
        worker: the worker serving it.
    """

    # The write buffer's own methods, bound per connection: the cycle's writes reach the
    # transport without a call through this class.
    write: Callable[[bytes], None]
    writelines: Callable[[list[bytes]], None]

    def __init__(self, worker: Host) -> None:
        self.worker = worker
        settings = self.settings = worker.settings
        loop = worker.loop
        if loop is None:
            # Cached: on Python 3.11 get_running_loop() makes a getpid() system call, once
            # per connection here.
            loop = worker.loop = asyncio.get_running_loop()
        self.loop = loop
        self.transport: asyncio.Transport
        self.flow: FlowControl
        self.out: WriteBuffer
        self.info: ConnectionInfo
        self.conn = H1Connection(settings.limits, settings.defaults)
        self.cycle: RequestCycle | None = None  # the request being answered
        self.task: asyncio.Task[None] | None = None  # its app (None: not started yet)
        # Loop time at which the pending timeout fires (0.0: none), checked by the worker's
        # DeadlineSweeper: cheaper than a call_later per request.
        self.deadline = 0.0
        self._idle = False  # the deadline is the keep-alive one (else the request head's)
        self._serving = False  # _serve is running (see the module docstring)
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._probe = 0  # the status of a probe's answer, sent once its request is fully read
        # --timeout-request(-idle): loop times the app's clock started and it last wrote.
        self._request_start = 0.0
        self._last_write = 0.0
        self.request_id: str | None = None  # of the request being answered (when ids are on)

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.flow = FlowControl(self.transport)
        out = self.out = WriteBuffer(transport, self.loop)
        settings = self.settings
        if settings.timeout_request_idle:
            # Each write of the app's is progress: note its time (only with this option; the
            # plain path keeps the buffer's own methods).
            self.write = self._timed_write
            self.writelines = self._timed_writelines
        else:
            self.write = out.write
            self.writelines = out.writelines
        ssl_object = transport.get_extra_info("ssl_object")
        self.info = ConnectionInfo(
            transport.get_extra_info("peername"),
            transport.get_extra_info("sockname"),
            tls=ssl_object is not None,
            root_path=settings.root_path,
            state=settings.state,
            trust=settings.trust,
            # The handshake is over when connection_made runs: what it settled is read once.
            tls_info=None if ssl_object is None or settings.ciphers is None
            else tls_extension(ssl_object, settings.server_cert, settings.ciphers),
        )
        self.worker.add(self)
        # Accepted while draining (the accept raced the listener close): the client has
        # sent or will send a request; serve it with keep-alive off rather than reset it.
        self._arm(settings.timeout_request_header)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        metrics = self.settings.metrics
        if metrics is not None:
            metrics.bytes_in += len(data)
        if self._idle:
            # A new request is arriving on a kept-alive connection.
            self.deadline = 0.0
            self._idle = False
        self._serve()
        if self.deadline == 0.0 and self.cycle is None and conn.request_state is _REQUEST_HEAD:
            # Part of a head arrived: the client now has a deadline to finish it, which
            # further bytes do not extend (slowloris).
            if not self.out.closed and not self.transport.is_closing():
                self._arm(self.settings.timeout_request_header)

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        cycle = self.cycle
        if cycle is not None:
            # The client is gone, or half-closed after sending its request(s): tell the
            # app (http.disconnect from receive), but keep the transport open so the
            # response, and those to requests already parsed, can still go out; close once
            # they are. A client that really left fails the write and we get connection_lost.
            self._eof = True
            cycle.peer_closed()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = 0.0
        self._idle = False
        self.out.close()
        # The parser holds the connection for its callbacks: let go of it, so a closed
        # connection is freed at once, not by the cyclic GC.
        self.conn.close()
        self.flow.connection_lost()
        if self.cycle is not None:
            self.cycle.disconnect()
        self.worker.discard(self)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # ------------------------------------------------------------ handing out events

    def _serve(self) -> None:
        if self._serving:
            return  # a response ended inside the running _serve: it goes on by itself
        self._serving = True
        try:
            self._hand_out()
        finally:
            self._serving = False
        if self._eof and self.cycle is None and not self._gone():
            self.out.flush()
            self.transport.close()  # everything the client sent is answered; nothing more can arrive

    def _hand_out(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is END_OF_REQUEST:
                cycle = self.cycle
                if cycle is not None:
                    cycle.feed_end()
                elif self._probe:
                    # A request the server answers itself, now fully read: the answer goes
                    # out and the connection stays reusable.
                    status, self._probe = self._probe, 0
                    self.write(probe_response(conn, status))
                    self.state_changed()
                    if self.cycle is not None or self._gone():
                        return
            elif event is NEED_DATA or event is PAUSED:
                cycle = self.cycle
                if cycle is not None and self.task is None:
                    # The app starts once the events at hand are consumed, so that a response
                    # completing at once finds its request complete (END_OF_REQUEST seen)
                    # and the connection reusable.
                    self._start_app(cycle)
                    if self.cycle is None and not self._gone():
                        continue  # answered already: the next pipelined request may go
                if event is PAUSED:
                    # A pipelined request waits for the current response: stop reading so
                    # the queue stays bounded (RFC 9112 §9.3.2).
                    self.flow.pause_reading(READ_PIPELINE)
                return
            elif isinstance(event, RequestHead):
                self._on_request(event)
                if self._gone():
                    return
            elif isinstance(event, BodyChunk):
                if self.cycle is not None:
                    self.cycle.feed(event.data)
            elif isinstance(event, BadRequest):
                self._on_bad_request(event)
                return
            else:
                assert isinstance(event, UpgradeRequest)
                self._on_upgrade(event)
                return

    def _on_request(self, head: RequestHead) -> None:
        self.deadline = 0.0
        self._idle = False
        worker = self.worker
        settings = self.settings
        if worker.draining:
            self.conn.end_keep_alive()
        probes = settings.probes
        if probes is not None:
            status = probes.status(head.raw_path, worker.ready and not worker.draining)
            if status:
                self._probe = status  # answered at END_OF_REQUEST
                return
        limit = settings.limit_concurrency
        if limit is not None and len(worker.connections) > limit:
            # Shed the connection, at once (no linger: it would hold the slot longer).
            if settings.metrics is not None:
                settings.metrics.rejected(503, "limit-concurrency")
            self.conn.disable_keep_alive()
            self.write(text_response(self.conn, 503, b"Service Unavailable\n"))
            self.transport.close()
            return
        cycle = RequestCycle(build_scope(head, self.info), self.conn, self, expect_continue=head.expect_continue)
        request_ids = settings.request_ids
        if request_ids is not None:
            request_id = self.request_id = request_ids.for_request(head.headers, self.info)
            if settings.request_id_header is not None:
                # Valid by construction (generated, or passed is_request_id); set_response_header
                # still checks it, as every header written goes through check_field.
                self.conn.set_response_header(settings.request_id_header, request_id.encode("ascii"))
        if settings.access_formatter is not None or settings.metrics is not None:
            cycle.start_time = time.perf_counter()
        if self._eof:
            cycle.peer_closed()
        self.cycle = cycle
        self.task = None  # started once the head's events are in (_hand_out)
        if settings.timed:
            self._arm_request()

    def _start_app(self, cycle: RequestCycle) -> None:
        if EAGER_TASKS:
            # The app runs now, up to its first real suspension, and usually to the end:
            # no call_soon and loop iteration per request. It is still a Task, so
            # asyncio.current_task() (anyio cancel scopes) sees the same task throughout.
            coro = cycle.run(self.settings.app)
            self.task = asyncio.Task(coro, loop=self.loop, name=REQUEST_TASK_NAME,  # type: ignore[call-arg,unused-ignore]
                                     eager_start=True)
        else:
            # asyncio.Task itself, not loop.create_task: uvloop's wrapper parses its keyword
            # arguments again (about 1,300 instructions), and the name spares the formatting.
            self.task = asyncio.Task(cycle.run(self.settings.app), loop=self.loop, name=REQUEST_TASK_NAME)

    def _on_bad_request(self, event: BadRequest) -> None:
        self.out.flush()
        client = self.info.client
        self.settings.rejections.warning("rejected request from %s: %d %s", f"{client[0]}:{client[1]}"
                                         if client else "unix", event.status, event.reason)
        if self.settings.metrics is not None:
            self.settings.metrics.rejected(event.status, event.reason)
        cycle = self.cycle
        if cycle is not None:
            if cycle.state is not _CYCLE_START:
                # The broken part was the body of a request already being answered.
                self.transport.close()
                return
            cycle.disconnect()
        self.transport.write(self.conn.error_response(event.status, event.reason))
        self._close_after_response()

    def _on_upgrade(self, event: UpgradeRequest) -> None:
        self.out.flush()
        self.deadline = 0.0
        self._idle = False
        if self.worker.draining:
            self.transport.write(self.conn.error_response(503, "shutting down"))
            self.transport.close()
            return
        # The bytes now belong to the WebSocket protocol; this one steps aside (the worker
        # registers the websocket before it lets go of this one, so a drain never sees an
        # empty registry in between). Imported here, once per upgrade: a worker that never sees
        # a WebSocket never loads the websockets library, the largest of its imports.
        from fastgate.worker.websocket import WebSocketProtocol

        ws = WebSocketProtocol(self.worker, self.transport, self.flow, self.info)
        self.transport.set_protocol(ws)
        ws.start(event)
        self.out.close()
        self.conn.close()
        self.worker.discard(self)

    def _between_requests(self) -> bool:
        """No response in progress, and the connection still open."""
        return self.cycle is None and not self._gone()

    def _gone(self) -> bool:
        return self.out.closed or self.transport.is_closing()

    # ------------------------------------------------------------ Channel

    async def send_file(self, fd: int, count: int) -> int:
        """``Channel.send_file``: zero copy (``os.sendfile``) in the clear, chunked reads under TLS."""
        self.out.flush()  # what the cycle wrote (the head) goes first
        if self.info.scheme == "https":
            return await self._send_file_chunks(fd, count)
        return await send_file_zero_copy(self.transport, self.loop, fd, count, self._gone, self._progress)

    def _progress(self) -> None:
        self._last_write = self.loop.time()  # file bytes are writes (--timeout-request-idle)

    async def _send_file_chunks(self, fd: int, count: int) -> int:
        # The bytes must go through the TLS layer: read and write them, as a body would be,
        # waiting for the transport whenever it is above its high-water mark.
        sent = 0
        flow = self.flow
        while sent < count and not self._gone():
            chunk = os.pread(fd, min(FILE_CHUNK, count - sent), sent)
            if not chunk:
                break  # the file ended early (truncated while sent)
            self.transport.write(chunk)
            self._last_write = self.loop.time()
            sent += len(chunk)
            await flow.drain()
        return sent

    def drain(self) -> Awaitable[None]:
        return self.flow.drain()  # its awaitable, not a coroutine wrapped around it

    def pause_reading(self) -> None:
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
        """The response is over: log it, then reuse the connection for the next request or close."""
        self.deadline = 0.0  # the app's own (--timeout-request); the next one is armed below
        worker = self.worker
        worker.requests_served += 1
        if worker.max_requests is not None:
            worker.check_max_requests()
        cycle = self.cycle
        self.cycle = None
        if cycle is not None:
            settings = self.settings
            if settings.access_formatter is not None:
                self._log_access(cycle)
            metrics = settings.metrics
            if metrics is not None:
                metrics.response(cycle.scope["method"], cycle.status, time.perf_counter() - cycle.start_time,
                                 cycle.body_bytes)
        out = self.out
        if out.closed:
            return
        conn = self.conn
        if worker.draining:
            conn.end_keep_alive()  # a response that promised keep-alive keeps its promise
        if not conn.start_next_request():
            out.flush()
            if conn.request_state is _REQUEST_DONE:
                self.transport.close()  # the client sent all it meant to: a plain close
            else:
                self._close_after_response()  # it may still be sending a body we never read
            return
        flow = self.flow
        if flow.read_block:
            # The next request may be read now, unless the client is not reading our
            # responses (FlowControl keeps that reason until the transport drains).
            flow.resume_reading(READ_PIPELINE | READ_BACKLOG)
        queued = conn.queued
        if queued:
            # More pipelined requests are already parsed: gather their responses, for as
            # long as they keep coming one per loop iteration.
            out.gather(self._pipelining)
        elif out.gathering:
            out.flush()  # the last of a pipelined batch
        if self._serving:
            # Answered from inside _serve, whose loop goes on with the next request (and
            # closes after the last one on EOF); until one arrives the connection is idle.
            if not self._eof:
                self._arm(self.settings.timeout_keep_alive, True)
            return
        if queued or self._eof:  # otherwise there is nothing to hand out: skip the calls
            self._serve()
        # _serve may have started the next request's cycle. Asked through a method, not as
        # `self.cycle is None` here: the type checker still holds self.cycle as the None
        # assigned above, and the compiled build enforces that belief (the mypyc trial's
        # "TypeError: None object expected; got RequestCycle" under pipelined load).
        if self._between_requests():
            if self._eof:
                out.flush()
                self.transport.close()  # nothing more can arrive
            elif conn.request_state is _REQUEST_HEAD:
                self._arm(self.settings.timeout_keep_alive, True)

    def _pipelining(self) -> bool:
        # Asked by the write buffer at the end of a loop iteration: a slow app must not
        # hold back the responses already gathered.
        return self.cycle is not None and self.conn.queued > 0

    def _close_after_response(self) -> None:
        """Close while the client may still be sending (an unread body, a rejected head)."""
        self.out.flush()
        if self._gone():
            return
        self.deadline = 0.0
        self._idle = False
        linger(self.transport, self.flow, self, self.loop)

    # ------------------------------------------------------------ Connection: drain and deadlines

    def shutdown(self) -> None:
        """Graceful drain: no new request on this connection will be kept alive.

        Nothing is closed here. A connection idle between requests is left to its own
        keep-alive deadline: a client (typically a proxy's connection pool) may be sending
        a request on it at this very moment, and closing would reset that request, which a
        proxy cannot retry when it is a POST. Proxies keep their idle timeout below ours
        (deploy/nginx: 4 s < 5 s), so they close first. A request arriving meanwhile is
        answered with ``connection: close``; an in-flight one closes after its response,
        unless its head already went out promising keep-alive (then the connection stays for
        one more request, for the same reason); a just-accepted connection gets its first
        request answered. The drain deadline (``--timeout-graceful-shutdown``) bounds all of it.
        """
        self.conn.end_keep_alive()

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self.out.closed:
            self.transport.abort()

    def _arm(self, delay: float, idle: bool = False) -> None:
        """Set the request-head deadline, or with ``idle`` the keep-alive one."""
        self._idle = idle
        now = self.loop.time()
        self.deadline = now + delay if delay > 0 else now
        if delay <= 0:
            self.loop.call_soon(self._fire_if_due, self.deadline)  # no keep-alive: don't wait for a sweep

    def _fire_if_due(self, deadline: float) -> None:
        if self.deadline == deadline:
            self.on_deadline()

    def on_deadline(self) -> None:
        """Called by the worker's DeadlineSweeper once ``deadline`` has passed."""
        idle = self._idle
        self.deadline = 0.0
        self._idle = False
        if self.out.closed:
            return
        cycle = self.cycle
        if cycle is not None:
            # While a request is answered, the only deadline armed is the app's own.
            self._check_request_time(cycle)
            return
        if idle:
            self.transport.close()
            return
        settings = self.settings
        client = self.info.client
        settings.rejections.warning("request head not received within %gs from %s: 408",
                                    settings.timeout_request_header,
                                    f"{client[0]}:{client[1]}" if client else "unix")
        if settings.metrics is not None:
            settings.metrics.rejected(408, "request head not received in time")
        if self.conn.response_state is _RESPONSE_WAITING:
            self.transport.write(self.conn.error_response(408, "request head not received in time"))
        self.transport.close()

    # ------------------------------------------------------------ --timeout-request(-idle)

    def _arm_request(self) -> None:
        """A request's app starts: its clock starts too."""
        settings = self.settings
        now = self._request_start = self._last_write = self.loop.time()
        total, idle = settings.timeout_request, settings.timeout_request_idle
        self.deadline = now + (min(total, idle) if total and idle else total or idle)

    def _timed_write(self, data: bytes) -> None:
        self._last_write = self.loop.time()
        self.out.write(data)

    def _timed_writelines(self, data: list[bytes]) -> None:
        self._last_write = self.loop.time()
        self.out.writelines(data)

    def _request_limits(self, cycle: RequestCycle) -> tuple[float, float]:
        """The loop times the app must act by: (total, idle), ``inf`` for a limit that does
        not apply. A response under way is held to the idle limit alone when there is one."""
        settings = self.settings
        total, idle = settings.timeout_request, settings.timeout_request_idle
        by_idle = self._last_write + idle if idle else _NEVER
        by_total = self._request_start + total if total and not (idle and cycle.state is _CYCLE_BODY) else _NEVER
        return by_total, by_idle

    def _check_request_time(self, cycle: RequestCycle) -> None:
        # Writes do not move the deadline (that would cost a timer operation per send):
        # they note their time, and the deadline is worked out again here when it passes.
        by_total, by_idle = self._request_limits(cycle)
        now = self.loop.time()
        if now < by_total and now < by_idle:
            self.deadline = min(by_total, by_idle)
            return
        # Which limit passed is read from the limits themselves: now - last_write may round
        # to just under the idle limit although last_write + idle <= now.
        idle = now >= by_idle
        quiet = now - self._last_write  # before the 503 is written, which counts as a write
        settings = self.settings
        task = self.task
        answered = cycle.time_out()
        self.worker.requests_timed_out += 1
        client = self.info.client
        scope = cycle.scope
        settings.rejections.warning(
            "Request timed out: %s %s from %s %s (%s), %s",
            scope["method"], scope["path"], f"{client[0]}:{client[1]}" if client else "unix",
            f"sent nothing for {quiet:.3g}s" if idle else f"took {now - self._request_start:.3g}s",
            "--timeout-request-idle" if idle else "--timeout-request",
            "answered 503" if answered else "connection closed mid-response",
        )
        if task is not None and not task.done():
            task.cancel()

    # ------------------------------------------------------------ access log

    def _log_access(self, cycle: RequestCycle) -> None:
        fmt = self.settings.access_formatter
        assert fmt is not None
        scope = cycle.scope
        fmt.log(
            client=scope.get("client"),
            method=scope["method"],
            raw_path=scope["raw_path"],
            query=scope["query_string"],
            http_version=scope["http_version"],
            status=cycle.status,
            length=cycle.body_bytes,
            duration=time.perf_counter() - cycle.start_time,
            headers=scope["headers"],
            request_id=self.request_id,
        )
