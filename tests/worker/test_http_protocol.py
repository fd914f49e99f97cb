"""HttpProtocol on a real event loop with a FakeTransport: callbacks, timers, flow control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fastgate import config as cfg
from fastgate.worker.protocol import HttpProtocol
from fastgate.worker.server import Worker
from tests import apps


class FakeTransport:
    def __init__(self, peer: Any = ("127.0.0.1", 4000), local: Any = ("127.0.0.1", 8000)) -> None:
        self.protocol: HttpProtocol | None = None
        self.written = bytearray()
        self.closing = False
        self.aborted = False
        self.reading = True
        self.half_close = False
        self.eof_written = False
        self.extra = {"peername": peer, "sockname": local, "socket": None, "sslcontext": None}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self._lost)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def _lost(self) -> None:
        assert self.protocol is not None
        self.protocol.connection_lost(None)

    def can_write_eof(self) -> bool:
        return self.half_close

    def write_eof(self) -> None:
        self.eof_written = True

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


def make_worker(app: Any = apps.http_app, **options: Any) -> Worker:
    config = cfg.build({"app": "x:y", **options})
    worker = Worker(config, app, [])
    worker.state["from"] = "lifespan"
    worker.ready = True
    return worker


def connect(worker: Worker, transport: FakeTransport | None = None) -> tuple[HttpProtocol, FakeTransport]:
    transport = transport or FakeTransport()
    protocol = HttpProtocol(worker)
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


def test_request_response_and_keep_alive_timer() -> None:
    async def main() -> None:
        worker = make_worker(timeout_keep_alive=0.05)
        protocol, transport = connect(worker)
        assert protocol in worker.connections and not worker.all_closed.is_set()
        protocol.data_received(GET)
        await until(lambda: b"Hello, world!" in transport.written)
        assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
        assert protocol.deadline > 0 and protocol._idle
        await until(lambda: transport.closing)  # idle keep-alive expired
        await until(lambda: worker.all_closed.is_set())
        assert protocol not in worker.connections and worker.requests_served == 1

    run(main)


def test_pipelining_pauses_reading_until_the_response() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET /slow?delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        assert not transport.reading  # the second request waits: stop reading
        await until(lambda: transport.written.count(b"HTTP/1.1 200") == 2)
        data = transport.take()
        assert data.index(b"slow done") < data.index(b"Hello, world!")
        assert transport.reading

    run(main)


def test_bad_request_is_answered_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")
        assert transport.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert transport.closing

    with caplog.at_level(logging.WARNING, "fastgate.error"):
        run(main)
    assert "rejected request from 127.0.0.1:4000: 400 missing Host header" in caplog.text


def test_bad_body_after_the_response_started_just_closes() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"POST /wait-disconnect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        await until(lambda: b"waiting" in transport.written)
        protocol.data_received(b"zz\r\n")
        assert transport.closing and b"400" not in transport.written
        await asyncio.sleep(0.01)

    run(main)


def test_bad_body_before_the_response_gets_400() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        assert transport.take().startswith(b"HTTP/1.1 400 ")
        await asyncio.sleep(0.01)  # the app sees http.disconnect and ends quietly

    run(main)


def test_header_deadline(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(timeout_request_header=0.05))
        protocol.data_received(b"GET / HTTP/1.1\r\n")
        await until(lambda: transport.closing)
        assert transport.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")

    with caplog.at_level(logging.WARNING, "fastgate.error"):
        run(main)
    assert "request head not received within 0.05s" in caplog.text


def test_header_deadline_is_armed_for_the_next_request_only_when_bytes_arrive() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(timeout_request_header=0.05, timeout_keep_alive=30))
        protocol.data_received(GET)
        await until(lambda: b"Hello" in transport.written)
        transport.take()
        assert protocol._idle
        protocol.data_received(b"GET / HT")  # a new head starts: now it has a deadline
        assert protocol.deadline > 0 and not protocol._idle
        await until(lambda: transport.closing)
        assert transport.take().startswith(b"HTTP/1.1 408 ")

    run(main)


def test_eof_with_a_request_in_flight_answers_then_closes() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET /slow?delay=0.02 HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        assert protocol.eof_received() is True
        await until(lambda: transport.closing)
        assert transport.take().count(b"HTTP/1.1 200 OK") == 2

    run(main)


def test_eof_when_idle_lets_the_transport_close() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        assert protocol.eof_received() is None
        transport.close()
        await asyncio.sleep(0)

    run(main)


def test_connection_lost_wakes_the_app() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET /wait-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: b"waiting" in transport.written)
        task = protocol.task
        assert task is not None
        protocol.connection_lost(ConnectionResetError())
        await asyncio.wait_for(task, 5)

    run(main)


def test_request_body_backpressure() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        size = 512 * 1024
        protocol.data_received(b"POST /stall-upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(8):
            protocol.data_received(b"x" * (size // 8))
        assert not transport.reading  # buffered past the high-water mark
        await until(lambda: apps._release_upload is not None)
        assert apps._release_upload is not None
        apps._release_upload.set()
        await until(lambda: b'"len": 524288' in transport.written)
        assert transport.reading

    run(main)


def test_write_backpressure_through_flow_control() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.pause_writing()
        protocol.data_received(b"GET /stream?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: b"chunk 0" in transport.written)
        await asyncio.sleep(0.02)
        assert b"chunk 2" not in transport.written  # send() wrote chunk 1, then waits for the drain
        protocol.resume_writing()
        await until(lambda: b"0\r\n\r\n" in transport.written)

    run(main)


def test_limit_concurrency_sheds_with_503() -> None:
    async def main() -> None:
        worker = make_worker(limit_concurrency=1)
        first, t1 = connect(worker)
        second, t2 = connect(worker)
        second.data_received(GET)
        data = t2.take()
        assert data.startswith(b"HTTP/1.1 503 ") and b"connection: close" in data
        assert t2.closing
        await until(lambda: second not in worker.connections)
        first.data_received(GET)
        await until(lambda: b"Hello" in t1.written)

    run(main)


def test_probes_answered_by_the_server_and_keep_alive() -> None:
    async def main() -> None:
        worker = make_worker(health_path="/healthz", ready_path="/readyz")
        protocol, transport = connect(worker)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        data = transport.take()
        assert data.count(b"HTTP/1.1 200 OK") == 2 and b"connection: close" not in data
        assert not transport.closing and worker.requests_served == 2
        worker.ready = False
        protocol.data_received(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert transport.take().startswith(b"HTTP/1.1 503 ")
        worker.ready, worker.draining = True, True
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        data = transport.take()
        assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data
        await until(lambda: transport.closing)

    run(main)


def test_shutdown_closes_idle_and_marks_busy() -> None:
    async def main() -> None:
        worker = make_worker(timeout_keep_alive=0.2)
        idle, t_idle = connect(worker)
        idle.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: b"200 OK" in t_idle.written)  # answered, now idle between requests
        fresh, t_fresh = connect(worker)
        busy, t_busy = connect(worker)
        busy.data_received(b"GET /slow?delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0)
        for protocol in (idle, fresh, busy):
            protocol.shutdown()
        # Nobody is closed at once: the idle one waits out its keep-alive window (a proxy
        # may be reusing it right now), the busy one finishes its response.
        assert not t_idle.closing and not t_busy.closing
        await until(lambda: t_idle.closing)
        # A just-accepted connection may already have sent its first request: it is
        # answered (with connection: close), not reset.
        assert not t_fresh.closing
        fresh.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: t_fresh.closing)
        assert b"connection: close" in t_fresh.written
        await until(lambda: t_busy.closing)
        assert b"connection: close" in t_busy.written
        worker.draining = True
        late, t_late = connect(worker)  # accepted while draining: served once, then closed
        late.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: t_late.closing)
        assert b"200 OK" in t_late.written and b"connection: close" in t_late.written

    run(main)


def test_abort_cancels_the_app() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET /slow?delay=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.01)
        task = protocol.task
        protocol.abort()
        assert transport.aborted
        assert task is not None
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
        assert transport.written == b""

    run(main)


def test_websocket_upgrade_is_handed_to_the_websocket_protocol() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker())
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await asyncio.sleep(0.01)
        assert transport.protocol is not protocol  # swapped to the WebSocket protocol
        assert type(transport.protocol).__name__ == "WebSocketProtocol"

    run(main)


def test_unix_socket_peer_scope_and_trust() -> None:
    import socket

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX)
        try:
            transport = FakeTransport(peer="", local="/run/fg.sock")
            transport.extra["socket"] = a
            protocol, transport = connect(make_worker(), transport)
            assert protocol.info.client is None and protocol.info.server == ("/run/fg.sock", None)
            assert protocol.info.proxy_trusted
            protocol.data_received(b"GET /root-info HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
            await until(lambda: b"1.2.3.4" in transport.written)
            assert b'"server": ["/run/fg.sock", null]' in transport.written
        finally:
            a.close()
            b.close()

    run(main)


def test_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(access_log_format='%(h)s "%(r)s" %(s)s %(b)s'))
        protocol.data_received(b"GET /?x=%0a HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: b"Hello" in transport.written)

    with caplog.at_level(logging.INFO, "fastgate.access"):
        run(main)
    assert '127.0.0.1:4000 "GET /?x=%0a HTTP/1.1" 200 13' in caplog.text


def test_json_access_log_record(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(log_format="json"))
        protocol.data_received(GET)
        await until(lambda: b"Hello" in transport.written)

    with caplog.at_level(logging.INFO, "fastgate.access"):
        run(main)
    record = next(r for r in caplog.records if r.name == "fastgate.access")
    assert record.access["status"] == 200 and record.access["path"] == "/"  # type: ignore[attr-defined]


def test_early_response_lingers_while_the_client_uploads() -> None:
    async def main() -> None:
        worker = make_worker()
        transport = FakeTransport()
        transport.half_close = True
        protocol, transport = connect(worker, transport)
        protocol.data_received(b"POST /reject-early HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc")
        await until(lambda: transport.eof_written)
        assert transport.take().startswith(b"HTTP/1.1 413 ")
        assert not transport.closing  # not yet: a close now would reset the upload
        lingering = transport.protocol
        assert lingering is not protocol and lingering is not None
        lingering.data_received(b"x" * 50000)  # discarded
        assert lingering.eof_received() is None
        transport.close()
        await until(lambda: protocol not in worker.connections)

    run(main)


def test_linger_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastgate.worker import linger

    monkeypatch.setattr(linger, "LINGER_SECONDS", 0.05)

    async def main() -> None:
        worker = make_worker()
        transport = FakeTransport()
        transport.half_close = True
        protocol, transport = connect(worker, transport)
        protocol.data_received(b"GET / HTTP/1.1\r\n\r\n")  # 400: maybe more is coming
        assert transport.eof_written and not transport.closing
        await until(lambda: transport.closing)
        await until(lambda: protocol not in worker.connections)

    run(main)
