"""Metrics: the pipe framing, the worker's counters, the master's store, collector and
scrape endpoint (a real selector and sockets, no processes), and restart counts in the policy."""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastgate import ipc
from fastgate.config import parse_metrics_bind
from fastgate.errors import ConfigError
from fastgate.supervisor import metrics as sm
from fastgate.supervisor import scrape
from fastgate.supervisor.policy import ReloadRequested, WorkerBeat
from fastgate.worker.metrics import BUCKETS, MAX_PAIRS, MAX_RULES, WorkerMetrics
from tests.supervisor.test_policy import FakeSpawner
from tests.supervisor.test_selector_server import FailingListener

# ------------------------------------------------------------------ framing


def test_decoder_frames_metrics_between_one_byte_messages_across_reads() -> None:
    payload = b'{"a":1}'
    stream = b"R" + ipc.encode_metrics(payload) + b"B" + ipc.encode_metrics(b"{}") + b"xD"
    for cut in range(len(stream) + 1):  # every split point of two reads
        decoder = ipc.Decoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == [(b"R", b""), (b"M", payload), (b"B", b""), (b"M", b"{}"), (b"D", b"")], cut


def test_decoder_skips_a_length_no_worker_writes() -> None:
    decoder = ipc.Decoder()
    bogus = b"M" + (ipc.MAX_METRICS + 1).to_bytes(4, "big")
    assert decoder.feed(bogus + b"B") == [(b"B", b"")]


def test_reporter_writes_whole_metrics_messages_and_drops_oversized_ones() -> None:
    import os

    r, w = os.pipe()
    try:
        reporter = ipc.PipeReporter(w, 1.0)
        reporter.metrics(b"{}")
        reporter.metrics(b"x" * (ipc.MAX_METRICS + 1))  # would not be atomic: not written
        reporter.beat()
        assert ipc.Decoder().feed(os.read(r, 65536)) == [(b"M", b"{}"), (b"B", b"")]
    finally:
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------ worker counters


def test_worker_metrics_count_by_bounded_labels() -> None:
    m = WorkerMetrics()
    m.response("GET", 200, 0.001, 5)
    m.response("GET", 204, 0.2, 0)
    m.response("BREW", 418, 20.0, 7)  # an unknown method: OTHER; past the last bucket: +Inf
    m.response("POST", 0, 0.0, 0)  # no response was started (the client left): 5xx
    assert m.by_class() == {("GET", "2xx"): 2, ("OTHER", "4xx"): 1, ("POST", "5xx"): 1}
    assert m.buckets[0] == 2 and m.buckets[BUCKETS.index(0.25)] == 1 and m.buckets[-1] == 1
    assert m.bytes_out == 12
    for i in range(MAX_RULES + 10):
        m.rejected(400, f"rule {i}: detail")
    assert len(m.rejections) == MAX_RULES + 1 and m.rejections[(400, "other")] == 10
    for i in range(MAX_PAIRS + 50):  # a client inventing methods cannot grow the table without bound
        m.response("GET" if i % 2 else "POST", 100 + i % 500, 0.0, 0)
    assert len(m.requests) <= MAX_PAIRS + 500 and sum(m.requests.values()) == 4 + MAX_PAIRS + 50
    m.beat_lag(0.5)
    m.beat_lag(0.1)
    snap = json.loads(m.snapshot(open_http=3, open_ws=1, requests_served=4))
    assert snap["l"] == 0.1 and snap["L"] == 0.5 and snap["h"] == 3 and snap["w"] == 1 and snap["n"] == 4
    assert json.loads(m.snapshot(open_http=0, open_ws=0, requests_served=4))["L"] == 0.1  # max since last
    assert json.loads(m.snapshot(open_http=0, open_ws=0, requests_served=4, timed_out=3))["t"] == 3
    assert len(m.snapshot(open_http=0, open_ws=0, requests_served=4)) <= ipc.MAX_METRICS


# ------------------------------------------------------------------ the master's store


def snapshot(**counts: int) -> bytes:
    m = WorkerMetrics()
    for _ in range(counts.get("get", 0)):
        m.response("GET", 200, 0.003, 10)
    for _ in range(counts.get("bad", 0)):
        m.rejected(431, "header field too large")
    m.bytes_in = counts.get("bytes_in", 0)
    return m.snapshot(open_http=counts.get("open", 0), open_ws=0, requests_served=counts.get("get", 0))


