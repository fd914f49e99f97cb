"""Per-connection deadlines checked by one periodic timer per worker.

A ``loop.call_later`` per request (arm the keep-alive timer after each response, cancel
it when the next request arrives) costs a timer allocation, a heap push and a cancel:
about 1.5 µs of the ~20 µs a small keep-alive request costs in all. Instead each
connection stores a deadline (loop time; 0.0 for none), which is one float assignment on
the hot path, and this sweeper, running only while connections are open, fires the ones
that passed. A deadline fires at most ``interval`` late, which the interval (a fraction of
the shortest timeout, at most 1 s) keeps small next to the timeouts themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Protocol


class HasDeadline(Protocol):
    deadline: float

    def on_deadline(self) -> None: ...


def sweep_interval(*timeouts: float) -> float:
    """A quarter of the shortest positive timeout, between 10 ms and 1 s."""
    positive = [t for t in timeouts if t > 0]
    if not positive:
        return 1.0
    return min(1.0, max(0.01, min(positive) / 4))


class DeadlineSweeper:
    """Fires ``on_deadline()`` on every connection whose ``deadline`` has passed.

    Args:
        connections: the live set of connections (the worker's registry).
        interval: seconds between sweeps.
    """

    __slots__ = ("connections", "interval", "_handle")

    def __init__(self, connections: Collection[HasDeadline], interval: float) -> None:
        self.connections = connections
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a sweep is scheduled (called when a connection opens)."""
        if self._handle is None:
            self._handle = loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = loop.time()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.on_deadline()
        if self.connections:
            self._handle = loop.call_later(self.interval, self._sweep, loop)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
