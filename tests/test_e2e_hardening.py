"""Hostile input on every path, as exact bytes over a real socket to a real server.

One server (a master and one worker running ``tests.hostile_apps:app``) serves the module;
after each attack the same worker pid must still answer, so "the worker stays up" is
checked every time, not once.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator

import pytest

from tests.hostile_apps import BAD_HEADERS, BAD_STATUSES, BAD_SUBPROTOCOLS
from tests.server import ServerProcess, read_response, recv_until_closed, wait_for
from tests.ws.raw import BINARY, CLOSE, CONT, PING, TEXT, RawClient, close_payload, frame, upgrade_request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WS_MAX_SIZE = 64 * 1024
_ids = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(["tests.hostile_apps:app", "--port", "0", "--workers", "1", "--no-access-log",
                          "--ws-max-size", str(WS_MAX_SIZE), "--no-ws-per-message-deflate"])
    try:
        yield proc.start()
    finally:
        proc.stop()


def get(server: ServerProcess, target: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with server.connect(timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, _, body, _ = read_response(sock)
    return status, body


def worker_pid(server: ServerProcess) -> int:
    status, body = get(server, "/pid")
    assert status == 200
    return int(json.loads(body)["pid"])


@pytest.fixture
def same_worker(server: ServerProcess) -> Iterator[int]:
    """The worker's pid before the test; after it, the same worker must still serve."""
    pid = worker_pid(server)
    yield pid
    assert worker_pid(server) == pid, "the worker was replaced: the attack crashed it"


def exchange(server: ServerProcess, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with server.connect(timeout) as sock:
        sock.sendall(request)
        return recv_until_closed(sock)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def logged(server: ServerProcess, token: str) -> list[str]:
    return [line for line in server.lines if token in line]


# ------------------------------------------------------- 1. every header the app hands us


def _refusal_cases() -> list[tuple[str, str]]:
    cases = [("/header", c) for c in BAD_HEADERS] + [("/status", c) for c in BAD_STATUSES]
    cases += [("/ws/accept-header", c) for c in BAD_HEADERS] + [("/ws/subprotocol", c) for c in BAD_SUBPROTOCOLS]
    cases += [("/ws/denial-header", c) for c in BAD_HEADERS] + [("/ws/denial-status", c) for c in BAD_STATUSES]
    return cases


@pytest.mark.parametrize("swallow", ["0", "1"])
@pytest.mark.parametrize(("route", "case"), _refusal_cases())
def test_an_invalid_value_from_the_app_is_refused_with_500_on_every_path(
        server: ServerProcess, same_worker: int, route: str, case: str, swallow: str) -> None:
    token = f"t{next(_ids)}x"
    target = f"{route}/{token}?case={case}&swallow={swallow}"
    if route.startswith("/ws/"):
        request = upgrade_request(target, extra="Sec-WebSocket-Protocol: chat\r\n")
    else:
        request = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    answer = exchange(server, request)
    # One complete 500, then the connection closes: never a 101, a partial or injected head.
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"x-injected" not in answer.lower() and b"secret" not in answer
    assert b"connection: close" in head.lower()
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    assert length == [len(body)]
    # Logged once, with the reason.
    lines = logged(server, token)  # written before the answer, but stdout is read by a thread
    if not lines:
        lines = wait_for(lambda: logged(server, token), what="the log line")  # type: ignore[assignment]
    assert len(lines) == 1 and "ERROR" in lines[0], lines


def test_http_status_int_subclass_is_accepted(server: ServerProcess, same_worker: int) -> None:
    status, _ = get(server, "/httpstatus?code=201")
    assert status == 201
    answer = exchange(server, upgrade_request("/ws/denial-httpstatus"))
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and answer.endswith(b"\r\n\r\ndenied")


# ------------------------------------------------------- 2-5. the request parser


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"u@a", b"a?b", b"a#b", b"a\\b", b"a:8x", b"a:99999", b"[::1",
                                  b"a%zz", b"<a>", b'"a"'])
def test_invalid_host_is_400(server: ServerProcess, same_worker: int, host: bytes) -> None:
    answer = exchange(server, b"GET /scope HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"invalid Host" in answer


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"[::1]:80", b"10.0.0.1", b"xn--bcher-kva.ch",
                                  b""])
