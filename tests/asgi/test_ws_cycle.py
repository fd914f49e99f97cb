"""WebSocketCycle with a fake channel: ASGI message order, errors, backpressure (real loop, no sockets)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from fastgate.asgi.ws_cycle import ASGIWebSocketState, Inbox, WebSocketCycle
from fastgate.errors import ASGIProtocolError, ClientDisconnected
from fastgate.ws.session import WebSocketSession
from tests.ws.test_session import parse_head


def async_test(fn: Any) -> Any:
    """Run an ``async def`` test on a fresh loop (no pytest-asyncio in this project)."""
    import functools
    import inspect

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 10), debug=True)

    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


class FakeChannel:
    """Collects what the session writes and puts its events in the inbox, like WebSocketProtocol."""

    def __init__(self) -> None:
        self.inbox: Inbox
        self.session: WebSocketSession
        self.written: list[bytes] = []
        self.paused = False
        self.pauses = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def state_changed(self) -> None:
        self.written.extend(self.session.data_to_send())
        for message in self.session.events_received():
            if self.inbox.put(message):
                self.pause_reading()

    async def drain(self) -> None:
        await self.drained.wait()

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


def make(max_queue: int = 4) -> tuple[WebSocketCycle, FakeChannel, ClientProtocol]:
    client = ClientProtocol(parse_uri("ws://t/ws"))
    client.send_request(client.connect())
    session = WebSocketSession()
    assert session.receive_request(parse_head(b"".join(client.data_to_send())))
    channel = FakeChannel()
    scope = {"type": "websocket", "path": "/ws", "extensions": {"websocket.http.response": {}}}
    inbox = Inbox(max_queue)
    cycle = WebSocketCycle(scope, session, channel, inbox)
    channel.inbox, channel.session = inbox, session
    return cycle, channel, client


def client_reads(channel: FakeChannel, client: ClientProtocol) -> list[Any]:
    for data in channel.written:
        if data:
            client.receive_data(data)
    channel.written.clear()
    return client.events_received()


def from_client(channel: FakeChannel, client: ClientProtocol) -> None:
    for data in client.data_to_send():
        if data:
            channel.session.receive_data(data)
    channel.state_changed()


@async_test
async def test_connect_accept_echo_close():
    cycle, channel, client = make()

    async def app(scope, receive, send):
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "subprotocol": None})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"] + "!"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})

    task = asyncio.create_task(cycle.run(app))
    while cycle.state is ASGIWebSocketState.CONNECTING:
        await asyncio.sleep(0)
    assert isinstance(client_reads(channel, client)[0], Response)
    client.send_text(b"hi")
    from_client(channel, client)
    await asyncio.wait_for(task, 5)
    events = client_reads(channel, client)
    assert [(f.opcode, bytes(f.data)) for f in events if isinstance(f, Frame)][0] == (Opcode.TEXT, b"hi!")
    assert client.close_rcvd == Close(4000, "done")
    assert cycle.state is ASGIWebSocketState.CLOSED


@async_test
async def test_close_before_accept_is_403():
    cycle, channel, _ = make()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    await cycle.run(app)
    assert channel.written[0].startswith(b"HTTP/1.1 403 ")
    assert channel.written[-1] == b""


@async_test
async def test_return_without_accept_is_403():
    cycle, channel, _ = make()

    async def app(scope, receive, send):
        await receive()

    await cycle.run(app)
    assert channel.written[0].startswith(b"HTTP/1.1 403 ")


@async_test
async def test_denial_response_streams_into_one_response():
    cycle, channel, _ = make()

    async def app(scope, receive, send):
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"www-authenticate", b"Bearer"), (b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})

    await cycle.run(app)
    head, _, body = channel.written[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized")
    assert b"www-authenticate: Bearer" in head and b"Content-Length: 8" in head
    assert body == b"no entry"


@async_test
async def test_incomplete_denial_response_becomes_500(caplog):
    cycle, channel, _ = make()

    async def app(scope, receive, send):
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        await cycle.run(app)
    assert channel.written[0].startswith(b"HTTP/1.1 500 ")
    assert "denial response" in caplog.text


@async_test
async def test_app_raising_before_accept_is_500(caplog):
    cycle, channel, _ = make()

    async def app(scope, receive, send):
        raise ValueError("broken")

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        await cycle.run(app)
    assert channel.written[0].startswith(b"HTTP/1.1 500 ")
    assert "Exception in ASGI application" in caplog.text and "broken" in caplog.text


@async_test
async def test_app_raising_after_accept_is_1011(caplog):
    cycle, channel, client = make()

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        raise ValueError("broken later")

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        await cycle.run(app)
    client_reads(channel, client)
    assert client.close_rcvd is not None and client.close_rcvd.code == 1011
    assert "broken later" in caplog.text


@async_test
async def test_app_returning_after_accept_closes_1000():
    cycle, channel, client = make()

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})

    await cycle.run(app)
    client_reads(channel, client)
    assert client.close_rcvd == Close(1000, "")


@async_test
async def test_send_after_disconnect_raises_oserror_not_logged(caplog):
    cycle, channel, client = make()
    seen: list[BaseException] = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        client_reads(channel, client)
        client.send_close(1001, "going away")
        from_client(channel, client)
        message = await receive()
        assert message == {"type": "websocket.disconnect", "code": 1001, "reason": "going away"}
        assert await receive() == message  # stays disconnected
        try:
            await send({"type": "websocket.send", "text": "late"})
        except OSError as exc:
            seen.append(exc)
            raise

    with caplog.at_level(logging.DEBUG, "fastgate.error"):
        await cycle.run(app)
    assert isinstance(seen[0], ClientDisconnected)
    assert caplog.records == []


@async_test
async def test_accept_after_client_left_raises_client_disconnected():
    cycle, channel, _ = make()
    channel.session.receive_eof()
    channel.state_changed()

    async def app(scope, receive, send):
        await receive()
        assert (await receive())["type"] == "websocket.disconnect"
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.accept"})

    await cycle.run(app)
    assert channel.written == []


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "before accept"},
        {"type": "websocket.http.response.body", "body": b""},
        {"type": "websocket.accept", "headers": [(b"x", "not bytes")]},
        {"type": "websocket.http.response.start", "status": 101},
        {"type": "http.response.start", "status": 200},
    ],
)
@async_test
async def test_misuse_before_accept_raises(message):
    cycle, _, _ = make()
    await cycle.receive()
    with pytest.raises(ASGIProtocolError):
        await cycle.send(message)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send"},
        {"type": "websocket.send", "text": "a", "bytes": b"b"},
        {"type": "websocket.send", "text": b"bytes as text"},
        {"type": "websocket.send", "bytes": "text as bytes"},
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1005},
    ],
)
@async_test
async def test_misuse_after_accept_raises(message):
    cycle, _, _ = make()
    await cycle.send({"type": "websocket.accept"})
    with pytest.raises(ASGIProtocolError):
        await cycle.send(message)


@async_test
async def test_send_after_app_close_is_a_protocol_error():
    cycle, _, _ = make()
    await cycle.send({"type": "websocket.accept"})
    await cycle.send({"type": "websocket.close"})
    with pytest.raises(ASGIProtocolError):
        await cycle.send({"type": "websocket.send", "text": "x"})


@async_test
async def test_full_queue_pauses_reading_until_the_app_catches_up():
    cycle, channel, client = make(max_queue=4)
    await cycle.receive()
    await cycle.send({"type": "websocket.accept"})
    client_reads(channel, client)
    for i in range(6):
        client.send_text(str(i).encode())
    from_client(channel, client)
    assert channel.paused and channel.pauses == 1
    received = []
    for _ in range(3):
        received.append((await cycle.receive())["text"])
    assert channel.paused  # 3 still queued: above max_queue // 2
    received.append((await cycle.receive())["text"])
    assert not channel.paused
    received += [(await cycle.receive())["text"] for _ in range(2)]
    assert received == ["0", "1", "2", "3", "4", "5"]


@async_test
async def test_send_waits_for_the_transport_to_drain():
    cycle, channel, _ = make()
    await cycle.send({"type": "websocket.accept"})
    channel.drained.clear()
    send = asyncio.create_task(cycle.send({"type": "websocket.send", "bytes": b"x" * 10}))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not send.done()
    channel.drained.set()
    await asyncio.wait_for(send, 5)


@async_test
async def test_cancelled_app_closes_1012():
    cycle, channel, client = make()
    started = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(cycle.run(app))
    await started.wait()
    task.cancel()
    await asyncio.wait_for(task, 5)
    client_reads(channel, client)
    assert client.close_rcvd is not None and client.close_rcvd.code == 1012


@pytest.mark.parametrize("accept", [False, True])
def test_a_cancelled_error_nobody_requested_is_an_app_error(accept, caplog):
    # Not a drain: 500 before the handshake, 1011 after it, and logged (was 503 / 1012, silent).
    @async_test
    async def scenario():
        cycle, channel, client = make()

        async def app(scope, receive, send):
            await receive()
            if accept:
                await send({"type": "websocket.accept"})
            raise asyncio.CancelledError()

        await asyncio.create_task(cycle.run(app))
        return channel, client

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        channel, client = scenario()
    events = client_reads(channel, client)
    if accept:
        assert client.close_rcvd is not None and client.close_rcvd.code == 1011
    else:
        assert isinstance(events[0], Response) and events[0].status_code == 500
    assert "Exception in ASGI application" in caplog.text
