"""What an ASGI cycle may ask of its connection: the only I/O seam above the protocol."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol


class Channel(Protocol):
    """Implemented by the asyncio protocol over its transport; tests pass a fake."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer."""

    def writelines(self, parts: list[bytes]) -> None:
        """Queue several pieces at once, without joining them (a vectored write)."""

    def drain(self) -> Awaitable[None]:
        """Await it to wait until the transport accepts more data (write backpressure)."""

    def pause_reading(self) -> None:
        """Stop reading from the peer (read backpressure)."""

    def resume_reading(self) -> None:
        """Resume reading from the peer."""

    def close(self) -> None:
        """Close after flushing what was written."""

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""

    def response_complete(self) -> None:
        """The current response ended: keep-alive bookkeeping, next pipelined request."""
