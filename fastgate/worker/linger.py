"""Lingering close: end a connection the server closes while the client may still send.

Closing a socket with unread input makes the kernel send RST, and a client still uploading
would then often lose the response we just wrote (RFC 9112 §9.6). So: shut down our side
after the response (FIN), discard what keeps coming until the client closes, for at most
``LINGER_SECONDS``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastgate.worker.flow import READ_ALL, FlowControl

LINGER_SECONDS = 2.0


def linger(transport: Any, flow: FlowControl, owner: asyncio.BaseProtocol, loop: asyncio.AbstractEventLoop) -> None:
    """Half-close ``transport`` and discard its input until the peer closes.

    Args:
        transport: the connection's transport (not closing); everything was written to it.
        flow: its flow control (reading resumes, whatever paused it).
        owner: the protocol that gets ``connection_lost`` in the end.
        loop: the worker's loop (for the deadline).
    """
    if not transport.can_write_eof():  # e.g. TLS: no half-close
        transport.close()
        return
    transport.write_eof()
    flow.resume_reading(READ_ALL)
    transport.set_protocol(_Lingering(owner, transport, loop))


class _Lingering(asyncio.Protocol):
    """The last moments of a connection: input is discarded until the peer closes or
    LINGER_SECONDS pass; ``connection_lost`` goes to the owner."""

    def __init__(self, owner: asyncio.BaseProtocol, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.timer = loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the peer is done too: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.owner.connection_lost(exc)