def test_valid_host_reaches_the_app(server: ServerProcess, host: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert status == 200 and ["host", host.decode()] in json.loads(body)["headers"]


def test_absolute_form_target_authority_replaces_host(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET http://a.example:8080/scope?x=1 HTTP/1.1\r\nHost: b.example\r\n\r\n")
        status, _, body, _ = read_response(sock)
    seen = json.loads(body)
    assert status == 200 and seen["path"] == "/scope" and seen["query"] == "x=1"
    assert [h for h in seen["headers"] if h[0] == "host"] == [["host", "a.example:8080"]]


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"GET /scope#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400, b"fragment"),
    (b"GET /scope?a=1#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400, b"fragment"),
    (b"GET / RTSP/1.0\r\nHost: t\r\n\r\n", 400, b"request line"),
    (b"SOURCE / ICE/1.0\r\nHost: t\r\n\r\n", 400, b"request line"),
    (b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400, b"request line"),
    (b"POST /scope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, b"gzip"),
    (b"POST /scope HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400,
     b"Transfer-Encoding"),
    (b"GET http://u:p@a/scope HTTP/1.1\r\nHost: a\r\n\r\n", 400, b"userinfo"),
    (b"GET  /scope HTTP/1.1\r\nHost: t\r\n\r\n", 400, b"request line"),
    (b"FOO /scope HTTP/1.1\r\nHost: t\r\n\r\n", 501, b"not implemented"),
])
def test_parser_gaps_are_closed(server: ServerProcess, same_worker: int, request_bytes: bytes, status: int,
                                reason: bytes) -> None:
    answer = exchange(server, request_bytes)
    last = answer[answer.rfind(b"HTTP/1.1 "):]  # after the pipelined request's answer, if any
    assert last.startswith(b"HTTP/1.1 %d " % status) and reason in last, answer


def test_trailing_whitespace_is_not_part_of_a_value(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: t \t\r\nX-A: abc\t\r\nX-B: d e  \r\n\r\n")
        status, _, body, _ = read_response(sock)
    headers = json.loads(body)["headers"]
    assert ["host", "t"] in headers and ["x-a", "abc"] in headers and ["x-b", "d e"] in headers


def test_error_answering_head_has_no_body(server: ServerProcess, same_worker: int) -> None:
    answer = exchange(server, b"HEAD /scope HTTP/1.1\r\nHost: a b\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-length: " in head and body == b""


# ------------------------------------------------------- 7-8. WebSocket fragments


def _open_echo(server: ServerProcess) -> RawClient:
    sock = server.connect()
    sock.sendall(upgrade_request("/ws/echo"))
    client = RawClient(sock)
    status, _, _ = client.read_head()
    assert status == 101
    return client


def test_close_between_fragments_is_answered_as_a_normal_close(server: ServerProcess, same_worker: int) -> None:
    with _open_echo(server) as client:
        start = len(server.lines)
        client.sock.sendall(frame(TEXT, b"unfin", fin=False) + frame(CONT, b"ished", fin=False)
                            + frame(CLOSE, close_payload(1000, "bye")))
        assert client.read_close() == (1000, "bye")
        assert client.at_eof()
    server.wait_line(r"app: disconnect 1000", start=start)


def test_a_flood_of_empty_fragments_is_closed_1009_and_others_are_served(server: ServerProcess,
                                                                          same_worker: int) -> None:
    before = rss_kib(same_worker)
    flood = frame(CONT, b"", fin=False) * 10_000
    with _open_echo(server) as client:
        client.sock.sendall(frame(BINARY, b"", fin=False))
        sent = 0
        try:
            # 64 KiB / 64 bytes charged per fragment: the server gives up after ~1,024 of
            # them; keep sending well past that to show nothing more is kept.
            for _ in range(30):
                client.sock.sendall(flood)
                sent += 10_000
                assert get(server, "/pid")[0] == 200  # the worker answers others meanwhile
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, _ = client.read_close()
    assert code == 1009
    assert rss_kib(same_worker) - before < 8 * 1024


def test_a_ping_flood_from_a_client_that_does_not_read_is_bounded(server: ServerProcess, same_worker: int) -> None:
    before = rss_kib(same_worker)
    with _open_echo(server) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sock.settimeout(0.5)
        pings = frame(PING, b"p" * 125) * 1000  # each answered by a 127-byte pong
        sent = 0
        try:
            while sent < 200_000:  # 25 MB of pongs if the server kept reading
                client.sock.sendall(pings)
                sent += 1000
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: our send buffer filled up
        # The worker first answers the pings it had read (thousands per read, traced by
        # coverage): on a loaded 2-core CI machine that took over 5 s once.
        assert get(server, "/pid", timeout=30)[0] == 200
        grown = rss_kib(same_worker) - before
    assert sent < 200_000, "the server kept reading while its output piled up"
    assert grown < 16 * 1024, grown


def test_a_pipelined_flood_from_a_client_that_does_not_read_is_bounded(server: ServerProcess,
                                                                        same_worker: int) -> None:
    before = rss_kib(same_worker)
    request = b"GET /big?size=16384 HTTP/1.1\r\nHost: t\r\n\r\n" * 100
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = 0
        try:
            # 8 MB of requests, past what the kernel buffers hold; 3 GB of responses if the
            # server kept reading and answering.
            while sent < 200_000:
                sock.sendall(request)
                sent += 100
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        assert get(server, "/pid")[0] == 200
        grown = rss_kib(same_worker) - before
    assert sent < 200_000, "the server kept reading while its responses piled up"
    assert grown < 16 * 1024, grown

