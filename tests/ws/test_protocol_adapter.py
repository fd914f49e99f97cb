"""WebSocketProtocol callbacks over a fake transport: flushing, timers, read backpressure (real loop)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from fastgate.config import Config, WebSocketSettings
from fastgate.http.events import UpgradeRequest
from fastgate.http.h1 import H1Connection
from fastgate.worker import websocket as ws_module
from fastgate.worker.protocol import HttpProtocol
from fastgate.worker.server import Worker
from fastgate.worker.websocket import WebSocketProtocol
from fastgate.ws.session import PENDING_LIMIT


def async_test(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 10), debug=True)

    return wrapper


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: Any = None
        self.written: list[bytes] = []
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.pauses = 0

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data


class Client:
    """A websockets ClientProtocol reading what the fake transport got."""

    def __init__(self) -> None:
        self.protocol = ClientProtocol(parse_uri("ws://t/ws"), max_size=None)
        self.protocol.send_request(self.protocol.connect())

    def request(self) -> bytes:
        return b"".join(self.protocol.data_to_send())

    def read(self, transport: FakeTransport) -> list[Any]:
        self.protocol.receive_data(transport.take())
        return self.protocol.events_received()

    def send(self, make: Any) -> bytes:
        make(self.protocol)
        return b"".join(self.protocol.data_to_send())


def connect(app: Any, request: bytes, **ws_settings: Any) -> tuple[FakeTransport, HttpProtocol]:
    config = Config(websocket=WebSocketSettings(**ws_settings))
    worker = Worker(config, app, [])
    transport = FakeTransport()
    http = HttpProtocol(worker)
    http.connection_made(transport)  # type: ignore[arg-type]
    http.data_received(request)
    return transport, http


async def until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


@async_test
async def test_upgrade_hands_the_transport_over_and_registers_the_websocket():
    client = Client()
    transport, http = connect(echo_app, client.request())
    ws = transport.protocol
    assert isinstance(ws, WebSocketProtocol)
    worker = http.worker
    assert worker.connections == {ws}
    assert not worker.all_closed.is_set()
    await until(lambda: transport.written)
    assert isinstance(client.read(transport)[0], Response)
    ws.data_received(client.send(lambda c: c.send_text(b"ping?")))
    await until(lambda: transport.written)
    assert [bytes(f.data) for f in client.read(transport)] == [b"ping?"]
    ws.connection_lost(None)
    await until(lambda: ws.task.done())
    assert worker.connections == set() and worker.all_closed.is_set()


@async_test
async def test_full_queue_pauses_the_transport_and_pings_wait_for_it():
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    client = Client()
    transport, _ = connect(slow_app, client.request(), ws_max_queue=3, ws_ping_interval=0)
    ws = transport.protocol
    await until(lambda: ws.session.is_open)
    client.read(transport)
    ws.data_received(b"".join(client.send(lambda c, i=i: c.send_text(b"%d" % i)) for i in range(5)))
    assert not transport.reading and transport.pauses == 1
    # Keepalive starts only now, so a slow test machine cannot time it out earlier.
    ws.ping_interval = ws.ping_timeout = 0.05
    ws.state_changed()
    # Pings go out, the client cannot be heard (we are not reading): no 1011.
    await until(lambda: any(f.opcode is Opcode.PING for f in client.read(transport) if isinstance(f, Frame)))
    await asyncio.sleep(0.2)
    assert ws.session.is_open and not transport.closed
    release.set()
    await until(lambda: transport.reading)
    # Reading again and the (deaf) client still owes its pong: now the timeout applies.
    await until(lambda: ws.session.disconnected)
    client.read(transport)
    assert client.protocol.close_rcvd is not None and client.protocol.close_rcvd.code == 1011


@async_test
async def test_pong_timeout_fails_with_1011():
    client = Client()
    transport, _ = connect(echo_app, client.request(), ws_ping_interval=0.05, ws_ping_timeout=0.05)
    ws = transport.protocol
    await until(lambda: ws.session.disconnected)
    events = client.read(transport)
    assert client.protocol.close_rcvd is not None and client.protocol.close_rcvd.code == 1011
    assert any(isinstance(e, Frame) and e.opcode is Opcode.PING for e in events)
    assert transport.eof_written


@async_test
async def test_close_timer_aborts_a_peer_that_never_closes():
    ws_module.CLOSE_TIMEOUT, saved = 0.05, ws_module.CLOSE_TIMEOUT
    try:
        client = Client()
        transport, _ = connect(echo_app, client.request())
        ws = transport.protocol
        await until(lambda: ws.session.is_open)
        client.read(transport)
        ws.data_received(client.send(lambda c: c.send_close(1000)))
        assert transport.eof_written  # close echoed, then our EOF
        await until(lambda: transport.aborted)
    finally:
        ws_module.CLOSE_TIMEOUT = saved


@async_test
async def test_bytes_before_accept_are_bounded():
    accept = asyncio.Event()

    async def late_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await accept.wait()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    client = Client()
    transport, _ = connect(late_app, client.request())
    ws = transport.protocol
    early = Frame(Opcode.BINARY, b"x" * 1000).serialize(mask=True, extensions=[])
    for _ in range(PENDING_LIMIT // 1000 + 2):
        ws.data_received(early)
    assert not transport.reading
    accept.set()
    await until(lambda: transport.reading)


@async_test
async def test_shutdown_before_accept_answers_503():
    never = asyncio.Event()

    async def undecided(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        message = await receive()
        assert message["type"] == "websocket.disconnect" and message["code"] == 1012
        await never.wait()

    client = Client()
    transport, _ = connect(undecided, client.request())
    ws = transport.protocol
    await asyncio.sleep(0.01)
    ws.shutdown()
    assert transport.take().startswith(b"HTTP/1.1 503 ")
    ws.abort()
    assert transport.aborted


def test_upgrade_event_type_is_what_h1_produces():
    # Guard for the hand-off: H1Connection emits UpgradeRequest with the bytes after the head.
    conn = H1Connection()
    client = Client()
    conn.receive_data(client.request() + b"extra")
    event = conn.next_event()
    assert isinstance(event, UpgradeRequest) and event.remainder == b"extra"
