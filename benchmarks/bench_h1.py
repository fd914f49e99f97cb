"""Micro-benchmark of fastgate's per-request path without sockets.

Three layers, each a superset of the one before, so a hot-path change can be judged
without network noise (CPU time of this process, best of the repeats, so other jobs on the machine disturb it little):

* ``h1``:       ``H1Connection`` alone: bytes in, ``RequestHead`` + ``END_OF_REQUEST`` out,
                ``start_response`` with the body, ``start_next_request``.
* ``cycle``:    plus the ASGI scope and a ``RequestCycle`` over a fake channel, the app's
                coroutine driven inline (``send(None)`` until ``StopIteration``): the ASGI cost.
* ``protocol``: ``HttpProtocol.data_received`` on a fake transport inside a uvloop loop,
                one request at a time, until the response is written: everything but the
                kernel (task creation, timers, flow control included).
* ``close``:    as ``protocol`` with ``Connection: close``: a new ``HttpProtocol`` per
                request (``connection_made`` to ``connection_lost``).

    python benchmarks/bench_h1.py                 # all modes
    python benchmarks/bench_h1.py --mode protocol -n 200000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastgate.asgi.http_cycle import RequestCycle  # noqa: E402
from fastgate.asgi.scope import ConnectionInfo, build_scope  # noqa: E402
from fastgate.config import Config, replace  # noqa: E402
from fastgate.http.events import END_OF_REQUEST, RequestHead  # noqa: E402
from fastgate.http.h1 import DefaultHeaders, H1Connection  # noqa: E402

# What wrk sends for `wrk http://127.0.0.1:8000/`.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
# A browser-ish request: more headers to parse and copy into the scope.
REQUEST_BIG = (
    b"GET /api/items?page=2&sort=name HTTP/1.1\r\nHost: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\nCookie: session=abcdef0123456789; theme=dark\r\n"
    b"Cache-Control: max-age=0\r\n\r\n"
)
HEADERS = [(b"content-type", b"text/plain")]
BODY = b"Hello, world!"
START = {"type": "http.response.start", "status": 200, "headers": HEADERS}
BODY_MSG = {"type": "http.response.body", "body": BODY}


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY_MSG)


def _defaults() -> DefaultHeaders:
    d = DefaultHeaders()
    d.date = b"date: Tue, 24 Nov 2026 16:00:00 GMT\r\n"
    return d


def bench_h1(n: int, request: bytes) -> float:
    conn = H1Connection(defaults=_defaults())
    receive, next_event = conn.receive_data, conn.next_event
    start, next_request = conn.start_response, conn.start_next_request
    t0 = time.process_time()
    for _ in range(n):
        receive(request)
        head = next_event()
        assert head.__class__ is RequestHead
        assert next_event() is END_OF_REQUEST
        start(200, HEADERS, BODY)
        next_request()
    return time.process_time() - t0


class FakeChannel:
    """Just enough ``Channel`` for a cycle: counts bytes, reuses the connection."""

    def __init__(self, conn: H1Connection) -> None:
        self.conn = conn
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    async def drain(self) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def state_changed(self) -> None:
        self.conn.start_next_request()


def bench_cycle(n: int, request: bytes) -> float:
    conn = H1Connection(defaults=_defaults())
    channel = FakeChannel(conn)
    info = ConnectionInfo(("127.0.0.1", 50000), ("127.0.0.1", 8000))
    t0 = time.process_time()
    for _ in range(n):
        conn.receive_data(request)
        head = conn.next_event()
        assert head.__class__ is RequestHead
        assert conn.next_event() is END_OF_REQUEST
        cycle = RequestCycle(build_scope(head, info), conn, channel)  # type: ignore[arg-type]
        cycle.feed_end()
        coro = cycle.run(hello)
        try:
            coro.send(None)
        except StopIteration:
            pass
        else:
            raise RuntimeError("the app suspended")
    elapsed = time.process_time() - t0
    assert channel.written > 0
    return elapsed


class FakeTransport:
    """An asyncio transport that records nothing but the count of writes."""

    def __init__(self) -> None:
        self.writes = 0
        self.closing = False
        self.extra = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000), "socket": None,
                      "sslcontext": None}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, chunks: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def bench_protocol(n: int, request: bytes) -> float:
    return _run_protocol(n, request, per_connection=False)


def bench_close(n: int, request: bytes) -> float:
    return _run_protocol(n, request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1),
                         per_connection=True)


def _run_protocol(n: int, request: bytes, per_connection: bool) -> float:
    import uvloop

    from fastgate.worker.protocol import HttpProtocol
    from fastgate.worker.server import Worker

    config = replace(Config(), access_log=False, app="bench:hello")

    async def main() -> float:
        worker = Worker(config, hello, [])
        worker.settings.defaults.date = b"date: Tue, 24 Nov 2026 16:00:00 GMT\r\n"
        sleep = asyncio.sleep
        if per_connection:
            t0 = time.process_time()
            for _ in range(n):
                proto = HttpProtocol(worker)
                transport = FakeTransport()
                proto.connection_made(transport)  # type: ignore[arg-type]
                proto.data_received(request)
                if transport.writes == 0 or proto.cycle is not None:
                    await sleep(0)
                assert transport.closing, "Connection: close did not close"
                proto.connection_lost(None)
            return time.process_time() - t0
        proto = HttpProtocol(worker)
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        feed = proto.data_received
        t0 = time.process_time()
        for _ in range(n):
            feed(request)
            if transport.writes == 0 or proto.cycle is not None:
                # The response is produced by a task: let the loop run it.
                await sleep(0)
            transport.writes = 0
        elapsed = time.process_time() - t0
        assert proto.cycle is None and not transport.closing, "the request did not complete"
        proto.connection_lost(None)
        worker.sweeper.close()
        return elapsed

    return uvloop.run(main())


# ------------------------------------------------------------------ WebSocket, one message in flight

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _ws_frame(text: bytes = b"x" * 32, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A masked text frame as a client sends it (ws_load.py's 32-byte message)."""
    return bytes((0x81, 0x80 | len(text))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


WS_FRAME = _ws_frame()


async def ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """benchmarks/app.py's WebSocket echo."""
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message["text"]})


