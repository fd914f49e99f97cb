"""Bounded versions of the load figures of benchmarks/resources.py (RESOURCES.md): idle
connections, a slowloris swarm, a soak, idle WebSockets. They assert what must hold at any
speed (every answer right, every connection closed cleanly, the worker's tasks, fds and
protocol objects back to where they were), never how fast.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.leaks import assert_back_to, settled, stats
from tests.server import ServerProcess, read_response, recv_until_closed, wait_for
from tests.supervisor.util import alive, children
from tests.ws.raw import CLOSE, TEXT, RawClient, close_payload, frame, upgrade_request

pytestmark = pytest.mark.e2e

APP = "tests.fault_apps:app"
GET_PID = b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    RawClient.close_all()


def open_idle(server: ServerProcess, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections, each answered once (200 from the worker), then left idle."""
    socks = []
    for _ in range(n):
        sock = server.connect(timeout=10)
        socks.append(sock)
        sock.sendall(GET_PID)
        status, _, body, rest = read_response(sock)
        assert (status, rest) == (200, bytearray()), (status, rest)
    return socks


def wait_all_closed_by_server(socks: list[socket.socket], timeout: float = 60.0) -> None:
    """Every socket must read a clean EOF (the server closed it), with nothing else on the wire."""
    pending = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)

    def progress() -> bool:
        for fd, _ in poller.poll(200):
            sock = pending.pop(fd)
            poller.unregister(fd)
            assert sock.recv(1024) == b"", "an idle connection got bytes instead of a close"
        return not pending

    wait_for(progress, timeout, 0, f"the server to close {len(socks)} idle connections")
    for sock in socks:
        sock.close()


def worker_of(server: ServerProcess) -> int:
    (pid,) = wait_for(lambda: children(server.pid) if len(children(server.pid)) == 1 else None, 20)  # type: ignore[misc]
    return int(pid)


# ------------------------------------------------------------------ idle keep-alive connections


