"""Worker -> master messages over a pipe: one byte each (``READY``, ``BEAT``, ``DRAINING``,
``RECYCLE``), and ``METRICS`` (with ``--metrics-bind``): one byte, a 4-byte big-endian
length, then the worker's counters as JSON.

A METRICS message is written whole or not at all: it is kept under ``PIPE_BUF`` (4096 on
Linux), so a write to the non-blocking pipe is atomic. The master keeps what it read of a
message split over two reads (``Decoder``).

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

METRICS = b"M"

MESSAGES = frozenset({READY, BEAT, DRAINING, RECYCLE})
# The largest METRICS payload written: header and payload stay under PIPE_BUF.
MAX_METRICS = 4096 - 5


def decode(data: bytes) -> list[bytes]:
    """Split what the master read from a worker pipe into one-byte messages (unknown bytes dropped)."""
    return [m for m in (data[i : i + 1] for i in range(len(data))) if m in MESSAGES]


def encode_metrics(payload: bytes) -> bytes:
    """A METRICS message around ``payload`` (at most ``MAX_METRICS`` bytes)."""
    return METRICS + len(payload).to_bytes(4, "big") + payload


class Decoder:
    """Split a worker pipe's byte stream into messages: ``(kind, payload)`` pairs.

    One-byte messages have an empty payload; METRICS carries its JSON. Unknown bytes are
    dropped; a METRICS message cut by the end of a read waits for the rest.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The complete messages in what was read so far."""
        data = self._pending + data if self._pending else data
        out: list[tuple[bytes, bytes]] = []
        i, n = 0, len(data)
        while i < n:
            kind = data[i : i + 1]
            if kind == METRICS:
                if n - i < 5:
                    break
                size = int.from_bytes(data[i + 1 : i + 5], "big")
                if size > MAX_METRICS:  # not a message we write: resynchronise on the next byte
                    i += 1
                    continue
                if n - i - 5 < size:
                    break
                out.append((METRICS, data[i + 5 : i + 5 + size]))
                i += 5 + size
                continue
            if kind in MESSAGES:
                out.append((kind, b""))
            i += 1
        self._pending = data[i:]
        return out


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

    def metrics(self, payload: bytes) -> None:
        """Ship the worker's counters (dropped, like a beat, when the pipe is full)."""
        if len(payload) <= MAX_METRICS:
            self._send(encode_metrics(payload))

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
