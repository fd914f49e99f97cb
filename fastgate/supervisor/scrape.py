"""Prometheus exposition by the master (``--metrics-bind``): a collector over the
``MetricsStore`` and the scrape endpoint.

``MetricsServer`` is one more fd in the master's selector (``selector_server.SelectorServer``,
shared with the control socket): a non-blocking listener and, per scraper, a non-blocking
socket with a deadline and a bounded request buffer. A slow
or hostile scraper costs the master one ``recv``/``send`` per readiness and is dropped at
its deadline; at most ``MAX_CLIENTS`` are served at once. The text is rendered by
prometheus-client's exposition code from a custom collector (no registry of live metric
objects: the master holds plain numbers).
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from fastgate.config import parse_metrics_bind
from fastgate.supervisor.metrics import BUCKETS, MetricsStore, WorkerView
from fastgate.supervisor.selector_server import Client, SelectorServer, unix_listener

logger = logging.getLogger("fastgate.error")

MAX_CLIENTS = 16  # scrapers served at once; more are closed at accept
MAX_REQUEST = 8192  # bytes of request head read before giving up
CLIENT_TIMEOUT = 5.0  # seconds a scraper has to send its request and read the answer


class FastgateCollector(Collector):
    """Turns the store and the policy's facts into metric families at each scrape.

    Args:
        store: the workers' counters.
        facts: returns the live workers, the current generation and the restart counts
            by reason (read from the policy by the master).
    """

    def __init__(self, store: MetricsStore,
                 facts: Callable[[], tuple[list[WorkerView], int, dict[str, int]]]) -> None:
        self.store = store
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        store = self.store
        totals = store.totals()
        workers, generation, restarts = self.facts()

        requests = CounterMetricFamily("fastgate_requests", "HTTP responses sent, by method and status class.",
                                       labels=["method", "status"])
        for (method, klass), n in sorted(totals.requests.items()):
            requests.add_metric([method, klass], n)
        yield requests

        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*(repr(b) for b in BUCKETS), "+Inf"), totals.buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily("fastgate_request_duration_seconds",
                                    "Time from the request head to the end of the response.",
                                    buckets=cumulative, sum_value=round(totals.duration_sum, 6))

        yield CounterMetricFamily("fastgate_received_bytes", "Bytes read from HTTP connections.",
                                  value=totals.bytes_in)
        yield CounterMetricFamily("fastgate_sent_body_bytes", "HTTP response body bytes sent.",
                                  value=totals.bytes_out)

        rejections = CounterMetricFamily("fastgate_rejections",
                                         "Requests refused by the server itself, by status and rule.",
                                         labels=["status", "rule"])
        for (status, rule), n in sorted(totals.rejections.items()):
            rejections.add_metric([status, rule], n)
        yield rejections

        yield CounterMetricFamily("fastgate_request_timeouts", "Apps cancelled by --timeout-request or "
                                  "--timeout-request-idle.", value=totals.timed_out)

        open_connections = GaugeMetricFamily("fastgate_open_connections", "Open client connections.",
                                             labels=["kind"])
        live = [store.live[w.wid] for w in workers if w.wid in store.live]
        open_connections.add_metric(["http"], sum(int(s.get("h", 0)) for s in live))
        open_connections.add_metric(["websocket"], sum(int(s.get("w", 0)) for s in live))
        yield open_connections

        restarted = CounterMetricFamily("fastgate_worker_restarts",
                                        "Workers replaced, by reason (crash, health-check, reload, max-requests, "
                                        "memory, lifetime).", labels=["reason"])
        for reason in ("crash", "health-check", "reload", "max-requests", "memory", "lifetime"):
            restarted.add_metric([reason], restarts.get(reason, 0))
        yield restarted

        lag = GaugeMetricFamily("fastgate_event_loop_lag_seconds",
                                "How late each worker's heartbeat timer ran at its last beat.",
                                labels=["pid", "slot"])
        lag_max = GaugeMetricFamily("fastgate_event_loop_lag_max_seconds",
                                    "The largest heartbeat lateness between two beats.", labels=["pid", "slot"])
        for w in workers:
            snap = store.live.get(w.wid)
            if snap is not None and w.pid is not None:
                lag.add_metric([str(w.pid), str(w.slot)], float(snap.get("l", 0.0)))
                lag_max.add_metric([str(w.pid), str(w.slot)], float(snap.get("L", 0.0)))
        yield lag
        yield lag_max

        yield GaugeMetricFamily("fastgate_workers", "Worker processes alive.", value=len(workers))
        yield GaugeMetricFamily("fastgate_generation", "The current worker generation (one per reload).",
                                value=generation)


class MetricsServer(SelectorServer[Client]):
    """The master's scrape endpoint: a listener and its clients, all in the master's selector.

    Args:
        address: ``--metrics-bind`` (``HOST:PORT`` or ``unix:PATH``).
        selector: the master's selector; this registers its fds with data ``tag``.
        collector: renders the metrics.
        tag: the selector data marking this server's fds (the key's fd says which).
    """

    def __init__(self, address: str, selector: selectors.BaseSelector, collector: Collector, tag: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        target = parse_metrics_bind(address)
        unix_path: str | None = None
        if isinstance(target, str):
            sock = unix_listener(target)
            unix_path = target
            self.display = f"unix:{target}"
        else:
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(target)
            host, port = sock.getsockname()[:2]
            self.display = f"http://[{host}]:{port}/metrics" if family == socket.AF_INET6 else \
                f"http://{host}:{port}/metrics"
        sock.listen(64)
        super().__init__(sock, selector, tag, max_clients=MAX_CLIENTS, max_request=MAX_REQUEST,
                         timeout=CLIENT_TIMEOUT, unix_path=unix_path)

    # ------------------------------------------------------------ the protocol

    def _new_client(self, sock: socket.socket, deadline: float) -> Client:
        return Client(sock, deadline)

    def _complete(self, inbuf: bytes) -> bool:
        return b"\r\n\r\n" in inbuf or b"\n\n" in inbuf

    def _on_readable(self, fd: int, client: Client, now: float) -> None:
        request = self._receive(fd, client)
        if request is not None:
            self._send(fd, client, self._answer(request))

    def _accept_failed(self, exc: OSError) -> None:
        logger.warning("Metrics listener: accept failed: %s", exc)

    def _answer(self, request: bytes) -> bytes:
        line = request.split(b"\n", 1)[0].split()
        if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
            return _response(400, b"text/plain", b"bad request\n")
        method, target = line[0], line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"text/plain", b"method not allowed\n", extra=b"allow: GET, HEAD\r\n")
        if target not in (b"/metrics", b"/"):
            return _response(404, b"text/plain", b"not found: try /metrics\n")
        body = generate_latest(self.registry)
        return _response(200, CONTENT_TYPE_LATEST.encode("ascii"), body, head_only=method == b"HEAD")


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _response(status: int, content_type: bytes, body: bytes, *, extra: bytes = b"", head_only: bool = False) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n"
            % (status, _REASONS[status], content_type, len(body), extra)) + (b"" if head_only else body)
