"""The ASGI app every server runs in the benchmarks (``benchmarks.app:app``).

Kept deliberately thin, so the server's own cost dominates:

* ``GET /``          plaintext ``Hello, world!``
* ``GET /json``      a small JSON document (serialised per request, as a framework would)
* ``POST /echo``     reads the whole body and sends it back
* ``GET /stream``    1 MiB sent as 16 chunks of 64 KiB (``more_body``)
* websocket, any path: echoes every message back (text or bytes)
"""

from __future__ import annotations

import json
from typing import Any

PLAIN_HEADERS = [(b"content-type", b"text/plain")]
JSON_HEADERS = [(b"content-type", b"application/json")]
STREAM_HEADERS = [(b"content-type", b"application/octet-stream")]
HELLO = b"Hello, world!"
STREAM_CHUNK = b"x" * (64 * 1024)
STREAM_CHUNKS = 16


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        await _http(scope, receive, send)
    elif kind == "websocket":
        await _websocket(receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/":
        await send({"type": "http.response.start", "status": 200, "headers": PLAIN_HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif path == "/json":
        body = json.dumps({"message": "Hello, world!"}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})
    elif path == "/echo":
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        for _ in range(STREAM_CHUNKS - 1):
            await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": STREAM_CHUNK})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": PLAIN_HEADERS})
        await send({"type": "http.response.body", "body": b"not found"})


async def _websocket(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