def test_store_keeps_the_counts_of_exited_workers() -> None:
    store = sm.MetricsStore()
    store.update(1, snapshot(get=5, bad=1))
    store.update(2, snapshot(get=3))
    store.update(1, snapshot(get=7, bad=1))  # cumulative: replaces, never adds
    assert store.totals().requests[("GET", "2xx")] == 10
    store.retire(1)
    assert store.totals().requests[("GET", "2xx")] == 10 and store.totals().rejections[("431", "header field "
                                                                                         "too large")] == 1
    store.update(4, json.dumps({**json.loads(snapshot()), "t": 2}).encode())
    store.retire(4)
    assert store.totals().timed_out == 2
    store.update(3, snapshot(get=1))  # the replacement starts from zero
    assert store.totals().requests[("GET", "2xx")] == 11
    store.update(3, b"{not json")
    store.update(3, b'{"r": 5}')
    assert store.totals().requests[("GET", "2xx")] == 11  # malformed messages change nothing
    copy = sm.MetricsStore()
    copy.restore(json.loads(json.dumps(store.to_json())))  # across an in-place re-exec
    assert copy.totals().requests[("GET", "2xx")] == 7


def render(store: sm.MetricsStore, workers: list[sm.WorkerView], generation: int = 1,
           restarts: dict[str, int] | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(scrape.FastgateCollector(store, lambda: (workers, generation, restarts or {})))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_collector_output_parses_and_adds_up() -> None:
    store = sm.MetricsStore()
    store.update(1, snapshot(get=4, open=2, bytes_in=100))
    store.update(2, snapshot(get=6, open=1, bytes_in=50))
    store.update(9, snapshot(get=1))
    store.retire(9)
    samples = render(store, [sm.WorkerView(1, 101, 0, 2), sm.WorkerView(2, 102, 1, 2)], generation=2,
                     restarts={"crash": 1, "max-requests": 2})
    assert samples["fastgate_requests_total"] == [({"method": "GET", "status": "2xx"}, 11.0)]
    buckets = dict((lab["le"], v) for lab, v in samples["fastgate_request_duration_seconds_bucket"])
    assert buckets["0.005"] == 11 and buckets["+Inf"] == 11
    assert samples["fastgate_request_duration_seconds_count"][0][1] == 11
    assert samples["fastgate_received_bytes_total"][0][1] == 150
    assert samples["fastgate_sent_body_bytes_total"][0][1] == 110
    assert ({"kind": "http"}, 3.0) in samples["fastgate_open_connections"]
    restarts = {lab["reason"]: v for lab, v in samples["fastgate_worker_restarts_total"]}
    assert restarts == {"crash": 1, "health-check": 0, "reload": 0, "max-requests": 2, "memory": 0, "lifetime": 0}
    assert {lab["pid"] for lab, _ in samples["fastgate_event_loop_lag_seconds"]} == {"101", "102"}
    assert samples["fastgate_workers"][0][1] == 2 and samples["fastgate_generation"][0][1] == 2
    assert samples["fastgate_request_timeouts_total"][0][1] == 0


# ------------------------------------------------------------------ the scrape endpoint


class Endpoint:
    """A MetricsServer in a selector this test drives, as the master's loop would."""

    def __init__(self, address: str = "127.0.0.1:0") -> None:
        self.selector = selectors.DefaultSelector()
        store = sm.MetricsStore()
        store.update(1, snapshot(get=2))
        self.server = scrape.MetricsServer(address, self.selector, scrape.FastgateCollector(
            store, lambda: ([sm.WorkerView(1, 42, 0, 1)], 1, {})), "metrics")

    def pump(self, rounds: int = 20, now: float | None = None) -> None:
        for _ in range(rounds):
            for key, _ in self.selector.select(0.01):
                self.server.on_ready(key.fd, now if now is not None else time.monotonic())
        self.server.expire(now if now is not None else time.monotonic())

    def ask(self, request: bytes) -> bytes:
        with socket.create_connection(self.server.sock.getsockname()[:2], timeout=5) as sock:
            sock.sendall(request)
            data = b""
            for _ in range(200):
                self.pump(1)
                try:
                    sock.settimeout(0.01)
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return data
                data += chunk
        raise AssertionError("no answer")

    def close(self) -> None:
        self.server.close()
        self.selector.close()


@pytest.fixture
def endpoint() -> Endpoint:
    e = Endpoint()
    yield e  # type: ignore[misc]
    e.close()


def test_endpoint_serves_metrics_and_refuses_the_rest(endpoint: Endpoint) -> None:
    answer = endpoint.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
    assert b'fastgate_requests_total{method="GET",status="2xx"} 2.0' in body
    head_only = endpoint.ask(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
    assert endpoint.ask(b"GET /?x HTTP/1.1\n\n").startswith(b"HTTP/1.1 200 ")
    assert endpoint.ask(b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert endpoint.ask(b"DELETE /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert endpoint.ask(b"\x16\x03\x01 tls?\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert endpoint.ask(b"GET /metrics " + b"a" * (scrape.MAX_REQUEST + 10)) == b""  # no head end: dropped
    assert not endpoint.server.clients


def test_endpoint_drops_slow_clients_at_their_deadline_and_bounds_their_number(endpoint: Endpoint) -> None:
    address = endpoint.server.sock.getsockname()[:2]
    silent = [socket.create_connection(address, timeout=5) for _ in range(scrape.MAX_CLIENTS + 4)]
    try:
        endpoint.pump(now=0.0)
        assert len(endpoint.server.clients) == scrape.MAX_CLIENTS  # the rest were closed at accept
        endpoint.pump(1, now=scrape.CLIENT_TIMEOUT - 0.1)
        assert len(endpoint.server.clients) == scrape.MAX_CLIENTS
        endpoint.pump(1, now=scrape.CLIENT_TIMEOUT)
        assert not endpoint.server.clients
        assert all(sock.recv(1) == b"" for sock in silent)
    finally:
        for sock in silent:
            sock.close()


def test_endpoint_logs_a_failed_accept(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    # Caught at the logger: another test may have reconfigured fastgate's logging.
    warnings: list[str] = []
    monkeypatch.setattr(scrape.logger, "warning", lambda msg, *args: warnings.append(msg % args))
    real = endpoint.server.sock
    monkeypatch.setattr(endpoint.server, "sock", FailingListener(real))
    endpoint.server.on_ready(real.fileno(), 0.0)
    assert warnings == [f"Metrics listener: accept failed: {OSError(errno.EMFILE, 'Too many open files')}"]
    assert not endpoint.server.clients


def test_endpoint_on_a_unix_socket_replaces_a_stale_file_and_removes_it(tmp_path: object) -> None:
    path = f"{tmp_path}/m.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    e = Endpoint(f"unix:{path}")
    assert e.server.display == f"unix:{path}"
    e.close()
    import os

    assert not os.path.exists(path)


@pytest.mark.parametrize("text,expected", [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:0", ("::1", 0)),
                                           (":9100", ("0.0.0.0", 9100)), ("unix:/run/m.sock", "/run/m.sock")])
def test_metrics_bind_forms(text: str, expected: object) -> None:
    assert parse_metrics_bind(text) == expected


@pytest.mark.parametrize("text", ["9100", "host:", "host:99999", "unix:", "host:port"])
def test_metrics_bind_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-bind"):
        parse_metrics_bind(text)


# ------------------------------------------------------------------ restarts by reason (policy)


def test_policy_counts_restarts_by_reason() -> None:
    f = FakeSpawner(workers=2, healthcheck_timeout=3.0, graceful_timeout=1.0)
    a, b = f.boot(2)
    f.exited(a, -9)
    assert f.sup.restarts == {"crash": 1}
    f.advance(0.2)  # the crashed slot is refilled
    new = [p for p in f.live_pids() if p != b][0]
    f.ready(new)
    f.feed(WorkerBeat(f.wid[new]))
    f.advance(3.0)  # b sent no beat for 3 s: aborted
    f.exited(b, -6)
    assert f.sup.restarts == {"crash": 1, "health-check": 1}
    for pid in f.live_pids():
        if pid != new:
            f.ready(pid)
    f.feed(ReloadRequested())
    fresh = [p for p in f.live_pids() if p not in (new,) and f.sup.workers[f.wid[p]].generation == 2]
    f.ready(*fresh)
    assert f.sup.restarts["reload"] == 2
    restored = type(f.sup).restore(json.loads(json.dumps(f.sup.snapshot())))
    assert restored.restarts == f.sup.restarts
