"""Fault injection against a real server: clients that vanish mid-exchange, apps that raise in
every phase, and a worker killed with SIGKILL under load.

The app (``tests.fault_apps``) reports the worker's tasks, open fds and live protocol
objects on ``/stats``; a fault must leave all of them where they were before it (polled,
with a deadline: the worker frees a connection in the loop iterations after it ends).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.leaks import assert_back_to, hang_up, settled, stats
from tests.server import ServerProcess, read_response, recv_until_closed, wait_for
from tests.supervisor.util import alive, children, get, serving_pids
from tests.ws.raw import BINARY, CLOSE, TEXT, RawClient, close_payload, frame, upgrade_request

pytestmark = pytest.mark.e2e

APP = "tests.fault_apps:app"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One forked worker (``--workers 1``): a crash would show as a new pid."""
    with ServerProcess([APP, "--workers", "1", "--port", "0", "--ws-ping-interval", "0"]) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield
    RawClient.close_all()


# ------------------------------------------------------------------ helpers


def errors_since(server: ServerProcess, mark: int) -> list[str]:
    return [line for line in server.lines[mark:] if "ERROR" in line or "Traceback" in line]


def request(path: str, extra: str = "", body: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode() + body


# ------------------------------------------------------------------ clients that vanish


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_disconnect_mid_request_body(server: ServerProcess, how: str, framing: str) -> None:
    before = settled(server)
    mark = len(server.lines)
    sock = server.connect()
    if framing == "chunked":  # cut inside a chunk
        head = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head + b"10000\r\n" + b"x" * 30_000)
    else:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
    server.wait_line("app: upload started", start=mark)
    hang_up(sock, how)
    server.wait_line("app: upload disconnected", start=mark)
    assert_back_to(server, before)
    # The client left: nothing for the operator to fix (an EOF used to log "returned without a response").
    assert errors_since(server, mark) == []


@pytest.mark.parametrize("how", ["close", "reset"])
def test_disconnect_mid_request_head(server: ServerProcess, how: str) -> None:
    before = settled(server)
    sock = server.connect()
    sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nX-Half: ")
    wait_for(lambda: stats(server)["http_protocols"] == before["http_protocols"] + 1, 10, what="connection seen")
    hang_up(sock, how)
    assert_back_to(server, before)


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("path", ["/big?size=67108864", "/stream?gap=0.005"])
def test_disconnect_mid_response(server: ServerProcess, how: str, path: str) -> None:
    before = settled(server)
    mark = len(server.lines)
    sock = server.connect()
    sock.sendall(request(path))
    assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK\r\n")
    hang_up(sock, how)
    server.wait_line(r"app: (big|stream) send raised ClientDisconnected", start=mark)
    assert_back_to(server, before)
    assert errors_since(server, mark) == []


def own_server(serve) -> ServerProcess:  # type: ignore[no-untyped-def]
    """A server of its own for a test that could hang its worker (a short drain bounds the stop)."""
    return serve(APP, "--workers", "1", "--ws-ping-interval", "0", "--timeout-graceful-shutdown", "2")  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_reset_under_a_producer_that_never_waits_does_not_hang_the_worker(serve, how: str) -> None:  # type: ignore[no-untyped-def]
    # After the peer reset, the transport drops every write and never pauses; unless drain()
    # yields on a closing transport, a producer awaiting only send() spins forever and the
    # worker stops answering anyone (WebSocket: test_reset_during_a_websocket_flood).
    server = own_server(serve)
    before = settled(server)
    mark = len(server.lines)
    sock = server.connect()
    sock.sendall(request("/big?size=1000000000000"))  # 1 TB: the app sends until told it cannot
    got = 0
    while got < 8 << 20:
        got += len(sock.recv(1 << 20))
    hang_up(sock, how)
    server.wait_line("app: big send raised ClientDisconnected", start=mark, timeout=15)
    assert_back_to(server, before)


# ------------------------------------------------------------------ WebSockets that vanish