def test_300_idle_keep_alive_connections_are_all_closed_when_they_idle_out(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(APP, "--workers", "1", "--timeout-keep-alive", "2")
    before = settled(server)
    socks = open_idle(server, 300)
    wait_all_closed_by_server(socks)
    assert_back_to(server, before)


def test_300_idle_connections_and_sigterm_the_worker_closes_them_and_exits_0(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(APP, "--workers", "1", "--timeout-keep-alive", "10", "--timeout-graceful-shutdown", "60")
    before = settled(server)
    worker = worker_of(server)
    socks = open_idle(server, 300)
    held = stats(server)  # nothing can idle out for 10 s: all 300 are held by the worker
    assert held["http_protocols"] - before["http_protocols"] == 300
    assert held["fds"] - before["fds"] == 300
    mark = len(server.lines)
    os.kill(worker, signal.SIGTERM)
    # Idle connections are left to their keep-alive deadline (a request may be on its way on
    # any of them: HttpProtocol.shutdown), then the worker exits 0 and is replaced.
    wait_all_closed_by_server(socks)
    server.wait_line(rf"Worker {worker} exited \(code 0\)", start=mark, timeout=30)
    assert not alive(worker)
    r = httpx.get(server.url + "/pid", timeout=10)
    assert r.status_code == 200 and int(r.text) != worker


# ------------------------------------------------------------------ slowloris


class Swarm:
    """Connections that send a request head one byte at a time and never finish it."""

    def __init__(self, server: ServerProcess, n: int, interval: float) -> None:
        self.socks = [server.connect(timeout=10) for _ in range(n)]
        for sock in self.socks:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        self.answered: dict[socket.socket, bytes] = {}
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        # Pacing, not waiting for a condition: a byte per connection every `interval`.
        while not self.done.wait(self.interval):
            waiting = [s for s in self.socks if s not in self.answered]
            if not waiting:
                return
            readable, _, _ = select.select(waiting, [], [], 0)
            for sock in readable:  # the server answered: read it all, stop sending
                self.answered[sock] = recv_until_closed(sock)
            for sock in waiting:
                if sock not in self.answered:
                    try:
                        sock.sendall(b"a")
                    except OSError:  # answered and closed between the select and the send
                        self.answered[sock] = recv_until_closed(sock)

    def all_answered(self) -> bool:
        return len(self.answered) == len(self.socks)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def test_slowloris_swarm_gets_408_while_normal_clients_are_served(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(APP, "--workers", "1", "--timeout-request-header", "1")
    before = settled(server)
    swarm = Swarm(server, 50, 0.1)
    served = 0
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            # Normal clients, on a kept-alive connection and on new ones, for as long as the
            # swarm is still trickling (and at least 100 requests).
            while served < 100 or not swarm.all_answered():
                r = client.get("/pid")
                assert r.status_code == 200 and int(r.text) == before["pid"]
                served += 1
                if served % 10 == 0:
                    assert httpx.get(server.url + "/pid", timeout=10).status_code == 200
                assert swarm.thread.is_alive() or swarm.all_answered(), "the swarm's thread died"
    finally:
        swarm.stop()
    for answer in swarm.answered.values():
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:100]
        assert b"connection: close\r\n" in answer
    assert_back_to(server, before)


# ------------------------------------------------------------------ soak


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess([APP, "--workers", "1", "--port", "0", "--ws-ping-interval", "0", "--no-access-log"]) as proc:
        yield proc


def _pipelined_gets(server: ServerProcess, batches: int, depth: int, pid: int) -> int:
    with server.connect(timeout=10) as sock:
        buf = bytearray()
        for _ in range(batches):
            sock.sendall(GET_PID * depth)
            for _ in range(depth):
                status, _, body, buf = read_response(sock, buf)
                assert (status, int(body)) == (200, pid)
    return batches * depth


def _uploads(server: ServerProcess, n: int) -> int:
    with server.connect(timeout=10) as sock:
        buf = bytearray()
        for i in range(n):
            body = bytes([i % 256]) * (1 + (i * 997) % 20_000)
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            status, _, answer, buf = read_response(sock, buf)
            assert (status, int(answer)) == (200, len(body))
    return n


def _new_connections(server: ServerProcess, n: int) -> int:
    for _ in range(n):
        with server.connect(timeout=10) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_response(sock)[0] == 200
    return n


def test_20k_request_soak_returns_to_the_baseline(server: ServerProcess) -> None:
    before = settled(server)
    pid = before["pid"]
    results: list[int] = []
    errors: list[BaseException] = []
    jobs = [
        lambda: _pipelined_gets(server, 800, 10, pid),
        lambda: _pipelined_gets(server, 800, 10, pid),
        lambda: _pipelined_gets(server, 200, 1, pid) + _uploads(server, 1800),
        lambda: _new_connections(server, 2000),
    ]

    def work(job) -> None:  # type: ignore[no-untyped-def]
        try:
            results.append(job())
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(results) == 20_000
    after = assert_back_to(server, before)
    print(f"20k-request soak: worker RSS {before['rss_kib']} -> {after['rss_kib']} KiB, fds {before['fds']} -> "
          f"{after['fds']}, tasks {before['tasks']} -> {after['tasks']}")


# ------------------------------------------------------------------ idle WebSockets


@pytest.mark.parametrize("deflate", [False, True])
def test_100_idle_websockets_hold_one_task_and_one_fd_each_and_release_them(server: ServerProcess,
                                                                          deflate: bool) -> None:
    before = settled(server)
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    clients = []
    for _ in range(100):
        client = RawClient(server.connect(timeout=10))
        client.sock.sendall(upgrade_request("/ws/echo", extra=extra) + frame(TEXT, b"x" * 1000))
        status, headers, _ = client.read_head()
        assert status == 101 and ("sec-websocket-extensions" in headers) == deflate
        opcode, fin, _ = client.read_frame()  # the echo (compressed when negotiated)
        assert (opcode, fin) == (TEXT, True)
        clients.append(client)
    held = stats(server)
    for key in ("ws_protocols", "ws_cycles", "tasks", "fds"):  # one app task and one socket each
        assert held[key] - before[key] == 100, (key, before, held)
    assert held["http_protocols"] == before["http_protocols"]  # the upgrade handed them over
    for client in clients:
        client.sock.sendall(frame(CLOSE, close_payload(1000)))
    for client in clients:
        assert client.read_close()[0] == 1000
        assert client.at_eof()
        client.sock.close()
    assert_back_to(server, before)
