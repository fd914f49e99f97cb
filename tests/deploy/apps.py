"""ASGI apps for the deployment tests (imported as ``tests.deploy.apps:app``)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

Scope = dict[str, Any]

# /stream?key=K waits here until /release?key=K arrives (same process: --workers 0 or 1).
_gates: dict[str, asyncio.Event] = {}


def _query(scope: Scope) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    return {k: v for k, v in pairs}


async def _respond(send: Any, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


async def _drain_body(receive: Any) -> int:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket_echo(scope, receive, send)
        return
    path, q = scope["path"], _query(scope)
    if path == "/whoami":
        size = await _drain_body(receive)
        info = {
            "client": list(scope["client"]) if scope["client"] else None,
            "scheme": scope["scheme"],
            "host": dict(scope["headers"]).get(b"host", b"").decode("latin-1"),
            "root_path": scope["root_path"],
            "server": list(scope["server"]) if scope["server"] else None,
            "headers": {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]},
            "http_version": scope["http_version"],
            "body_len": size,
            "pid": os.getpid(),
        }
        await _respond(send, 200, json.dumps(info).encode(), b"application/json")
    elif path == "/stream":
        # Streams "first", then waits for /release: the client holding "first" proves
        # the proxy forwarded it before the response was complete.
        gate = _gates.setdefault(q["key"], asyncio.Event())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-accel-buffering", b"no")]})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await asyncio.wait_for(gate.wait(), 30)
        await send({"type": "http.response.body", "body": b"second\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"last\n"})
        _gates.pop(q["key"], None)
    elif path == "/release":
        _gates.setdefault(q["key"], asyncio.Event()).set()
        await _respond(send, 200, b"released")
    elif path == "/slow":
        # The line tells a test the request is in flight before it signals the server.
        print(f"in flight {q.get('key', '-')}", flush=True)
        await asyncio.sleep(float(q.get("delay", "1")))
        await _respond(send, 200, b"slow done")
    elif path == "/pid":
        info = {"pid": os.getpid(), "ppid": os.getppid()}
        await _respond(send, 200, json.dumps(info).encode(), b"application/json")
    else:
        await _respond(send, 200, b"Hello, world!")


async def _websocket_echo(scope: Scope, receive: Any, send: Any) -> None:
    """Accept, then echo every message; the first text message "whoami" gets the scope."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "whoami":
            info = {"client": list(scope["client"]) if scope["client"] else None, "scheme": scope["scheme"]}
            await send({"type": "websocket.send", "text": json.dumps(info)})
        elif message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