def bench_ws_websockets(n: int, request: bytes) -> float:
    """websockets' sans-I/O ServerProtocol alone: parse a frame, build the echo's frame."""
    from websockets.frames import Frame
    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    proto = ServerProtocol()
    proto.state = OPEN
    proto.parser = proto.parse()  # skip the handshake: frames straight away
    next(proto.parser)
    frame = WS_FRAME
    t0 = time.process_time()
    for _ in range(n):
        proto.receive_data(frame)
        for event in proto.events_received():
            assert isinstance(event, Frame)
            proto.send_text(event.data)
        proto.data_to_send()
    return time.process_time() - t0


def bench_ws_session(n: int, request: bytes) -> float:
    """Plus fastgate's WebSocketSession: ASGI messages in and out (text decoded, encoded)."""
    from fastgate.ws.session import WebSocketSession

    head = _upgrade_head()
    session = WebSocketSession()
    assert session.receive_request(head)
    session.accept()
    session.data_to_send()
    frame = WS_FRAME
    t0 = time.process_time()
    for _ in range(n):
        session.receive_data(frame)
        for message in session.events_received():
            session.send_text(message["text"])
        session.data_to_send()
    return time.process_time() - t0


def _upgrade_head() -> RequestHead:
    conn = H1Connection(defaults=_defaults())
    conn.receive_data(UPGRADE)
    event = conn.next_event()
    head = getattr(event, "head", None)
    assert isinstance(head, RequestHead), event
    return head


def bench_ws_protocol(n: int, request: bytes) -> float:
    """WebSocketProtocol.data_received on a fake transport in a uvloop loop, the echo app in
    its task: everything but the kernel, one message in flight (the chat pattern)."""
    import uvloop

    from fastgate.http.events import UpgradeRequest
    from fastgate.worker.flow import FlowControl
    from fastgate.worker.server import Worker
    from fastgate.worker.websocket import WebSocketProtocol

    config = replace(Config(), access_log=False, app="bench:ws_echo", ws_ping_interval=0.0)

    async def main() -> float:
        worker = Worker(config, ws_echo, [])
        transport = FakeTransport()
        info = ConnectionInfo(("127.0.0.1", 50000), ("127.0.0.1", 8000))
        proto = WebSocketProtocol(worker, transport, FlowControl(transport), info)  # type: ignore[arg-type]
        proto.start(UpgradeRequest(_upgrade_head(), b""))
        for _ in range(10):  # the app accepts: the 101 goes out
            await asyncio.sleep(0)
        assert transport.writes == 1, "no 101"
        feed = proto.data_received
        sleep = asyncio.sleep
        frame = WS_FRAME
        t0 = time.process_time()
        for _ in range(n):
            transport.writes = 0
            feed(frame)
            while transport.writes == 0:  # the app's task echoes; the write buffer flushes at the iteration's end
                await sleep(0)
        elapsed = time.process_time() - t0
        proto.connection_lost(None)
        await sleep(0)
        worker.sweeper.close()
        return elapsed

    return uvloop.run(main())


MODES = {"h1": bench_h1, "cycle": bench_cycle, "protocol": bench_protocol, "close": bench_close,
         "ws_websockets": bench_ws_websockets, "ws_session": bench_ws_session, "ws_protocol": bench_ws_protocol}
# What `--mode all` runs (the WebSocket modes are asked for by name or with --mode ws).
HTTP_MODES = ("h1", "cycle", "protocol", "close")
WS_MODES = ("ws_websockets", "ws_session", "ws_protocol")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastgate sans-I/O and protocol micro-benchmark")
    p.add_argument("--mode", choices=[*MODES, "all", "ws"], default="all",
                   help="one mode; all: the HTTP ones; ws: the WebSocket ones (one message in flight)")
    p.add_argument("-n", type=int, default=100_000, help="requests per repeat")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--big", action="store_true", help="a browser-like request with 9 headers")
    args = p.parse_args(argv)
    request = REQUEST_BIG if args.big else REQUEST
    modes = list(HTTP_MODES) if args.mode == "all" else list(WS_MODES) if args.mode == "ws" else [args.mode]
    for mode in modes:
        fn = MODES[mode]
        fn(min(args.n, 2000), request)  # warm-up
        times = []
        for _ in range(args.repeat):
            gc.collect()
            times.append(fn(args.n, request))
        best = min(times)
        med = sorted(times)[len(times) // 2]
        print(f"{mode:9} {args.n / best:11,.0f} req/s   best {best / args.n * 1e6:6.2f} µs/req   "
              f"median {med / args.n * 1e6:6.2f} µs/req")
    return 0


if __name__ == "__main__":
    sys.exit(main())
