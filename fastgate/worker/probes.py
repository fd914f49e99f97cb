"""``--health-path`` and ``--ready-path``: requests the server answers itself, without the app.

The health probe says the worker's loop runs (200 while it can answer at all); the
readiness probe says it wants traffic (503 before lifespan startup completed and while
draining, so a load balancer moves away first). The answer goes out once the request is
fully read, and keeps the connection reusable like any response.
"""

from __future__ import annotations

from fastgate.http.h1 import H1Connection

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class Probes:
    """The probe paths of a worker (raw request paths, as sent)."""

    __slots__ = ("health", "ready")

    def __init__(self, health: bytes | None, ready: bytes | None) -> None:
        self.health = health
        self.ready = ready

    @classmethod
    def from_paths(cls, health: str | None, ready: str | None) -> Probes | None:
        """The probes for the configured paths; None when neither is set (checked per request)."""
        if not health and not ready:
            return None
        return cls(health.encode() if health else None, ready.encode() if ready else None)

    def status(self, raw_path: bytes, serving: bool) -> int:
        """The status to answer ``raw_path`` with, or 0 when it is not a probe.

        Args:
            raw_path: the request's path.
            serving: the worker is ready and not draining.
        """
        if raw_path == self.health:
            return 200
        if raw_path == self.ready:
            return 200 if serving else 503
        return 0


def text_response(conn: H1Connection, status: int, body: bytes) -> bytes:
    """A complete plain-text response the server gives itself (a probe, a shed request)."""
    return conn.start_response(status, _TEXT, body)


def probe_response(conn: H1Connection, status: int) -> bytes:
    """The complete answer to a probe."""
    return text_response(conn, status, b"OK\n" if status == 200 else b"Unavailable\n")
