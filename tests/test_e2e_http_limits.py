"""End-to-end strict parsing, limits and deadlines (issue 2 item 5) on a real server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server import ServerProcess, read_response, recv_until_closed

pytestmark = pytest.mark.e2e

APP = "tests.apps:http_app"
Serve = Callable[..., ServerProcess]


@pytest.fixture
def server(serve: Serve) -> ServerProcess:
    return serve(APP, "--workers", "0", "--limit-request-line", "200", "--limit-request-fields", "10",
                 "--limit-request-field-size", "300")


def rejected(server: ServerProcess, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw``; return the status and body of the answer, after checking the connection closed."""
    with server.connect() as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before it has read everything
        data = recv_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head, data
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 400 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(12)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: t\n\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400),
        (b"GET example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ],
)
def test_rejections(server: ServerProcess, raw: bytes, status: int) -> None:
    got, body = rejected(server, raw)
    assert got == status, body
    server.wait_line(rf"rejected request from 127\.0\.0\.1:\d+: {status} ")


def test_bad_chunk_framing_closes(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nZZ\r\n")
        data = recv_until_closed(sock)
    # The app may have started (it got the head), but never gets to answer a broken body.
    assert b"200 OK" not in data
    server.wait_line("rejected request from .*: 400")


def test_a_rejection_leaves_other_connections_alone(server: ServerProcess) -> None:
    with server.connect() as bystander:
        bystander.sendall(b"GET /slow?delay=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert rejected(server, b"GET / HTTP/1.1\r\n\r\n")[0] == 400
        assert read_response(bystander)[2] == b"slow done"


def test_h2c_upgrade_is_served_as_http11(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, buf = read_response(sock)
        assert (status, body) == (200, b"hello")  # no 101, body intact
        status, _, body, _ = read_response(sock, buf)
        assert body == b"Hello, world!"  # parsing went on after it


def test_slowloris_gets_408_within_the_header_deadline(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request-header", "1")
    with server.connect(timeout=15) as sock:
        start = time.monotonic()
        # One byte every 0.1 s: each byte would reset an idle timer, never this deadline.
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"v" * 200
        data = b""
        for i in range(len(head)):
            try:
                sock.sendall(head[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.1)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            break
        sock.settimeout(10)
        data += recv_until_closed(sock)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert elapsed < 15  # far less than the 20 s the trickle would take
    server.wait_line("request head not received within 1s from 127.0.0.1")


def test_connection_that_sends_nothing_gets_408(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-request-header", "0.5")
    with server.connect(timeout=15) as sock:
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ")


def test_idle_keep_alive_is_closed(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-keep-alive", "0.5", "--timeout-request-header", "30")
    with server.connect(timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _, buf = read_response(sock)
        start = time.monotonic()
        rest = recv_until_closed(sock)  # closed by the server, silently
        assert rest == b"" and not buf
        assert time.monotonic() - start < 15


def test_keep_alive_timer_is_not_a_request_deadline(serve: Serve) -> None:
    # A slow app response is not cut by --timeout-keep-alive.
    server = serve(APP, "--workers", "0", "--timeout-keep-alive", "0.2")
    with server.connect(timeout=15) as sock:
        sock.sendall(b"GET /slow?delay=0.6 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[2] == b"slow done"


def test_rejection_log_is_rate_limited(serve: Serve) -> None:
    server = serve(APP, "--workers", "0")
    socks = []
    for _ in range(40):
        s = server.connect()
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        socks.append(s)
    for s in socks:
        recv_until_closed(s)
        s.close()
    # At most 10 lines per second are logged; the rest are counted, and the count is
    # reported by the first rejection of a later second.
    deadline = time.monotonic() + 10
    while "similar messages suppressed" not in server.output and time.monotonic() < deadline:
        with server.connect() as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            recv_until_closed(s)
        time.sleep(0.2)
    assert "similar messages suppressed" in server.output
    per_second: dict[str, int] = {}
    for line in server.output.splitlines():
        if "rejected request" in line:
            per_second[line[:19]] = per_second.get(line[:19], 0) + 1
    # 10 per limiter window; a wall-clock second overlaps at most two windows.
    assert max(per_second.values()) <= 20
    assert sum(per_second.values()) < 40


def test_unix_socket_peer_gets_rejections_too(serve: Serve, tmp_path: Path) -> None:
    path = f"{tmp_path}/s.sock"
    server = serve(APP, "--workers", "0", "--uds", path)
    assert rejected(server, b"GET / HTTP/1.1\r\n\r\n")[0] == 400
    server.wait_line("rejected request from unix: 400")
