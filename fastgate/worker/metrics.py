"""A worker's own counters for ``--metrics-bind``, shipped to the master with the heartbeat.

Why not prometheus-client's multiprocess mode: it keeps every sample in an mmap'd file per
worker and each ``inc``/``observe`` goes through a lock and a struct pack into that file
(benchmarks/METRICS.md has the per-request cost of both). Here a response costs a few dict
and list increments in the worker's own memory; at each heartbeat the worker writes one
small JSON snapshot of its cumulative totals to the pipe it already has, and the master
serves the sum (``fastgate.supervisor.metrics``). The master keeps the last snapshot of a
worker that exited, so totals never go down; what a worker counted after its last beat is
lost when it is killed (at most one beat interval).

Labels are bounded: methods outside the standard ones count as ``OTHER``, statuses by
class (``2xx``), rejection rules by the fixed part of their reason.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from typing import Any, Final

# Seconds; the upper bounds of the duration histogram (prometheus-client's defaults).
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
MAX_RULES: Final = 64  # distinct rejection labels kept; the rest count as "other"
MAX_PAIRS: Final = 512  # distinct (method, status) pairs kept; then new ones count as OTHER


class WorkerMetrics:
    """Counters one worker keeps; ``snapshot`` is what the master receives."""

    __slots__ = ("requests", "buckets", "duration_sum", "bytes_in", "bytes_out", "rejections", "lag", "lag_max")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rejections: dict[tuple[int, str], int] = {}
        self.lag = 0.0  # the heartbeat timer's lateness at the last beat, seconds
        self.lag_max = 0.0  # the largest since the last snapshot

    def response(self, method: str, status: int, duration: float, body_bytes: int) -> None:
        """One response ended (called by ``HttpProtocol.state_changed``).

        Counted by the raw (method, status) pair, which the common case finds in the dict
        at once; labels are bounded and grouped into classes only at snapshot time.
        """
        key = (method, status)
        requests = self.requests
        try:
            requests[key] += 1
        except KeyError:
            if len(requests) >= MAX_PAIRS or method not in METHODS:
                key = ("OTHER", status if 100 <= status < 600 else 0)
            requests[key] = requests.get(key, 0) + 1
        self.buckets[bisect_left(BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.bytes_out += body_bytes

    def by_class(self) -> dict[tuple[str, str], int]:
        """Requests by method and status class (``2xx``): the labels the master serves."""
        out: dict[tuple[str, str], int] = {}
        for (method, status), n in self.requests.items():
            klass = status // 100 - 1  # -1 when no response was started (the client left): 5xx
            key = (method, STATUS_CLASSES[klass] if 0 <= klass < 5 else "5xx")
            out[key] = out.get(key, 0) + n
        return out

    def rejected(self, status: int, reason: str) -> None:
        """A request the server refused itself (parse errors, 408, 503 shedding)."""
        rule = reason.partition(":")[0].strip()[:60]
        key = (status, rule)
        rejections = self.rejections
        if key not in rejections and len(rejections) >= MAX_RULES:
            key = (status, "other")
        rejections[key] = rejections.get(key, 0) + 1

    def beat_lag(self, lag: float) -> None:
        """How late the heartbeat timer ran: the event loop's lag."""
        self.lag = lag
        if lag > self.lag_max:
            self.lag_max = lag

    def snapshot(self, *, open_http: int, open_ws: int, requests_served: int, timed_out: int = 0) -> bytes:
        """Cumulative totals and current gauges as compact JSON (the METRICS payload)."""
        data: dict[str, Any] = {
            "r": [[m, c, n] for (m, c), n in self.by_class().items()],
            "b": self.buckets,
            "s": round(self.duration_sum, 6),
            "i": self.bytes_in,
            "o": self.bytes_out,
            "x": [[status, rule, n] for (status, rule), n in self.rejections.items()],
            "l": round(self.lag, 6),
            "L": round(self.lag_max, 6),
            "h": open_http,
            "w": open_ws,
            "n": requests_served,
            "t": timed_out,
        }
        self.lag_max = self.lag
        return json.dumps(data, separators=(",", ":")).encode("ascii")
