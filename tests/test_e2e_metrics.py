"""--metrics-bind end to end: a 2-worker server under load, scraped and parsed with
prometheus-client's own parser; counters add up and survive a worker being killed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.server import ServerProcess, read_response, recv_until_closed, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.apps:http_app"
Serve = Callable[..., ServerProcess]
METRICS_RE = re.compile(r"Metrics on (http://\S+|unix:\S+)")


def scrape_text(server: ServerProcess) -> str:
    url = METRICS_RE.search(server.output)
    assert url is not None
    if url.group(1).startswith("unix:"):
        transport = httpx.HTTPTransport(uds=url.group(1)[5:])
        with httpx.Client(transport=transport) as client:
            response = client.get("http://metrics/metrics", timeout=5)
    else:
        response = httpx.get(url.group(1), timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")  # the exposition format
    return response.text


def scrape(server: ServerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by name, parsed by prometheus-client."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(scrape_text(server)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def load(server: ServerProcess, count: int, threads: int = 4) -> None:
    """``count`` GETs from ``threads`` clients, each on a new connection (both workers answer)."""
    def run(n: int) -> None:
        for _ in range(n):
            with server.connect() as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert recv_until_closed(sock).startswith(b"HTTP/1.1 200 ")

    workers = [threading.Thread(target=run, args=(count // threads,)) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not any(t.is_alive() for t in workers)


def worker_pids(server: ServerProcess) -> list[int]:
    return [int(p) for p in re.findall(r"Worker (\d+) \(slot \d+, generation \d+\) ready", server.output)]


def test_counters_add_up_across_workers_and_survive_a_kill(serve: Serve) -> None:
    server = serve(APP, "--workers", "2", "--metrics-bind", "127.0.0.1:0", "--timeout-worker-healthcheck", "1",
                   "--no-access-log")
    server.wait_line("All 2 worker")
    load(server, 200)
    wait_for(lambda: value(scrape(server), "fastgate_requests_total", method="GET", status="2xx") == 200,
             what="200 requests counted")
    samples = scrape(server)
    assert value(samples, "fastgate_request_duration_seconds_count") == 200
    assert value(samples, "fastgate_request_duration_seconds_bucket", le="+Inf") == 200
    assert value(samples, "fastgate_sent_body_bytes_total") == 200 * len(b"Hello, world!")
    assert value(samples, "fastgate_received_bytes_total") > 200 * 30
    assert value(samples, "fastgate_workers") == 2 and value(samples, "fastgate_generation") == 1
    lags = samples["fastgate_event_loop_lag_seconds"]
    assert len(lags) == 2 and all(v >= 0 for _, v in lags)
    # Both workers served (new connections spread over the per-slot sockets): the sum is
    # the master's, not one worker's.
    pids = {lab["pid"] for lab, _ in lags}
    assert pids == {str(p) for p in worker_pids(server)}

    # Rejections by status and rule.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"x-big: " + b"a" * 9000 + b"\r\n\r\n")
        recv_until_closed(sock)
    with server.connect() as sock:
        sock.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        recv_until_closed(sock)
    wait_for(lambda: value(scrape(server), "fastgate_rejections_total", status="431") == 1
             and value(scrape(server), "fastgate_rejections_total", status="414") == 1, what="431 and 414 counted")

    victim = int(lags[0][0]["pid"])
    os.kill(victim, signal.SIGKILL)
    server.wait_line(rf"Worker {victim} exited unexpectedly")
    samples = scrape(server)
    assert value(samples, "fastgate_requests_total") == 200  # the dead worker's counts are kept
    assert value(samples, "fastgate_worker_restarts_total", reason="crash") == 1
    wait_for(lambda: value(scrape(server), "fastgate_workers") == 2 and len(worker_pids(server)) == 3,
             what="the replacement")
    load(server, 100)
    wait_for(lambda: value(scrape(server), "fastgate_requests_total", method="GET", status="2xx") == 300,
             what="300 requests counted")
    assert value(scrape(server), "fastgate_rejections_total") == 2


def test_counts_of_a_graceful_reload_are_kept(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "metrics.sock")
    server = serve(APP, "--workers", "2", "--metrics-bind", f"unix:{path}", "--timeout-worker-healthcheck", "1",
                   "--no-access-log")
    server.wait_line("All 2 worker")
    load(server, 40)
    with httpx.Client() as client:  # an app error (500) and a POST count under their own labels
        assert client.get(server.url + "/raise", timeout=5).status_code == 500
        assert client.post(server.url + "/echo", content=b"x" * 10, timeout=5).status_code == 200
    wait_for(lambda: value(scrape(server), "fastgate_requests_total") == 42, what="42 requests")
    assert value(scrape(server), "fastgate_requests_total", method="GET", status="5xx") == 1
    assert value(scrape(server), "fastgate_requests_total", method="POST", status="2xx") == 1
    server.signal(signal.SIGHUP)
    server.wait_line("Reload complete")
    wait_for(lambda: len(re.findall(r"Worker \d+ exited", server.output)) >= 2, what="old workers gone")
    samples = scrape(server)
    # The retiring workers sent their last counts as they drained.
    assert value(samples, "fastgate_requests_total") == 42
    assert value(samples, "fastgate_worker_restarts_total", reason="reload") == 2
    assert value(samples, "fastgate_generation") == 2
    server.stop()
    assert not os.path.exists(path)


def test_scrape_endpoint_answers_only_metrics_and_survives_hostile_clients(serve: Serve) -> None:
    server = serve(APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0")
    url = METRICS_RE.search(server.output)
    assert url is not None
    host, port = re.match(r"http://([\d.]+):(\d+)", url.group(1)).groups()  # type: ignore[union-attr]
    address = (host, int(port))
    assert _status(address, b"POST /metrics HTTP/1.1\r\n\r\n") == 405
    assert _status(address, b"GET /nope HTTP/1.1\r\n\r\n") == 404
    assert _status(address, b"garbage\r\n\r\n") == 400
    with socket.create_connection(address, timeout=10) as sock:  # a head without end, past the bound
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nx: " + b"a" * 20000)
        assert recv_until_closed(sock) == b""  # dropped, nothing answered
    # More than MAX_CLIENTS, sending nothing.
    silent = [socket.create_connection(address, timeout=10) for _ in range(20)]
    try:
        # The silent clients hold every slot until their deadline drops them; a scrape
        # meanwhile is shed at accept (not queued behind them), and works again after.
        wait_for(lambda: _status(address, b"GET /metrics HTTP/1.1\r\n\r\n") == 200, timeout=15, what="a scrape")
        # The silent ones were closed by the master, not by us.
        assert all(sock.recv(1) == b"" for sock in silent)
    finally:
        for sock in silent:
            sock.close()
    # The master kept serving the app throughout.
    assert httpx.get(server.url + "/", timeout=5).status_code == 200


def _status(address: tuple[str, int], request: bytes) -> int:
    try:
        with socket.create_connection(address, timeout=3) as sock:
            sock.sendall(request)
            return read_response(sock)[0]
    except (ConnectionError, OSError):
        return 0


def test_single_process_mode_says_metrics_need_a_master(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--metrics-bind", "127.0.0.1:0")
    server.wait_line("--metrics-bind and --control-socket need a master")
    assert "Metrics on" not in server.output
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_open_websockets_and_http_connections_are_gauged(serve: Serve) -> None:
    server = serve("tests.ws.apps:app", "--workers", "2", "--metrics-bind", "127.0.0.1:0",
                   "--timeout-worker-healthcheck", "1")
    server.wait_line("All 2 worker")
    idle = server.connect()  # an HTTP connection that sent nothing yet
    try:
        with connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            wait_for(lambda: value(scrape(server), "fastgate_open_connections", kind="websocket") == 1
                     and value(scrape(server), "fastgate_open_connections", kind="http") == 1,
                     what="one WebSocket and one HTTP connection open")
        idle.close()
        wait_for(lambda: value(scrape(server), "fastgate_open_connections") == 0, what="all closed")
    finally:
        idle.close()
