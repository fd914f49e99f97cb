"""Read and write backpressure for one transport."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Tracks whether reading/writing is paused and lets writers wait for a drain."""

    __slots__ = ("transport", "read_paused", "write_paused", "_drain_waiter")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        """Called by the transport when its write buffer passed the high-water mark."""
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release()

    def connection_lost(self) -> None:
        self.write_paused = False
        self._release()

    def _release(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if not self.write_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await waiter
