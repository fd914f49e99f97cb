"""The two faces between a worker and its connections.

``Connection`` is what the worker asks of every connection it serves, HTTP or WebSocket:
its next deadline (polled by the ``DeadlineSweeper``), what to do when it passes, and how
to drain (``shutdown``, then ``abort`` at the drain deadline). ``Host`` is what a
connection asks of its worker: the settings, the registry it joins and leaves, the drain
state and the request counter. The ``Worker`` (``fastgate.worker.server``) is the host;
``HttpProtocol`` and ``WebSocketProtocol`` are connections. Neither side imports the
other's module, so the two can be read, and tested, apart.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from fastgate.worker.settings import ServerSettings


class Connection(Protocol):
    """One client connection, as the worker sees it."""

    deadline: float  # loop time of its next timeout, 0.0 for none (polled by the sweeper)
    task: asyncio.Task[None] | None  # the app task serving it, if any (a drain waits for it)

    def on_deadline(self) -> None:
        """The deadline passed (the sweeper calls this once)."""

    def shutdown(self) -> None:
        """Graceful drain: finish what is in flight, take nothing new."""

    def abort(self) -> None:
        """The drain deadline passed: cancel the app and drop the connection."""


class Host(Protocol):
    """The worker, as a connection sees it."""

    settings: ServerSettings
    loop: asyncio.AbstractEventLoop | None  # the worker's loop, cached by the first connection
    connections: set[Connection]  # every open connection, HTTP and WebSocket
    ready: bool  # lifespan startup is done (the readiness probe answers 200)
    draining: bool  # a graceful drain has begun: no connection is kept alive
    requests_served: int
    requests_timed_out: int  # apps cancelled by --timeout-request / --timeout-request-idle
    max_requests: int | None  # --limit-max-requests (with its jitter), or None

    def add(self, connection: Connection) -> None:
        """A connection opened (or took over a transport): the drain waits for it."""

    def discard(self, connection: Connection) -> None:
        """A connection is done (closed, and its app finished)."""

    def check_max_requests(self) -> None:
        """Called after each response once ``requests_served`` was counted up."""
