"""DeadlineSweeper (one timer per worker instead of a call_later per request) and the
timeouts it drives end to end."""

from __future__ import annotations

import asyncio
import time

import pytest

from fastgate.worker.deadlines import DeadlineSweeper, sweep_interval
from tests.server import read_response


class Conn:
    def __init__(self, deadline: float = 0.0) -> None:
        self.deadline = deadline
        self.fired = 0

    def on_deadline(self) -> None:
        self.fired += 1
        self.deadline = 0.0


def test_sweep_interval_is_a_fraction_of_the_shortest_timeout():
    assert sweep_interval(5.0, 10.0) == 1.0
    assert sweep_interval(0.4, 10.0) == pytest.approx(0.1)
    assert sweep_interval(0.0, 0.001) == 0.01  # floor: never a busy loop
    assert sweep_interval(0.0) == 1.0


def test_sweeper_fires_only_passed_deadlines_and_stops_when_idle():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due, later, none = Conn(now + 0.02), Conn(now + 3600), Conn()
        conns = {due, later, none}
        sweeper = DeadlineSweeper(conns, 0.01)
        sweeper.wake(loop)
        sweeper.wake(loop)  # idempotent: one timer
        deadline = time.monotonic() + 5
        while not due.fired and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (due.fired, later.fired, none.fired) == (1, 0, 0)
        # With no connection left the sweeper stops re-arming itself.
        conns.clear()
        await asyncio.sleep(0.05)
        assert sweeper._handle is None
        sweeper.wake(loop)
        sweeper.close()
        assert sweeper._handle is None

    asyncio.run(main())


@pytest.mark.e2e
def test_idle_keep_alive_connection_is_closed(serve):
    server = serve("tests.apps:app", "--workers", "0", "--timeout-keep-alive", "0.3")
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _, buf = read_response(sock)
        assert status == 200 and not buf
        t0 = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, not by our 10 s timeout
        assert time.monotonic() - t0 < 5


@pytest.mark.e2e
def test_keep_alive_zero_closes_after_the_response(serve):
    server = serve("tests.apps:app", "--workers", "0", "--timeout-keep-alive", "0")
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _, buf = read_response(sock)
        assert status == 200
        assert sock.recv(100) == b""


@pytest.mark.e2e
def test_slow_request_head_gets_408(serve):
    server = serve("tests.apps:app", "--workers", "0", "--timeout-request-header", "0.3")
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finished
        t0 = time.monotonic()
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - t0 < 5


@pytest.mark.e2e
def test_requests_on_a_kept_alive_connection_are_not_cut_by_the_sweep(serve):
    # Requests keep arriving for longer than the keep-alive timeout: each one resets it.
    server = serve("tests.apps:app", "--workers", "0", "--timeout-keep-alive", "0.2")
    with server.connect(timeout=10) as sock:
        buf = bytearray()
        end = time.monotonic() + 0.8
        n = 0
        while time.monotonic() < end:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, _, buf = read_response(sock, buf)
            assert status == 200
            n += 1
            time.sleep(0.05)  # pacing the client, well under the timeout; not a wait for the server
        assert n > 3
