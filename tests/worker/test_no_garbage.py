"""Closed connections are freed by reference counting, not left to the cyclic GC.

A reference cycle per connection (protocol <-> parser callbacks, bound methods stored on
the protocol) makes every closed connection garbage that only a collection frees: the
collections then run far more often, and in a large application each gen-2 pass walks
its whole heap. Real uvloop server, real client sockets, on loopback.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from fastgate import config as cfg
from fastgate.worker.protocol import HttpProtocol
from fastgate.worker.server import Worker
from fastgate.worker.websocket import WebSocketProtocol
from tests import apps


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    gc.collect()
    gc.disable()  # no automatic collection in between: what is left in cycles stays
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def _ws_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


async def _serve(app: Any, client: Any, count: int) -> list[Any]:
    worker = Worker(cfg.build({"app": "x:y"}), app, [])
    worker.ready = True
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(worker), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers = []
    try:
        for _ in range(count):
            answers.append(await asyncio.wait_for(client(port), 5))
        await asyncio.wait_for(worker.all_closed.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
        worker.sweeper.close()
    return answers


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 "),  # closed by us
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 "),  # keep-alive; the client half-closes
        (b"BROKEN\r\n\r\n", b"HTTP/1.1 400 "),  # rejected
    ],
)
def test_closed_connections_leave_no_cycles(saved_garbage: list[Any], request_bytes: bytes,
                                            expected: bytes) -> None:
    async def client(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        writer.write_eof()  # nothing more to send: the server closes after answering
        answer = await reader.read()  # until the server closes
        writer.close()
        await writer.wait_closed()
        return answer

    answers = uvloop.run(_serve(apps.http_app, client, 20))
    assert len(answers) == 20 and all(a.startswith(expected) for a in answers), answers[:1]
    gc.collect()
    leaked = [o for o in saved_garbage if isinstance(o, HttpProtocol)]
    assert leaked == [], f"{len(leaked)} of 20 closed connections were freed only by the cyclic GC"


def test_closed_websockets_leave_no_cycles(saved_garbage: list[Any]) -> None:
    from websockets.asyncio.client import connect

    async def client(port: int) -> str:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("hi")
            return str(await ws.recv())

    assert uvloop.run(_serve(_ws_echo, client, 10)) == ["hi"] * 10
    gc.collect()
    leaked = [o for o in saved_garbage if isinstance(o, (HttpProtocol, WebSocketProtocol))]
    assert leaked == [], f"{len(leaked)} protocol objects were freed only by the cyclic GC"
