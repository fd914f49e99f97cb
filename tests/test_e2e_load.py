"""Load against the real server, for correctness only (no timing): what the compiled build must survive.

The mypyc trial of issue 13 passed every conformance check and still failed every pipelined
request under load (``TypeError: None object expected; got RequestCycle``: a compiled build
enforces the annotations, and one was false whenever a request arrived while the previous
one's cycle was still running). These tests put many pipelined requests and many WebSocket
echoes in flight at once and check every answer and the server's log. CI runs them against
both builds (``make test-compiled``, ``make test-pure``).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

import pytest
from websockets.sync.client import connect

from tests.server import ServerProcess, read_response

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
CONNECTIONS = 16
DEPTH = 16  # requests in flight per connection
ROUNDS = 12


def run_all(target: Callable[[int], None], count: int) -> None:
    """``target(i)`` for i in range(count) on threads at once; re-raises the first failure."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a load thread hung"
    if errors:
        raise errors[0]


def assert_clean_log(server: ServerProcess) -> None:
    out = server.output
    assert "Traceback" not in out and "Exception in ASGI application" not in out, out[-4000:]


def test_pipelined_x16_on_concurrent_connections_answers_every_request_in_order(serve: Serve) -> None:
    server = serve("tests.apps:http_app", "--workers", "0")

    def client(c: int) -> None:
        with server.connect(timeout=30) as sock:
            sock.settimeout(30)
            buf = bytearray()
            for r in range(ROUNDS):
                batch = []
                for i in range(DEPTH):
                    if i % 4 == 3:  # a body in the pipeline: the reader pauses and resumes around it
                        body = f"{c}/{r}/{i}".encode() * 50
                        batch.append(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
                    else:
                        batch.append(f"GET /echo?c={c}&r={r}&i={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                sock.sendall(b"".join(batch))
                for i in range(DEPTH):
                    status, _, got, buf = read_response(sock, buf)
                    assert status == 200, (c, r, i, status, got)
                    if i % 4 == 3:
                        assert got == f"{c}/{r}/{i}".encode() * 50
                    else:
                        assert json.loads(got)["query_string"] == f"c={c}&r={r}&i={i}"
            assert not buf  # nothing more than the answers asked for

    run_all(client, CONNECTIONS)
    assert_clean_log(server)


def test_pipelined_requests_to_a_slow_app_are_answered_while_others_arrive(serve: Serve) -> None:
    # The next request arrives (and is parsed) while the previous cycle's app still runs: the
    # state in which the trial's annotation was false.
    server = serve("tests.apps:http_app", "--workers", "0")

    def client(c: int) -> None:
        with server.connect(timeout=30) as sock:
            sock.settimeout(30)
            sock.sendall(b"GET /slow?delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.sendall(b"".join(f"GET /echo?c={c}&i={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                                  for i in range(DEPTH)))
            buf = bytearray()
            status, _, got, buf = read_response(sock, buf)
            assert (status, got) == (200, b"slow done")
            for i in range(DEPTH):
                status, _, got, buf = read_response(sock, buf)
                assert status == 200 and json.loads(got)["query_string"] == f"c={c}&i={i}"

    run_all(client, CONNECTIONS)
    assert_clean_log(server)


@pytest.mark.parametrize("in_flight", [1, 8])
def test_websocket_echo_under_load_returns_every_message(serve: Serve, in_flight: int) -> None:
    server = serve("tests.ws.apps:app", "--workers", "0")
    messages = 120

    def client(c: int) -> None:
        url = f"ws://{server.host}:{server.port}/echo"
        with connect(url, open_timeout=30, close_timeout=10) as ws:
            sent = 0
            for n in range(messages):
                # 32-byte text (the chat pattern) and, every 7th, a binary one.
                payload: str | bytes = f"{c:04d}:{n:06d}:".ljust(32, "x") if n % 7 else bytes([c, n % 256]) * 16
                ws.send(payload)
                sent += 1
                if sent == in_flight or n == messages - 1:
                    for k in range(n - sent + 1, n + 1):
                        want = f"{c:04d}:{k:06d}:".ljust(32, "x") if k % 7 else bytes([c, k % 256]) * 16
                        assert ws.recv(timeout=30) == want, (c, k)
                    sent = 0

    run_all(client, CONNECTIONS)
    server.wait_line(r"app: disconnect 1000 ''")
    assert_clean_log(server)


def test_load_helpers_report_a_wrong_answer() -> None:
    # run_all must fail the test when one thread's assertion fails, else the tests above pass on anything.
    def client(i: int) -> None:
        assert i != 3, "thread 3 saw a wrong answer"

    with pytest.raises(AssertionError, match="thread 3"):
        run_all(client, 5)


def test_a_pipelined_answer_is_checked_against_its_request() -> None:
    # read_response over a socket pair: the parsing the load tests rely on sees each answer.
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")
        first = read_response(a)
        second = read_response(a, first[3])
    assert (first[0], first[2], second[0]) == (200, b"ok", 500)
