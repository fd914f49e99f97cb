"""The workers' counters as the master holds them (``--metrics-bind``, ``--control-socket``).

Each worker keeps its own counters (``fastgate.worker.metrics``) and ships a snapshot of
its cumulative totals with its heartbeat. ``MetricsStore`` keeps the latest snapshot per
live worker, and folds the last one of a worker that exited into the totals of retired
workers, so every counter is monotonic across crashes, recycles and reloads. A scrape
therefore never depends on which worker answers: the master answers.

The Prometheus side (collector and scrape endpoint) is ``fastgate.supervisor.scrape``:
only it needs prometheus-client.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("fastgate.error")

# The worker's histogram bounds (fastgate.worker.metrics.BUCKETS; the supervisor layer
# does not import the worker's).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(slots=True)
class WorkerView:
    """What the collector needs to know about a live worker besides its counters."""

    wid: int
    pid: int | None
    slot: int
    generation: int


@dataclass(slots=True)
class Totals:
    """Summed counters of the workers that exited."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    duration_sum: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)
    timed_out: int = 0

    def add(self, snap: dict[str, Any]) -> None:
        for method, klass, n in snap["r"]:
            self.requests[(str(method), str(klass))] += int(n)
        for i, n in enumerate(snap["b"][: len(self.buckets)]):
            self.buckets[i] += int(n)
        self.duration_sum += float(snap["s"])
        self.bytes_in += int(snap["i"])
        self.bytes_out += int(snap["o"])
        for status, rule, n in snap["x"]:
            self.rejections[(str(status), str(rule))] += int(n)
        self.timed_out += int(snap.get("t", 0))

    def to_json(self) -> dict[str, Any]:
        return {"r": [[m, c, n] for (m, c), n in self.requests.items()], "b": self.buckets, "s": self.duration_sum,
                "i": self.bytes_in, "o": self.bytes_out,
                "x": [[s, r, n] for (s, r), n in self.rejections.items()], "t": self.timed_out}


class MetricsStore:
    """The latest snapshot of each live worker, and the totals of those that exited."""

    def __init__(self) -> None:
        self.live: dict[int, dict[str, Any]] = {}
        self.retired = Totals()

    def update(self, wid: int, payload: bytes) -> None:
        """A METRICS message from worker ``wid`` (a malformed one is dropped)."""
        try:
            snap = json.loads(payload)
            Totals().add(snap)  # shape check: the same reads the collector will do
        except (ValueError, TypeError, KeyError, IndexError):
            logger.debug("Dropped a malformed metrics message from worker %d", wid)
            return
        self.live[wid] = snap

    def retire(self, wid: int) -> None:
        """Worker ``wid`` exited: its last counts become part of the retired totals."""
        snap = self.live.pop(wid, None)
        if snap is not None:
            self.retired.add(snap)

    def totals(self) -> Totals:
        """Retired plus live counters."""
        out = Totals()
        out.add(self.retired.to_json())
        for snap in self.live.values():
            out.add(snap)
        return out

    def to_json(self) -> dict[str, Any]:
        """The retired totals, for a master re-executed in place (the live ones come back with the next beats)."""
        return self.retired.to_json()

    def restore(self, data: dict[str, Any]) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            retired = Totals()
            retired.add(data)
            self.retired = retired
