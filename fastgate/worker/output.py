"""The one write path of both adapters: straight to the transport, or gathered for one send.

Most writes go straight to the transport. ``gather()`` collects them instead until the end
of the current loop iteration, so that many small pieces leave in one send: responses to
pipelined requests (HTTP), frames sent during one iteration (WebSocket). A ``hold``
predicate may keep gathering for one more iteration while the owner expects more (the
next pipelined response is being produced); a size bound writes what is gathered at once,
so a producer that never yields cannot pile up bytes here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# Bytes gathered before they are written anyway.
GATHER_LIMIT = 64 * 1024


class WriteBuffer:
    """Writes to one transport.

    Args:
        transport: the transport (anything with ``write`` / ``writelines`` / ``is_closing``).
        loop: the loop the end-of-iteration flush runs on.
    """

    __slots__ = ("transport", "loop", "closed", "_parts", "_size", "_renewed", "_hold")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.closed = False  # the connection is gone (or handed over): nothing is written any more
        self._parts: list[bytes] | None = None  # None: not gathering
        self._size = 0
        self._renewed = False  # gather() was asked again since the last end-of-iteration check
        self._hold: Callable[[], bool] | None = None

    @property
    def gathering(self) -> bool:
        return self._parts is not None

    def write(self, data: bytes) -> None:
        parts = self._parts
        if parts is None:
            if not self.closed:
                self.transport.write(data)
            return
        parts.append(data)
        self._size += len(data)
        if self._size >= GATHER_LIMIT:
            self._write_gathered()

    def writelines(self, parts: list[bytes]) -> None:
        """Several pieces without joining them (a vectored write), unless gathering."""
        if self._parts is None:
            if not self.closed:
                self.transport.writelines(parts)
            return
        for part in parts:
            self.write(part)

    def gather(self, hold: Callable[[], bool] | None = None) -> None:
        """Gather writes until the end of this loop iteration; at its end ``hold()`` (if
        given) may keep gathering for another iteration, as long as ``gather`` is asked
        again in each."""
        self._renewed = True
        if self._parts is None:
            self._parts = []
            self._size = 0
            self._hold = hold
            self.loop.call_soon(self._end_of_iteration)

    def flush(self) -> None:
        """Write what was gathered and stop gathering; call it before any other transport call."""
        parts = self._parts
        if parts is not None:
            self._parts = None
            self._hold = None  # (it may refer back to the owner: no reference kept)
            if parts:
                self._write(parts)

    def close(self) -> None:
        """The connection is gone: drop what was gathered, write nothing more."""
        self.closed = True
        self._parts = None
        self._hold = None

    def _write_gathered(self) -> None:
        parts = self._parts
        if parts:
            self._parts = []
            self._size = 0
            self._write(parts)

    def _write(self, parts: list[bytes]) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def _end_of_iteration(self) -> None:
        if self._parts is None:
            return
        hold = self._hold
        if self._renewed and hold is not None and hold():
            self._renewed = False
            self.loop.call_soon(self._end_of_iteration)
            return
        self.flush()
