"""Read and write backpressure for one transport.

Reading can be paused for several independent reasons at once (the app has not caught up
with the request body, a pipelined request waits its turn, the peer does not read what we
write). Each reason is a bit; the transport reads again only once no bit is left, so one
part of the code resuming for its own reason never undoes another's pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

# Why reading is paused.
READ_BACKLOG = 1  # received data waits for the app (request body buffer, WebSocket queue)
READ_PIPELINE = 2  # a pipelined request waits for the response before it
READ_HANDSHAKE = 4  # bytes after a WebSocket upgrade wait for the app's decision
READ_OUTPUT = 8  # the peer is not reading our output (the transport paused writing)
READ_ALL = READ_BACKLOG | READ_PIPELINE | READ_HANDSHAKE | READ_OUTPUT


class FlowControl:
    """Tracks why reading is paused and whether writing is, and lets writers wait for a drain.

    Pausing reading while the transport's write buffer is full bounds what a peer that
    sends without reading can make us hold: pongs to a ping flood, responses to a flood of
    pipelined requests.
    """

    __slots__ = ("transport", "write_paused", "read_block", "_drain_waiter", "_ready")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.write_paused = False
        # Why reading is paused: the READ_* bits set (0: reading). Read it, never write it:
        # pause_reading / resume_reading are the only writers.
        self.read_block = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None  # a finished future: drain() when nothing waits

    @property
    def read_paused(self) -> bool:
        return self.read_block != 0

    def pause_reading(self, reason: int = READ_BACKLOG) -> None:
        if not self.read_block:
            self.transport.pause_reading()
        self.read_block |= reason

    def resume_reading(self, reason: int = READ_BACKLOG) -> None:
        block = self.read_block
        if block & reason:
            self.read_block = block = block & ~reason
            if not block:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        """Called by the transport when its write buffer passed the high-water mark."""
        self.write_paused = True
        self.pause_reading(READ_OUTPUT)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume_reading(READ_OUTPUT)
        self._release()

    def connection_lost(self) -> None:
        self.write_paused = False
        self.read_block = 0
        self._release()

    def _release(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def drain(self) -> Awaitable[None]:
        """Await it to wait until the transport accepts more data.

        When writing is not paused (nearly always) this is a future that is already
        finished, made once per connection: awaiting it returns at once, without a coroutine
        per call (an app sending a WebSocket message or a body chunk awaits one each time).
        """
        if not self.write_paused and not self.transport.is_closing():
            ready = self._ready
            if ready is None:
                ready = self._ready = asyncio.get_running_loop().create_future()
                ready.set_result(None)
            return ready
        return self._wait()

    async def _wait(self) -> None:
        if not self.write_paused:
            # The transport is closing: connection_lost comes in a later loop iteration.
            # Yield so that it can run: an app sending in a loop would otherwise spin here,
            # never suspended and never told the peer is gone (asyncio's StreamWriter.drain
            # yields for the same reason).
            await asyncio.sleep(0)
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
        await waiter