def _deflate_fragment() -> bytes:
    """The first fragment (RSV1, no FIN) of a permessage-deflate compressed text message."""
    compressor = zlib.compressobj(wbits=-9)
    data = compressor.compress(b"hello fragment " * 200) + compressor.flush(zlib.Z_SYNC_FLUSH)
    first = bytearray(frame(TEXT, data[: len(data) // 2], fin=False))
    first[0] |= 0x40  # RSV1: compressed (RFC 7692 §6)
    return bytes(first)


PARTIAL_MESSAGES = {
    "first-fragment": frame(TEXT, b"a" * 100, fin=False),  # a fragmented message never finished
    "partial-frame": frame(BINARY, b"b" * 1000)[:50],  # a frame cut inside its payload
    "partial-header": frame(BINARY, b"c" * 70_000)[:5],  # cut inside the 64-bit length
    "deflate-fragment": _deflate_fragment(),  # an inflater in mid-message
}


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("partial", sorted(PARTIAL_MESSAGES))
def test_disconnect_mid_websocket_message(server: ServerProcess, how: str, partial: str) -> None:
    before = settled(server)
    mark = len(server.lines)
    extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if partial == "deflate-fragment" else ""
    client = RawClient(server.connect())
    client.sock.sendall(upgrade_request("/ws/echo", extra=extra))
    status, headers, _ = client.read_head()
    assert status == 101
    if partial == "deflate-fragment":
        assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
    client.sock.sendall(frame(TEXT, b"whole"))  # one complete message first: the echo proves it was read
    opcode, fin, payload = client.read_frame()
    if partial == "deflate-fragment":  # the server compresses its answer (RFC 7692 §7.2.2)
        payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
    assert (opcode, fin, payload) == (TEXT, True, b"whole")
    client.sock.sendall(PARTIAL_MESSAGES[partial])
    hang_up(client.sock, how)
    server.wait_line("app: ws disconnect 1006", start=mark)
    assert_back_to(server, before)
    assert errors_since(server, mark) == []


@pytest.mark.parametrize("how", ["close", "reset"])
def test_reset_during_a_websocket_flood(serve, how: str) -> None:  # type: ignore[no-untyped-def]
    # The WebSocket side of the drain() spin.
    server = own_server(serve)
    before = settled(server)
    mark = len(server.lines)
    client = RawClient(server.connect())
    client.sock.sendall(upgrade_request("/ws/flood"))
    assert client.read_head()[0] == 101
    got = 0
    while got < 8 << 20:
        got += len(client.sock.recv(1 << 20))
    hang_up(client.sock, how)
    server.wait_line("app: flood send raised ClientDisconnected", start=mark, timeout=15)
    assert_back_to(server, before)


# ------------------------------------------------------------------ apps that raise: HTTP


def _after_disconnect(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)  # the app hears http.disconnect, then raises


HTTP_PHASES = {
    # phase: (request, what the client must see)
    "before-start": (request("/raise/before-start"), "500"),
    "after-start": (request("/raise/after-start"), "500"),  # the head was held back: a 500 still fits
    "mid-body": (request("/raise/mid-body"), "truncated"),
    "in-receive": (b"POST /raise/in-receive HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n", "500"),
    "after-receive": (b"POST /raise/after-receive HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", "500"),
    "after-end": (request("/raise/after-end"), "complete"),
    "after-disconnect": (request("/raise/after-disconnect"), "500"),
    "cancelled": (request("/raise/cancelled"), "500"),
}


@pytest.mark.parametrize("phase", sorted(HTTP_PHASES))
def test_http_app_raising_leaves_the_worker_serving(server: ServerProcess, phase: str) -> None:
    raw, expected = HTTP_PHASES[phase]
    before = settled(server)
    mark = len(server.lines)
    with server.connect(timeout=10) as sock:
        sock.sendall(raw)
        if phase == "after-disconnect":
            _after_disconnect(sock)
        if expected == "complete":
            status, _, body, buf = read_response(sock)
            assert (status, body) == (200, b"complete")
            sock.sendall(request("/pid"))  # the connection itself stays usable
            status, _, body, _ = read_response(sock, buf)
            assert (status, int(body)) == (200, before["pid"])
        else:
            data = recv_until_closed(sock)  # the server closes in every other phase
            if expected == "500":
                assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), data[:200]
                assert b"connection: close\r\n" in data
            else:  # head and a chunk went out, then the close: no terminating chunk, no 500
                assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"8\r\npartial \r\n"), data
    server.wait_line("Exception in ASGI application", start=mark)
    # Another connection is served by the same worker, and the failure left nothing behind.
    r = httpx.get(server.url + "/pid", timeout=10)
    assert (r.status_code, int(r.text)) == (200, before["pid"])
    assert_back_to(server, before)


# ------------------------------------------------------------------ apps that raise: WebSocket


WS_PHASES = {
    # phase: (status of the handshake answer, close code the client receives or None)
    "before-accept": (500, None),
    "after-accept": (101, 1011),
    "mid": (101, 1011),
    "in-receive": (101, 1011),
    "denial-start": (500, None),
    "denial-body": (500, None),
    "after-reject": (403, None),  # the app refused (403), then raised: the refusal stands
    "after-close": (101, 4001),  # the app's own close went out before it raised
    "after-disconnect": (101, 1000),  # the client closed first; the app raised afterwards
    "cancelled-before-accept": (500, None),
    "cancelled-after-accept": (101, 1011),
}


@pytest.mark.parametrize("phase", sorted(WS_PHASES))
def test_websocket_app_raising_leaves_the_worker_serving(server: ServerProcess, phase: str) -> None:
    status, code = WS_PHASES[phase]
    before = settled(server)
    mark = len(server.lines)
    client = RawClient(server.connect(timeout=10))
    client.sock.sendall(upgrade_request(f"/ws/raise/{phase}"))
    got_status, headers, body = client.read_head()
    assert got_status == status, (phase, got_status, body)
    if status == 101:
        if phase == "mid":
            client.sock.sendall(frame(TEXT, b"hi"))
            assert client.read_frame() == (TEXT, True, b"hi")
            client.sock.sendall(frame(TEXT, b"boom"))
        if phase == "after-disconnect":
            client.sock.sendall(frame(CLOSE, close_payload(1000)))
        assert client.read_close()[0] == code
        if phase in ("after-close",):
            client.sock.sendall(frame(CLOSE, close_payload(code)))  # complete the closing handshake
    else:
        assert headers["connection"] == "close"
    assert client.at_eof()  # and the server closed the TCP connection
    client.sock.close()
    server.wait_line("Exception in ASGI application", start=mark)
    # The worker goes on: a WebSocket echo and a plain request on new connections, same pid.
    with ws_connect(f"ws://{server.host}:{server.port}/ws/echo", open_timeout=10, close_timeout=10) as ws:
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
    r = httpx.get(server.url + "/pid", timeout=10)
    assert (r.status_code, int(r.text)) == (200, before["pid"])
    assert_back_to(server, before)


# ------------------------------------------------------------------ kill -9 under load


class KeepAliveLoad:
    """Threads, each on its own keep-alive connection, sending GET /pid until stopped.

    Every answer names the worker that served it, so a failure is attributed to the worker
    that last answered on that connection. After a failure the thread opens a new one.
    """

    def __init__(self, server: ServerProcess, connections: int) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.answers: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[tuple[int | None, str]] = []  # (pid the connection was on, error)
        self.first_answer: dict[int, float] = {}
        self.conn_pids: dict[int, int] = {}  # thread index -> pid of its current connection
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(connections)]

    def __enter__(self) -> KeepAliveLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            pid: int | None = None
            try:
                with self.server.connect(timeout=10) as sock:
                    buf = bytearray()
                    while not self.stop.is_set():
                        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
                        status, _, body, buf = read_response(sock, buf)
                        with self.lock:
                            self.statuses[status] += 1
                            if status == 200:
                                pid = int(body)
                                self.answers[pid] += 1
                                self.first_answer.setdefault(pid, time.monotonic())
                                self.conn_pids[index] = pid
            except (OSError, ConnectionError) as exc:
                with self.lock:
                    self.failures.append((pid, f"{type(exc).__name__}: {exc}"))
                    self.conn_pids.pop(index, None)

    def wait(self, predicate: object, timeout: float = 30.0, what: str = "") -> object:
        def check() -> object:
            with self.lock:
                return predicate()  # type: ignore[operator]

        return wait_for(check, timeout, 0.01, what)


