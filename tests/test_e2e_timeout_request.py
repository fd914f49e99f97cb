"""``--timeout-request`` and ``--timeout-request-idle`` on a real server (issue 16 item 3).

An app past its time is cancelled: 503 when nothing of its response went out, a closed
connection when part of it did; one log line either way; the worker and the other
connections go on. Streams held to ``--timeout-request-idle`` live as long as they send.
WebSocket connections are exempt.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import pytest
from websockets.sync.client import connect as ws_connect

from tests.server import ServerProcess, read_response, recv_until_closed

pytestmark = pytest.mark.e2e

APP = "tests.slow_apps:app"
Serve = Callable[..., ServerProcess]


def get(server: ServerProcess, target: str, method: str = "GET") -> bytes:
    """Send one request; everything the server sent until it closed (or 15 s passed)."""
    with server.connect(timeout=15) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return recv_until_closed(sock)


def fast_ok(server: ServerProcess) -> None:
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert (status, body) == (200, b"ok")


def test_an_app_past_its_time_gets_503_and_the_worker_goes_on(serve: Serve) -> None:
    server = serve(APP, "--workers", "1", "--timeout-request", "0.3")
    done: list[bytes] = []
    slow = threading.Thread(target=lambda: done.append(get(server, "/sleep?s=60")))
    slow.start()
    # Other connections are served while the slow one waits for its deadline.
    for _ in range(3):
        fast_ok(server)
    slow.join(20)
    assert not slow.is_alive()
    head, _, body = done[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), done
    assert b"\r\nconnection: close" in head.lower()
    server.wait_line(re.compile(r"Request timed out: GET /sleep from 127\.0\.0\.1:\d+ took 0\.\d+s "
                                r"\(--timeout-request\), answered 503"))
    server.wait_line(re.compile(r'"GET /sleep\?s=60 HTTP/1\.1" 503'))
    fast_ok(server)  # the same worker answers
    assert "Exception in ASGI application" not in server.output


def test_a_given_but_unsent_head_is_still_answered_503(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.3")
    assert get(server, "/start-only").startswith(b"HTTP/1.1 503 ")


def test_a_head_request_gets_its_503_without_a_body(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.3")
    data = get(server, "/sleep", method="HEAD")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and body == b""


def test_a_started_response_is_cut_by_closing_the_connection(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.3")
    data = get(server, "/partial")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
    assert b"first;" in body and not body.endswith(b"0\r\n\r\n")  # truncated: no last chunk
    server.wait_line("connection closed mid-response")


def test_without_the_idle_limit_the_total_limit_cuts_a_stream(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.5")
    data = get(server, "/stream?n=40&every=0.1")  # 4 s of sending, cut at 0.5 s
    assert data.startswith(b"HTTP/1.1 200 ") and b"chunk0;" in data and b"end" not in data


def test_with_the_idle_limit_a_stream_outlives_the_total_limit(serve: Serve) -> None:
    # The total limit gives the app a second to start (a loaded machine may take a while),
    # and the stream runs past it.
    server = serve(APP, "--workers", "0", "--timeout-request", "1", "--timeout-request-idle", "1")
    with server.connect(timeout=15) as sock:
        sock.sendall(b"GET /stream?n=16&every=0.1 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body, _ = read_response(sock)  # 1.6 s of sending, each chunk within 1 s
    assert status == 200 and body == b"".join(b"chunk%d;" % i for i in range(16)) + b"end"
    assert "Request timed out" not in server.output


def test_the_idle_limit_cuts_a_stream_that_goes_quiet(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "1", "--timeout-request-idle", "0.5")
    data = get(server, "/stream?n=8&every=0.05&gap_at=3&gap=30")
    assert b"chunk2;" in data and b"chunk3;" not in data and not data.endswith(b"0\r\n\r\n")
    server.wait_line(re.compile(r"GET /stream from .* sent nothing for 0\.\d+s \(--timeout-request-idle\), "
                                r"connection closed mid-response"))


def test_the_idle_limit_alone_bounds_the_wait_for_a_response(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request-idle", "0.3")
    assert get(server, "/sleep").startswith(b"HTTP/1.1 503 ")
    server.wait_line(r"\(--timeout-request-idle\), answered 503")


def test_the_limit_is_per_request_not_per_connection(serve: Serve) -> None:
    # Each request well inside the limit (a loaded machine may run the 0.1 s sleep late),
    # the connection older than it.
    server = serve(APP, "--workers", "0", "--timeout-request", "1", "--timeout-keep-alive", "30")
    with server.connect(timeout=10) as sock:
        buf = bytearray()
        for _ in range(2):
            sock.sendall(b"GET /sleep?s=0.1 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body, buf = read_response(sock, buf)
            assert (status, body) == (200, b"ok")
            # Idle past the request limit: only the keep-alive deadline applies between requests.
            time.sleep(1.1)
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock, buf)[:3:2] == (200, b"ok")


def test_pipelined_requests_behind_a_timed_out_one_are_not_answered(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.3")
    with server.connect(timeout=15) as sock:
        sock.sendall(b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 503 ") and data.count(b"HTTP/1.1") == 1
    fast_ok(server)


def test_an_app_that_ignores_its_cancellation_gets_an_oserror_and_nothing_is_logged(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.3")
    assert get(server, "/swallow").startswith(b"HTTP/1.1 503 ")
    server.wait_line("swallow: send raised ClientDisconnected")
    fast_ok(server)
    assert "Exception in ASGI application" not in server.output


def test_websockets_are_exempt(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request", "0.2", "--timeout-request-idle", "0.2")
    with ws_connect(f"ws://{server.host}:{server.port}/", open_timeout=10) as ws:
        for i in range(3):
            time.sleep(0.3)  # each pause longer than both limits
            ws.send(f"m{i}")
            assert ws.recv(timeout=10) == f"m{i}"
    assert "Request timed out" not in server.output
