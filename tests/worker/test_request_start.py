"""How a request's app is started: after the request's events are in, one task per request
(eager where Python has it), pipelined answers without recursion."""

from __future__ import annotations

import httpx
import pytest

from tests.server import read_response

pytestmark = pytest.mark.e2e


def _read_all(sock, n):
    buf = bytearray()
    out = []
    for _ in range(n):
        status, _, body, buf = read_response(sock, buf)
        out.append((status, body))
    return out


@pytest.mark.parametrize("path", ["/", "/suspend"])
def test_current_task_is_stable_and_context_is_per_request(serve, path):
    server = serve("tests.worker.speed_apps:task_identity", "--workers", "0", "--no-access-log")
    with server.connect(timeout=10) as sock:
        for _ in range(3):  # same connection: context vars must not leak between requests
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert _read_all(sock, 1) == [(200, b"same")]


def test_many_pipelined_requests_in_one_write(serve):
    # Answered one after the other from one buffer: no recursion per request.
    n = 1000
    # (--timeout-keep-alive: the test's own parsing of the 1000 answers is slow.)
    server = serve("benchmarks.app:app", "--workers", "0", "--no-access-log", "--timeout-keep-alive", "60")
    with server.connect(timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * n)
        assert _read_all(sock, n) == [(200, b"Hello, world!")] * n
        sock.sendall(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_all(sock, 1)[0][0] == 200


def test_pipelined_health_probes_keep_the_connection(serve):
    n = 1000
    server = serve("benchmarks.app:app", "--workers", "0", "--health-path", "/healthz", "--no-access-log",
                   "--timeout-keep-alive", "60")
    with server.connect(timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * n + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_all(sock, n + 1) == [(200, b"OK\n")] * n + [(200, b"Hello, world!")]


def test_post_body_reaches_the_app_started_after_its_head(serve):
    server = serve("benchmarks.app:app", "--workers", "0", "--no-access-log")
    body = b"x" * 200_000
    with server.connect(timeout=20) as sock:
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        sock.sendall(head + body[:1000])
        sock.sendall(body[1000:] + head + body)
        assert _read_all(sock, 2) == [(200, body)] * 2


def test_starlette_with_anyio_middleware_and_streaming(serve):
    server = serve("tests.worker.speed_apps:starlette_app", "--factory", "--workers", "0", "--no-access-log")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(2):  # twice: the second request reuses the connection
            r = client.get("/")
            assert (r.status_code, r.text, r.headers["x-mw"]) == (200, "plain", "1")
            r = client.get("/stream")
            assert (r.status_code, r.text, r.headers["x-mw"]) == (200, "chunk0\nchunk1\nchunk2\n", "1")
            r = client.post("/echo", content=b"x" * 100_000)
            assert r.json() == {"length": 100_000}
            assert client.get("/sync").text == "sync"