def test_kill_9_under_load_fails_only_the_victims_connections(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(APP, "--workers", "2")
    workers = serving_pids(server, 2)
    victim = min(workers)
    (survivor,) = workers - {victim}
    with KeepAliveLoad(server, connections=12) as load:
        # Both workers hold some of the keep-alive connections (per-slot SO_REUSEPORT spreads them).
        load.wait(lambda: len(load.conn_pids) == 12, what="every connection answered once")
        load.wait(lambda: {victim, survivor} <= set(load.conn_pids.values()), what="both workers on the load")
        load.wait(lambda: min(load.answers[victim], load.answers[survivor]) >= 20, what="requests on both")
        on_victim = sum(1 for p in load.conn_pids.values() if p == victim)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replacement() -> int | None:
            # A new connection lands on either slot's socket; on the dead slot's it waits in
            # the queue (the master keeps the socket) until the replacement accepts it.
            status, body = get(server)
            assert status == 200
            return int(body) if int(body) not in workers else None

        new_pid = wait_for(replacement, 20, 0, "a replacement answering")
        replaced_after = time.monotonic() - killed_at
        served = load.answers[survivor]
        load.wait(lambda: load.answers[survivor] >= served + 20, what="the survivor serving on")
    print(f"kill -9 of a worker with {on_victim} of 12 keep-alive connections: {len(load.failures)} failed, "
          f"replacement {new_pid} answered {replaced_after:.3f}s after the kill; answers {dict(load.answers)}")
    assert not alive(victim)
    assert children(server.pid) == {survivor, new_pid}, (children(server.pid), survivor, new_pid)
    # Every response was a 200: the survivor never answered an error for its dead sibling.
    assert set(load.statuses) == {200}, load.statuses
    # Failures are connection errors on connections to the killed worker only, at most one each.
    assert load.failures, "the killed worker had connections: they must have failed"
    assert {pid for pid, _ in load.failures} == {victim}, load.failures
    assert len(load.failures) <= on_victim, (on_victim, load.failures)
    server.wait_line(rf"Worker {victim} exited unexpectedly \(signal 9\)")


# ------------------------------------------------------------------ the clean case


def test_a_websocket_closed_normally_leaves_nothing_either(server: ServerProcess) -> None:
    # The yardstick for the leak checks above: the websockets client's own closing handshake.
    before = settled(server)
    mark = len(server.lines)
    with ws_connect(f"ws://{server.host}:{server.port}/ws/echo", open_timeout=10, close_timeout=10) as ws:
        ws.send(b"\x00" * 100_000)
        assert ws.recv(timeout=10) == b"\x00" * 100_000
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=1)
    server.wait_line("app: ws disconnect 1000", start=mark)
    assert_back_to(server, before)
