"""Worker -> master messages over a pipe: one byte each (``READY``, ``BEAT``, ``DRAINING``,
``RECYCLE``).

One byte per message means a read never sees half a message, and a write of one byte to a
pipe is atomic. The worker's end is non-blocking: if the master is slow and the pipe is full,
a beat is dropped (the next one will do); if the master is gone, the write fails with EPIPE
and the worker drains.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

READY = b"R"
BEAT = b"B"
DRAINING = b"D"
# The worker reached --limit-max-requests and keeps serving: the master starts its
# replacement, and tells it to drain once the replacement is ready.
RECYCLE = b"L"

MESSAGES = frozenset({READY, BEAT, DRAINING, RECYCLE})


def decode(data: bytes) -> list[bytes]:
    """Split what the master read from a worker pipe into messages (unknown bytes dropped)."""
    return [m for m in (data[i : i + 1] for i in range(len(data))) if m in MESSAGES]


def beat_interval_for(healthcheck_timeout: float) -> float:
    """Beat often enough that a few lost beats never look like a hang."""
    return max(0.05, min(5.0, healthcheck_timeout / 4))


class PipeReporter:
    """A ``WorkerHooks`` implementation writing to the master's pipe.

    Args:
        fd: the write end of the pipe (made non-blocking here).
        beat_interval: seconds between heartbeats.
        on_master_gone: called (once) when a write finds the pipe closed.
    """

    def __init__(self, fd: int, beat_interval: float, on_master_gone: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.beat_interval: float | None = beat_interval
        self.on_master_gone = on_master_gone
        self._gone = False
        self._recycling = False
        os.set_blocking(fd, False)

    def ready(self) -> None:
        self._send(READY)

    def beat(self) -> None:
        # Once recycling was asked for, every beat repeats it: a RECYCLE lost to a full pipe
        # would otherwise leave the worker serving past its limit for good.
        self._send(BEAT + RECYCLE if self._recycling else BEAT)

    def draining(self) -> None:
        self._send(DRAINING)

    def recycle(self) -> None:
        self._recycling = True
        self._send(RECYCLE)

    def _send(self, message: bytes) -> None:
        if self._gone:
            return
        try:
            os.write(self.fd, message)
        except BlockingIOError:
            pass  # the master is busy; the next beat will get through
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                self._gone = True
                if self.on_master_gone is not None:
                    self.on_master_gone()
            else:
                raise
