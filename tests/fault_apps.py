"""The ASGI app of the fault-injection and resource tests (``tests.fault_apps:app``).

Every path does one thing the tests can name: report the worker's resources, stream,
read, or raise at a precise point of the HTTP or WebSocket exchange. What the app saw
is printed (``app: ...``), so a test can wait for the line instead of sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from typing import Any

Scope = dict[str, Any]
Receive = Any
Send = Any

TEXT = [(b"content-type", b"text/plain")]


def _say(*parts: object) -> None:
    print("app:", *parts, flush=True)


def _query(scope: Scope) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    return dict(pairs)


def stats() -> dict[str, int]:
    """What a leak would leave behind in this worker: tasks, fds and live protocol objects.

    The protocol classes are counted by name through the garbage collector, so a
    connection object kept alive by a stray reference shows up even with its socket closed.
    """
    names = {"HttpProtocol": 0, "WebSocketProtocol": 0, "RequestCycle": 0, "WebSocketCycle": 0}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in names and type(obj).__module__.startswith("fastgate."):
            names[name] += 1
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {
        "pid": os.getpid(),
        "rss_kib": rss,  # for the record only: memory is measured in benchmarks/resources.py
        "tasks": len(asyncio.all_tasks()),
        "fds": len(os.listdir("/proc/self/fd")),
        "http_protocols": names["HttpProtocol"],
        "ws_protocols": names["WebSocketProtocol"],
        "request_cycles": names["RequestCycle"],
        "ws_cycles": names["WebSocketCycle"],
    }


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or TEXT})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    elif kind == "http":
        await _http(scope, receive, send)
    else:
        await _websocket(scope, receive, send)


# ------------------------------------------------------------------ HTTP


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    q = _query(scope)
    if path == "/stats":
        # Collect first: the objects counted must be the live ones, not garbage awaiting a cycle.
        gc.collect()
        await _respond(send, 200, json.dumps(stats()).encode(), [(b"content-type", b"application/json")])
    elif path == "/pid":
        await _respond(send, 200, str(os.getpid()).encode())
    elif path == "/upload":
        _say("upload started")
        body = await _read_body(receive)
        if body is None:
            _say("upload disconnected")
            return
        await _respond(send, 200, str(len(body)).encode())
    elif path == "/big":  # Content-Length framed, sent in 64 KiB pieces
        size = int(q.get("size", str(64 * 1024 * 1024)))
        chunk = b"x" * 65536
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        _say("big started")
        sent = 0
        try:
            while sent < size:
                piece = chunk[: min(len(chunk), size - sent)]
                sent += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        except OSError as exc:
            _say("big send raised", type(exc).__name__)
            raise
    elif path == "/stream":  # chunked, a piece every `gap` seconds, until the client leaves
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        _say("stream started")
        try:
            for i in range(int(q.get("n", "1000000"))):
                await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
                await asyncio.sleep(float(q.get("gap", "0.01")))
        except OSError as exc:
            _say("stream send raised", type(exc).__name__)
            raise
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/raise/"):
        await _http_raise(path[len("/raise/"):], receive, send)
    else:
        await _respond(send, 200, b"ok")


class AppError(Exception):
    """What the app raises on purpose (so the log line is recognisable)."""


async def _http_raise(phase: str, receive: Receive, send: Send) -> None:
    if phase == "before-start":
        raise AppError("before http.response.start")
    if phase == "after-start":  # start sent, no body yet: the head is still unwritten
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        raise AppError("after http.response.start")
    if phase == "mid-body":
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"partial ", "more_body": True})
        raise AppError("in the middle of the body")
    if phase == "in-receive":  # the request body never comes: receive() is interrupted
        await asyncio.wait_for(receive(), 0.05)
        raise AssertionError("receive() should have timed out")
    if phase == "after-receive":
        await _read_body(receive)
        raise AppError("after receive()")
    if phase == "after-end":
        await _respond(send, 200, b"complete")
        raise AppError("after the response ended")
    if phase == "after-disconnect":
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        raise AppError("after http.disconnect")
    if phase == "cancelled":  # a CancelledError that nobody requested (a leaked timeout)
        raise asyncio.CancelledError()
    raise LookupError(phase)


# ------------------------------------------------------------------ WebSocket


async def _echo(receive: Receive, send: Send, stop: str | None = None) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _say("ws disconnect", message["code"])
            return
        if stop is not None and message.get("text") == stop:
            raise AppError("mid-conversation")
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    q = _query(scope)
    assert (await receive())["type"] == "websocket.connect"
    if path == "/ws/echo":
        await send({"type": "websocket.accept"})
        await _echo(receive, send)
    elif path == "/ws/flood":  # the server sends big messages until the client leaves
        await send({"type": "websocket.accept"})
        data = b"\x00" * int(q.get("size", str(1 << 20)))
        _say("flood started")
        try:
            while True:
                await send({"type": "websocket.send", "bytes": data})
        except OSError as exc:
            _say("flood send raised", type(exc).__name__)
    elif path == "/ws/raise/before-accept":
        raise AppError("before websocket.accept")
    elif path == "/ws/raise/after-accept":
        await send({"type": "websocket.accept"})
        raise AppError("after websocket.accept")
    elif path == "/ws/raise/mid":
        await send({"type": "websocket.accept"})
        await _echo(receive, send, stop="boom")
    elif path == "/ws/raise/in-receive":
        await send({"type": "websocket.accept"})
        await asyncio.wait_for(receive(), 0.05)
        raise AssertionError("receive() should have timed out")
    elif path == "/ws/raise/denial-start":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": TEXT})
        raise AppError("after websocket.http.response.start")
    elif path == "/ws/raise/denial-body":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": TEXT})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        raise AppError("in the middle of the denial body")
    elif path == "/ws/raise/after-reject":  # websocket.close before accept is a 403, then the app raises
        await send({"type": "websocket.close"})
        raise AppError("after rejecting")
    elif path == "/ws/raise/after-close":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "app done"})
        raise AppError("after websocket.close")
    elif path == "/ws/raise/cancelled-before-accept":  # a CancelledError that nobody requested
        raise asyncio.CancelledError()
    elif path == "/ws/raise/cancelled-after-accept":
        await send({"type": "websocket.accept"})
        raise asyncio.CancelledError()
    elif path == "/ws/raise/after-disconnect":
        await send({"type": "websocket.accept"})
        message = await receive()
        while message["type"] != "websocket.disconnect":
            message = await receive()
        raise AppError("after websocket.disconnect")
    else:
        await send({"type": "websocket.close"})
