"""End-to-end HTTP/1.1 semantics (issue 2 item 4): a real single-process server, raw sockets, httpx, curl."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, read_response, recv_until_closed, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.apps:http_app"
Serve = Callable[..., ServerProcess]


@pytest.fixture
def server(serve: Serve) -> ServerProcess:
    return serve(APP, "--workers", "0")


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the peer closed (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_keep_alive_reuses_the_connection(server: ServerProcess) -> None:
    with server.connect() as sock:
        buf = bytearray()
        ports = set()
        for i in range(5):
            sock.sendall(get(f"/echo?i={i}"))
            status, headers, body, buf = read_response(sock, buf)
            assert status == 200 and b"connection" not in headers
            info = json.loads(body)
            assert info["query_string"] == f"i={i}"
            ports.add(info["client"][1])
        assert len(ports) == 1


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    with server.connect() as sock:
        # A slow first request must not let the fast ones overtake it.
        sock.sendall(get("/slow?delay=0.3") + get("/echo?n=2")
                     + b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" + get("/echo?n=4"))
        buf = bytearray()
        bodies = []
        for _ in range(4):
            status, _, body, buf = read_response(sock, buf)
            assert status == 200
            bodies.append(body)
        assert bodies[0] == b"slow done"
        assert json.loads(bodies[1])["query_string"] == "n=2"
        assert bodies[2] == b"hello"
        assert json.loads(bodies[3])["query_string"] == "n=4"


def test_half_close_after_pipelined_requests_answers_all(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(get("/slow?delay=0.2") + get("/echo?n=2"))
        sock.shutdown(socket.SHUT_WR)
        data = recv_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b"slow done" in data and b'"n=2"' in data


def test_content_length_and_chunked_uploads(server: ServerProcess) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    r = httpx.post(server.url + "/body", content=payload, timeout=30)
    assert r.status_code == 200 and r.content == payload

    def chunks():
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    r = httpx.post(server.url + "/body", content=chunks(), timeout=30)
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.content == payload
    with server.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n")
        status, _, body, _ = read_response(sock)
        assert status == 200 and json.loads(body)["len"] == 7


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_chunked_upload_and_keep_alive(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"z" * 300_000)
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{data}",
         server.url + "/upload", server.url + "/echo", "-w", "\n%{num_connects}\n"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert '"len": 300000' in out
    assert out.strip().splitlines()[-1] == "0"  # second URL reused the connection


def test_chunked_response_without_content_length(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(get("/stream?n=3"))
        status, headers, body, _ = read_response(sock)
    assert headers[b"transfer-encoding"] == b"chunked" and b"content-length" not in headers
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_head_has_no_body(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n" + get("/"))
        status, headers, _, rest = read_response_head(sock)
        assert status == 200 and headers[b"content-length"] == b"12"
        # No body bytes: the next response starts right away.
        while len(rest) < 17:
            rest += sock.recv(65536)
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
        status, _, body, _ = read_response(sock, bytearray(rest))
        assert body == b"Hello, world!"


def test_expect_100_continue_only_when_the_app_reads(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /expect HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        status, _, _, buf = read_response(sock)
        assert status == 100  # the app called receive()
        sock.sendall(b"hello")
        status, _, body, _ = read_response(sock, buf)
        assert (status, body) == (200, b"got 5")
    with server.connect() as sock:
        sock.sendall(b"POST /reject-early HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        status, headers, body, _ = read_response(sock)
        assert status == 413 and body == b"too big"  # no 100 first: the app never read
        assert closed(sock)  # the unread body makes the connection unusable


def test_http10(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        data = recv_until_closed(sock)  # close-delimited body
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in data
    assert data.endswith(b"chunk 0\nchunk 1\nchunk 2\n") and b"transfer-encoding" not in data
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body, buf = read_response(sock)
        assert headers[b"connection"] == b"keep-alive" and body == b"Hello, world!"
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, body, buf = read_response(sock, buf)
        assert headers[b"connection"] == b"close"
        assert closed(sock)


def test_connection_close_from_client_and_app(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(get("/", b"Connection: close\r\n"))
        status, headers, body, _ = read_response(sock)
        assert headers[b"connection"] == b"close" and body == b"Hello, world!"
        assert closed(sock)
    with server.connect() as sock:
        sock.sendall(get("/close"))
        status, headers, body, _ = read_response(sock)
        assert headers[b"connection"] == b"close" and body == b"bye"
        assert closed(sock)


def test_date_and_server_headers(server: ServerProcess) -> None:
    with httpx.Client(timeout=5) as client:  # one client: polling with new ones costs a TLS context each
        r1 = client.get(server.url + "/")
        assert r1.headers["server"] == "fastgate"
        date = r1.headers["date"]
        assert date.endswith(" GMT")
        # Refreshed by a timer, once a second.
        wait_for(lambda: client.get(server.url + "/").headers["date"] != date, timeout=10, what="a new date")


def test_header_flags(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--no-server-header", "--no-date-header",
                   "--header", "X-Frame-Options: DENY", "--header", "Cache-Control: no-cache, no-store")
    r = httpx.get(server.url + "/", timeout=5)
    assert "server" not in r.headers and "date" not in r.headers
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-cache, no-store"


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled(read: Callable[[], int], quiet: float = 0.5, timeout: float = 20.0) -> int:
    """Wait until ``read()`` stops changing for ``quiet`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        new = read()
        if new != value:
            value, since = new, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError("value kept changing")


def test_read_backpressure_pauses_reading(server: ServerProcess) -> None:
    size = 96 * 1024 * 1024
    sent = [0]
    base_rss = proc_rss(server.pid)
    sock = server.connect(timeout=60)

    def upload() -> None:
        sock.sendall(b"POST /stall-upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"u" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
            sent[0] += len(chunk)

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    try:
        server.wait_line("upload stalled")
        stalled_at = settled(lambda: sent[0])
        # The app stopped reading: the server pauses too, so only socket buffers fill up.
        assert stalled_at < size // 3, f"the server kept reading: {stalled_at} bytes accepted"
        assert proc_rss(server.pid) - base_rss < 32 * 1024 * 1024
        with server.connect() as other:  # other connections are unaffected
            other.sendall(get("/release-upload"))
            assert read_response(other)[2] == b"released"
        thread.join(60)
        assert not thread.is_alive() and sent[0] == size
        status, _, body, _ = read_response(sock)
        assert json.loads(body)["len"] == size
    finally:
        sock.close()


def test_write_backpressure_waits_for_the_reader(server: ServerProcess) -> None:
    size = 128 * 1024 * 1024
    base_rss = proc_rss(server.pid)
    with server.connect(timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(get(f"/big-progress?size={size}"))
        server.wait_line("sent 262144")
        count = settled(lambda: server.output.count("\nsent "), quiet=1.0)
        # The client reads nothing: send() must block once the transport buffer is full.
        assert count < 64, f"the app pushed {count // 4} MiB into a reader that reads nothing"
        assert proc_rss(server.pid) - base_rss < 48 * 1024 * 1024
        total = 0
        status, headers, _, buf = read_response_head(sock)
        total = len(buf)
        while total < size:
            data = sock.recv(1 << 20)
            assert data
            total += len(data)
        assert total == size == int(headers[b"content-length"])


def read_response_head(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, head, rest


def test_http_disconnect_on_client_close(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(get("/wait-disconnect"))
        sock.recv(100)  # the app started streaming
    server.wait_line("got http.disconnect")
    with server.connect() as sock:
        sock.sendall(get("/disconnect-then-send"))
        sock.shutdown(socket.SHUT_WR)  # EOF: the app learns of it through receive()
        sock.recv(1)  # the app tried to answer, and the connection closed
    sock = server.connect()
    sock.sendall(get("/disconnect-then-send"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST: the connection is lost at once
    server.wait_line("send after disconnect raised ClientDisconnected")
    assert "ERROR" not in server.output  # a client leaving is not an app error


def test_app_errors(server: ServerProcess) -> None:
    for path in ("/raise", "/no-response", "/bad-header"):
        with server.connect() as sock:
            sock.sendall(get(path))
            status, headers, body, _ = read_response(sock)
            assert status == 500, path
            assert headers[b"connection"] == b"close"
            assert b"injected" not in body and b"set-cookie" not in headers
            assert closed(sock)
    server.wait_line("boom before the response")
    server.wait_line("returned without sending a response")
    server.wait_line("Invalid response from the ASGI application .* invalid header value")
    with server.connect() as sock:
        sock.sendall(get("/raise-after-start"))
        data = recv_until_closed(sock)
    # The head and a chunk went out, then the connection closed: no terminating chunk, no 500.
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"partial" in data
    assert not data.endswith(b"0\r\n\r\n") and b"500" not in data
    server.wait_line("after the response started")
    r = httpx.get(server.url + "/", timeout=5)  # the server lives on
    assert r.status_code == 200


def test_scope_fields(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/echo/a%20b?x=%2F&y", headers={"X-Custom": "1"}, timeout=5)
    info = r.json()
    assert info["method"] == "GET" and info["http_version"] == "1.1" and info["scheme"] == "http"
    assert info["path"] == "/echo/a b" and info["raw_path"] == "/echo/a%20b" and info["query_string"] == "x=%2F&y"
    assert info["root_path"] == "" and info["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert ["x-custom", "1"] in info["headers"] and all(n == n.lower() for n, _ in info["headers"])
    assert info["client"][0] == "127.0.0.1" and info["server"] == ["127.0.0.1", server.port]
    assert info["state"]["started_pid"] == info["pid"]


def test_root_path(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--root-path", "/api")
    info = httpx.get(server.url + "/root-info", timeout=5).json()
    assert info["root_path"] == "/api" and info["path"] == "/api/root-info" and info["raw_path"] == "/api/root-info"


def test_proxy_headers(serve: Serve) -> None:
    server = serve(APP, "--workers", "0")
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "public.example", "X-Forwarded-Prefix": "/svc"}
    info = httpx.get(server.url + "/root-info", headers=headers, timeout=5).json()
    assert info["client"][0] == "203.0.113.9"  # the rightmost untrusted hop, never the spoofable leftmost
    assert info["scheme"] == "https" and info["host"] == "public.example"
    assert info["root_path"] == "/svc" and info["path"] == "/svc/root-info"
    # From a peer outside --forwarded-allow-ips: ignored.
    server = serve(APP, "--workers", "0", "--forwarded-allow-ips", "10.0.0.0/8")
    info = httpx.get(server.url + "/root-info", headers=headers, timeout=5).json()
    assert info["client"][0] == "127.0.0.1" and info["scheme"] == "http" and info["root_path"] == ""
    # Switched off.
    server = serve(APP, "--workers", "0", "--no-proxy-headers")
    info = httpx.get(server.url + "/root-info", headers=headers, timeout=5).json()
    assert info["client"][0] == "127.0.0.1"


def test_forwarded_header(server: ServerProcess) -> None:
    headers = {"Forwarded": 'for=6.6.6.6;proto=http, for="[2001:db8::9]:1234";proto=https'}
    info = httpx.get(server.url + "/echo", headers=headers, timeout=5).json()
    assert info["client"][0] == "2001:db8::9" and info["scheme"] == "https"


def test_limit_concurrency(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--limit-concurrency", "1")
    with server.connect() as first:
        first.sendall(get("/"))
        assert read_response(first)[0] == 200
        with server.connect() as second:
            second.sendall(get("/"))
            status, headers, body, _ = read_response(second)
            assert status == 503 and headers[b"connection"] == b"close"
            assert closed(second)  # the server closed it: the slot is free again
        first.sendall(get("/"))
        assert read_response(first)[0] == 200


def test_asgi2_app_and_factory(serve: Serve) -> None:
    server = serve("tests.apps:ASGI2App", "--workers", "0", "--lifespan", "off")
    assert httpx.get(server.url + "/x", timeout=5).text == "asgi2 /x"
    server = serve("tests.apps:http_app_factory", "--workers", "0", "--factory")
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"


def test_early_response_to_an_upload_is_not_lost(server: ServerProcess) -> None:
    # The app answers 413 without reading; the client keeps uploading 8 MiB. Closing at once
    # would reset the connection and the client would often never see the 413.
    size = 8 * 1024 * 1024
    with server.connect(timeout=30) as sock:
        sock.sendall(b"POST /reject-early HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"u" * 65536
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading after its linger deadline
        status, headers, body, _ = read_response(sock)
        assert (status, body) == (413, b"too big") and headers[b"connection"] == b"close"
