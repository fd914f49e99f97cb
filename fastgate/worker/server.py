"""A worker: uvloop loop, lifespan, serving the listening sockets, graceful drain.

The ``Worker`` is the host of its connections (``fastgate.worker.connection``): it holds
the settings they read, the registry of open connections (HTTP and WebSocket alike), the
drain state and the request counter, and it drives the drain over that one registry.

Used in two ways: ``run_single`` (no master: load, serve in this process the listeners the
runner bound) and ``run_worker`` (called in a forked child with inherited sockets and a
``WorkerHooks`` that reports to the master).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import uvloop

from fastgate.asgi.lifespan import Lifespan
from fastgate.asgi.loader import load_app
from fastgate.asgi.types import ASGIApp
from fastgate.config import Config, listeners_tls
from fastgate.errors import (
    EXIT_APP_LOAD_FAILED,
    EXIT_BOOT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    AppLoadError,
    BindError,
    ConfigError,
    LifespanFailure,
)
from fastgate.logs import error_logger, reopen_files
from fastgate.tls import server_context
from fastgate.worker.connection import Connection
from fastgate.worker.deadlines import DeadlineSweeper, sweep_interval
from fastgate.worker.memory import keep_heap
from fastgate.worker.protocol import HttpProtocol
from fastgate.worker.settings import ServerSettings

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> bytes:
    """``timestamp`` as an HTTP-date (RFC 9110 IMF-fixdate): ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Formatted here rather than with ``email.utils.formatdate``, which a worker would import
    the whole ``email`` package for at start-up, or ``time.strftime``,
    whose ``%a`` and ``%b`` follow the C locale that an app may change.
    """
    t = time.gmtime(timestamp)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT").encode("ascii")


class WorkerHooks(Protocol):
    """How a worker reports to whoever supervises it."""

    beat_interval: float | None  # seconds between beats, None for no heartbeat

    def ready(self) -> None: ...

    def beat(self) -> None: ...

    def draining(self) -> None: ...

    def recycle(self) -> None: ...

    def metrics(self, payload: bytes) -> None: ...


class Listening(Protocol):
    """A bound listener, as ``run_single`` needs it (``supervisor.sockets.Listener``)."""

    sock: socket.socket
    key: tuple[str, Any] | None

    def describe(self, tls: bool) -> str: ...

    def close(self) -> None: ...


class Worker:
    """Serve ``sockets`` with ``app`` until told to stop; the ``Host`` of its connections.

    Args:
        config: the configuration.
        app: the ASGI 3 app.
        sockets: listening sockets (bound by the master or by the runner).
        hooks: supervisor reporting, or None when running alone.
        tls: for each socket, whether it serves TLS (missing: plain).
        ssl_context: the server context of the TLS sockets, built in this process from the
            configuration (``fastgate.tls.server_context``).
    """

    def __init__(
        self,
        config: Config,
        app: ASGIApp,
        sockets: Sequence[socket.socket],
        hooks: WorkerHooks | None = None,
        *,
        tls: Sequence[bool] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.sockets = list(sockets)
        self.tls = [bool(t) for t in tls] + [False] * (len(self.sockets) - len(tls))
        if any(self.tls) and ssl_context is None:
            raise ValueError("a TLS listener needs an ssl_context")
        self.ssl_context = ssl_context
        self.hooks = hooks
        self.state: dict[str, Any] = {}  # the lifespan state
        self.settings = ServerSettings(config, app, self.state, ssl_context)
        self.loop: asyncio.AbstractEventLoop | None = None
        # The registry: every open connection, HTTP or WebSocket. A drain waits until it is
        # empty (all_closed), then for the tasks of what it had to abort.
        self.connections: set[Connection] = set()
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        http = config.http
        self.sweeper = DeadlineSweeper(self.connections, sweep_interval(
            http.timeout_keep_alive, http.timeout_request_header, http.timeout_request or 0.0,
            http.timeout_request_idle or 0.0))
        self.ready = False
        self.draining = False
        self.requests_served = 0
        self.requests_timed_out = 0  # --timeout-request / --timeout-request-idle
        self.max_requests: int | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.exit_code = EXIT_OK
        self._stop: asyncio.Event | None = None
        self._force = False
        self._date_timer: asyncio.TimerHandle | None = None
        self._beat_timer: asyncio.TimerHandle | None = None
        # Called once the app started and the listeners accept: "Listening on" goes out
        # only when requests can really be served (after lifespan startup).
        self.on_serving: Callable[[], None] | None = None

    # ------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------ Host (for the connections)

    def add(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.all_closed.clear()
        if self.loop is not None:
            self.sweeper.wake(self.loop)

    def discard(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self.all_closed.set()

    def check_max_requests(self) -> None:
        if self.requests_served != self.max_requests:
            return
        served = self.requests_served
        if self.hooks is not None:
            # Drain-first: serve on until the master has a ready replacement and sends SIGTERM.
            error_logger.info("Served %d requests (--limit-max-requests): asking the master for a replacement",
                              served)
            self.hooks.recycle()
            return
        error_logger.info("Served %d requests (--limit-max-requests): recycling this worker", served)
        self.stop()

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> int:
        """Run until stopped; returns the exit code."""
        loop = self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = self.config
        lifespan = Lifespan(self.app, config.app.lifespan, config.app.timeout_lifespan, state=self.state)
        try:
            await lifespan.startup()
        except LifespanFailure as exc:
            error_logger.error("%s", exc)
            return EXIT_BOOT_FAILED
        limit = config.http.limit_max_requests
        if limit is not None:
            jitter = config.http.limit_max_requests_jitter
            self.max_requests = limit + (int.from_bytes(os.urandom(4), "big") % (jitter + 1) if jitter else 0)
        if config.http.date_header:
            self._tick_date()
        backlog = config.bind.backlog
        for sock, tls in zip(self.sockets, self.tls, strict=True):
            if tls:
                # The handshake shares the request head's deadline: a client that connects and
                # says nothing costs the same either way.
                server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=backlog,
                                                  ssl=self.ssl_context,
                                                  ssl_handshake_timeout=config.http.timeout_request_header)
            else:
                server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=backlog)
            self.servers.append(server)
        self.ready = True
        if self.on_serving is not None:
            self.on_serving()
        if self.hooks is not None:
            self.hooks.ready()
            self._schedule_beat()
        await self._stop.wait()
        await self._drain()
        self._ship_metrics()  # the last counts: the master keeps them once this worker is gone
        await lifespan.shutdown()
        self._cancel_timers()
        self.sweeper.close()
        return self.exit_code

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called (drain begun or about to)."""
        return self._stop is not None and self._stop.is_set()

    def stop(self, *, graceful: bool = True) -> None:
        """Ask the worker to drain (graceful) or to close everything now."""
        if not graceful:
            self._force = True
            for connection in list(self.connections):
                connection.abort()
        if self._stop is not None:
            self._stop.set()

    async def _drain(self) -> None:
        delay = self.config.process.shutdown_delay
        if delay > 0 and not self._force:
            # Readiness answers 503 while we still serve, so the load balancer moves away
            # before the listener closes (Kubernetes endpoint propagation).
            self.ready = False
            await asyncio.sleep(delay)
        self.draining = True
        if self.hooks is not None:
            self.hooks.draining()
        # Before the yield in _watch_transports: a response whose head goes out after this
        # says connection: close (one whose head is out keeps its promise: Protocol.shutdown).
        for connection in list(self.connections):
            connection.shutdown()
        transports_closed = await self._watch_transports()
        for server in self.servers:
            server.close()
        timeout = self.config.process.timeout_graceful_shutdown
        deadline = asyncio.get_running_loop().time() + timeout
        if transports_closed:
            await self._wait_for_transports(transports_closed, timeout)
        if self.connections:
            try:
                await asyncio.wait_for(self.all_closed.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                error_logger.warning("%d connection(s) still open after --timeout-graceful-shutdown %gs: closing them",
                                     len(self.connections), timeout)
                for connection in list(self.connections):
                    connection.abort()
        # Let cancelled tasks (requests and WebSockets alike) run their cleanup before
        # lifespan shutdown.
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _watch_transports(self) -> list[asyncio.Future[None]]:
        """Before the listeners close: one future per listener, done once every transport it
        accepted is closed (none while the drain is forced).

        The registry does not see every connection the listeners accepted: a transport joins
        it in ``connection_made``, which uvloop runs an iteration after the accept (a
        connection accepted just before the drain would be dropped unanswered when the worker
        exits), and a TLS connection joins only once its handshake is done (a failed handshake
        never tells its protocol anything). The listener's own count of open transports sees
        them all. uvloop's ``Server.wait_closed`` waits on that count, but only when called
        before ``close()`` (after it, it returns at once), hence here."""
        if self._force:
            return []
        watched: list[asyncio.Future[None]] = [asyncio.ensure_future(server.wait_closed()) for server in self.servers]
        if watched:
            await asyncio.sleep(0)  # let each wait_closed run up to its wait (and register it)
        return watched

    async def _wait_for_transports(self, closed: list[asyncio.Future[None]], timeout: float) -> None:
        """Let the connections the listeners accepted finish, within the graceful timeout: those
        not yet in the registry (accepted an iteration ago, or in a TLS handshake) get their
        first request answered with keep-alive off. A TLS handshake gives up by itself at its
        timeout (``ssl_handshake_timeout``); a failed one holds the drain not at all. The
        registered connections are waited for here too, as by the registry's wait after it."""
        _, pending = await asyncio.wait(closed, timeout=timeout)
        for future in pending:
            future.cancel()

    # ------------------------------------------------------------ timers

    def _tick_date(self) -> None:
        loop = asyncio.get_running_loop()
        self.settings.defaults.date = b"date: " + http_date(time.time()) + b"\r\n"
        # Re-arm at the next wall-clock second so the header changes when the second does.
        self._date_timer = loop.call_later(1.0 - (time.time() % 1.0) + 0.001, self._tick_date)

    def _schedule_beat(self) -> None:
        hooks = self.hooks
        if hooks is None or not hooks.beat_interval:
            return
        loop = asyncio.get_running_loop()

        interval: float = hooks.beat_interval
        metrics = self.settings.metrics
        due = loop.time()

        def beat() -> None:
            nonlocal due
            now = loop.time()
            hooks.beat()
            if metrics is not None:
                # The timer's lateness is the event loop's lag: how long a callback that was
                # due waited behind others (a blocking app, a CPU-bound burst).
                metrics.beat_lag(max(0.0, now - due))
                self._ship_metrics()
            due = now + interval
            self._beat_timer = loop.call_later(interval, beat)

        beat()

    def _ship_metrics(self) -> None:
        metrics = self.settings.metrics
        if metrics is None or self.hooks is None:
            return
        # Counted as "not HTTP": the only other kind is a WebSocket, whose module (and the
        # websockets library) a worker imports only on its first Upgrade.
        http = sum(1 for c in self.connections if isinstance(c, HttpProtocol))
        self.hooks.metrics(metrics.snapshot(open_http=http, open_ws=len(self.connections) - http,
                                            requests_served=self.requests_served,
                                            timed_out=self.requests_timed_out))

    def _cancel_timers(self) -> None:
        for timer in (self._date_timer, self._beat_timer):
            if timer is not None:
                timer.cancel()

    # ------------------------------------------------------------ signals

    def install_signal_handlers(self, *, supervised: bool) -> None:
        """SIGTERM drains. Alone, SIGINT drains and a second SIGINT forces; under a
        master, SIGINT is ignored (the master coordinates Ctrl-C) and SIGQUIT forces."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGQUIT, lambda: self.stop(graceful=False))
        loop.add_signal_handler(signal.SIGUSR1, reopen_files)
        if supervised:
            loop.add_signal_handler(signal.SIGINT, lambda: None)
        else:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self) -> None:
        error_logger.info("Shutting down (SIGTERM): finishing in-flight requests")
        self.stop()

    def _on_sigint(self) -> None:
        if self._stop is not None and self._stop.is_set():
            error_logger.info("Second interrupt: closing connections now")
            self.stop(graceful=False)
        else:
            error_logger.info("Shutting down (SIGINT): finishing in-flight requests; Ctrl-C again to force")
            self.stop()


def _new_loop() -> asyncio.AbstractEventLoop:
    # Annotated: mypyc's type check in an isolated build environment has no uvloop (an
    # untyped import there), and returning its Any fails --strict.
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


# Signals the master handles; a fresh worker starts with the default action for each.
_MASTER_SIGNALS = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGCHLD,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
)


def run_worker(
    config: Config,
    sockets: Sequence[socket.socket],
    *,
    report_fd: int,
    parent_fd: int,
    master_pid: int,
    app: ASGIApp | None = None,
    tls: Sequence[bool] = (),
) -> int:
    """A forked worker's life, after the master closed its own fds in the child.

    Post-fork setup: stop writing signals to the master's wakeup socket, restore default
    signal actions, enable ``faulthandler`` (SIGABRT from the master prints where the loop
    is stuck), become a process-group leader (so the master can stop the app's own children
    with the worker), import the app (fresh: the master never imports it, unless
    ``--preload``), create a new uvloop loop, serve, report READY after lifespan startup,
    beat from a loop timer.

    Args:
        config: the configuration.
        sockets: the listening sockets this worker serves.
        report_fd: write end of the pipe to the master (READY / BEAT / DRAINING).
        parent_fd: read end of the master's life pipe: EOF means the master is gone.
        master_pid: the master's pid, compared with ``getppid()`` on each beat.
        app: the app the master preloaded (``--preload``); None imports it here.
        tls: for each socket, whether it serves TLS.

    Returns:
        the exit code: 0, EXIT_BOOT_FAILED (lifespan startup failed, or the certificate
        did not load) or EXIT_APP_LOAD_FAILED.
    """
    import faulthandler

    from fastgate.ipc import PipeReporter, beat_interval_for

    signal.set_wakeup_fd(-1)
    for sig in _MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # The spawner forked with these blocked; a signal sent meanwhile is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
    faulthandler.enable(all_threads=True)
    # Only the master talks to systemd (NotifyAccess=main).
    os.environ.pop("NOTIFY_SOCKET", None)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    keep_heap()
    ssl_context: ssl.SSLContext | None = None
    if any(tls):
        try:
            # Read here, at each worker's start: a SIGHUP's new generation serves the
            # renewed certificate. The master checked the files just before; one changed
            # in between fails this worker's boot, and the old workers keep serving.
            ssl_context = server_context(config)
        except ConfigError as exc:
            print(f"fastgate: error: {exc}", file=sys.stderr)
            return EXIT_BOOT_FAILED
    if app is None:
        try:
            app = configured_app(config)
        except AppLoadError as exc:
            report_app_load_error(exc)
            return EXIT_APP_LOAD_FAILED

    worker: Worker | None = None

    def master_gone(how: str) -> None:
        if worker is not None and not worker.stopping:
            error_logger.warning("The master (pid %d) is gone (%s): draining and exiting", master_pid, how)
            worker.stop()

    class Reporter(PipeReporter):
        def beat(self) -> None:
            if os.getppid() != master_pid:
                master_gone("parent changed")
            super().beat()

    reporter = Reporter(report_fd, beat_interval_for(config.process.timeout_worker_healthcheck),
                        on_master_gone=lambda: master_gone("pipe closed"))
    worker = Worker(config, app, sockets, hooks=reporter, tls=tls, ssl_context=ssl_context)

    async def main() -> int:
        assert worker is not None
        loop = asyncio.get_running_loop()
        worker.install_signal_handlers(supervised=True)

        def on_parent_fd() -> None:
            try:
                data = os.read(parent_fd, 1)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(parent_fd)
                master_gone("life pipe closed")

        os.set_blocking(parent_fd, False)
        loop.add_reader(parent_fd, on_parent_fd)
        return await worker.serve()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def run_single(config: Config, bind: Callable[[Config], Sequence[Listening]]) -> int:
    """Load and serve in this one process (``--workers 0``).

    Args:
        config: the configuration.
        bind: binds the listeners (the runner passes ``supervisor.sockets.bind_all``: the
            worker layer never imports the supervisor's).
    """
    keep_heap()
    ssl_context: ssl.SSLContext | None = None
    if config.tls_enabled:
        try:
            ssl_context = server_context(config)
        except ConfigError as exc:
            print(f"fastgate: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        app = configured_app(config)
    except AppLoadError as exc:
        report_app_load_error(exc)
        return EXIT_APP_LOAD_FAILED
    try:
        listeners = bind(config)
    except BindError as exc:
        print(f"fastgate: error: {exc}", file=sys.stderr)
        return EXIT_BOOT_FAILED
    try:
        tls = listeners_tls(config, [listener.key for listener in listeners])
        worker = Worker(config, app, [listener.sock for listener in listeners], tls=tls, ssl_context=ssl_context)

        def announce() -> None:
            for listener, is_tls in zip(listeners, tls, strict=True):
                error_logger.info("Listening on %s (pid %d)", listener.describe(is_tls), os.getpid())

        async def main() -> int:
            worker.install_signal_handlers(supervised=False)
            worker.on_serving = announce
            return await worker.serve()

        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(main())
    finally:
        for listener in listeners:
            listener.close()


def configured_app(config: Config) -> ASGIApp:
    """Import the app ``config.app`` names, as a worker, ``--workers 0`` and ``--preload`` all do.

    Raises:
        AppLoadError: it could not be imported, or is not an ASGI app.
    """
    a = config.app
    return load_app(a.app, factory=a.factory, app_dir=a.app_dir, interface=a.interface)


def report_app_load_error(exc: AppLoadError) -> None:
    """Print an app load failure: the app's own traceback (if any), then one clear line."""
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, ModuleNotFoundError):
        import traceback

        traceback.print_exception(cause, file=sys.stderr)
    print(f"fastgate: error: {exc}", file=sys.stderr)
