"""What an ASGI cycle may ask of its connection: the only seam between asgi/ and the adapters."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol


class Channel(Protocol):
    """Implemented by both asyncio protocols (HTTP and WebSocket); tests pass a fake.

    The cycles share a sans-I/O object with their connection (``H1Connection``,
    ``WebSocketSession``): they move it, and ``state_changed`` asks the connection to act on
    where it now stands. Nothing comes back through the channel: the connection reads what
    it needs from the sans-I/O object (and the HTTP cycle's ``status`` / ``body_bytes``).
    """

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer."""

    def writelines(self, parts: list[bytes]) -> None:
        """Queue several pieces at once, without joining them (a vectored write)."""

    def drain(self) -> Awaitable[None]:
        """Await it to wait until the transport accepts more data (write backpressure)."""

    def pause_reading(self) -> None:
        """Stop reading from the peer (read backpressure); the connection owns the pause."""

    def resume_reading(self) -> None:
        """Lift the pause ``pause_reading`` set (other reasons to pause may remain)."""

    def close(self) -> None:
        """Close after flushing what was written."""

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""

    def state_changed(self) -> None:
        """The cycle moved the shared sans-I/O object: an HTTP response ended (the next
        request may go, or the connection closes); a WebSocket session has output, events
        or a new state (write, deliver, arm the timers)."""


class HTTPChannel(Channel, Protocol):
    """What the HTTP cycle asks besides: sending a file (``http.response.pathsend``)."""

    def send_file(self, fd: int, count: int) -> Awaitable[int]:
        """Send ``count`` bytes of the open file ``fd`` from its start, after what was written;
        the result is how many went out, fewer when the file ended early or the peer left.
        Zero copy where the connection allows it."""
