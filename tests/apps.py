"""ASGI apps used by the end-to-end tests (imported as ``tests.apps:NAME``)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

Scope = dict[str, Any]


async def _lifespan(receive: Any, send: Any, scope: Scope) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started_pid"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print("lifespan shutdown complete", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Any) -> tuple[bytes, list[dict[str, Any]]]:
    body = bytearray()
    messages = []
    while True:
        message = await receive()
        messages.append({k: v for k, v in message.items() if k != "body"})
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return bytes(body), messages


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _query(scope: Scope) -> dict[str, str]:
    out = {}
    for pair in scope["query_string"].decode().split("&"):
        if "=" in pair:
            k, v = pair.split("=", 1)
            out[k] = v
    return out


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """A multi-purpose app; the path selects the behaviour."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = _query(scope)
    if path.startswith("/echo"):
        body, _ = await _read_body(receive)
        info = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "root_path": scope["root_path"],
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "client": list(scope["client"]) if scope["client"] else None,
            "server": list(scope["server"]) if scope["server"] else None,
            "asgi": scope["asgi"],
            "extensions": list(scope.get("extensions", {})),
            "state": {k: v for k, v in scope.get("state", {}).items() if isinstance(v, (int, str))},
            "body_len": len(body),
            "pid": os.getpid(),
        }
        await _respond(send, 200, json.dumps(info).encode(), [(b"content-type", b"application/json")])
    elif path == "/upload":
        body, messages = await _read_body(receive)
        await _respond(send, 200, json.dumps({"len": len(body), "chunks": len(messages)}).encode())
    elif path == "/body":  # echo the raw body back
        body, _ = await _read_body(receive)
        await _respond(send, 200, body)
    elif path == "/slow":
        await asyncio.sleep(float(q.get("delay", "1")))
        await _respond(send, 200, b"slow done")
    elif path == "/stream":
        n = int(q.get("n", "3"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
            await asyncio.sleep(float(q.get("gap", "0")))
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size = int(q.get("size", str(8 * 1024 * 1024)))
        chunk = b"x" * 65536
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    elif path == "/raise":
        raise RuntimeError("boom before the response")
    elif path == "/raise-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after the response started")
    elif path == "/no-response":
        return
    elif path == "/bad-header":
        await _respond(send, 200, b"x", [(b"x-evil", b"a\r\nset-cookie: injected")])
    elif path == "/close":
        await _respond(send, 200, b"bye", [(b"connection", b"close")])
    elif path == "/wait-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        print(f"got {message['type']}", flush=True)
    elif path == "/expect":
        body, _ = await _read_body(receive)
        await _respond(send, 200, f"got {len(body)}".encode())
    elif path == "/reject-early":
        await _respond(send, 413, b"too big")
    elif path == "/head":
        await _respond(send, 200, b"body for GET", [(b"content-length", b"12")])
    elif path == "/pid":
        await _respond(send, 200, str(os.getpid()).encode())
    elif path == "/block":
        import time

        time.sleep(float(q.get("seconds", "60")))  # blocks the event loop on purpose
        await _respond(send, 200, b"unblocked")
    else:
        await _respond(send, 200, b"Hello, world!")


class ASGI2App:
    """An ASGI 2 double callable: instantiated with the scope, then awaited."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        if self.scope["type"] != "http":
            return
        await _respond(send, 200, b"asgi2 " + self.scope["path"].encode())


async def no_lifespan(scope: Scope, receive: Any, send: Any) -> None:
    """Raises on lifespan, as many plain apps do."""
    assert scope["type"] == "http", "only http"
    await _respond(send, 200, b"no lifespan here")


async def failing_startup(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _respond(send, 200, b"never")


def factory() -> Any:
    return app


not_callable = 42


# --------------------------------------------------------------------------- HTTP foundation e2e
# Added for tests/test_e2e_http*.py; paths not listed here behave exactly like ``app``.

_release_upload: asyncio.Event | None = None


async def http_app(scope: Scope, receive: Any, send: Any) -> None:
    """``app`` plus paths that announce what they do on stdout, so tests can wait for them."""
    global _release_upload
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    path = scope["path"]
    root = scope["root_path"]
    if root and path.startswith(root):
        path = path[len(root):]  # route below the mount point, as frameworks do
    q = _query(scope)
    if path == "/root-info":
        info = {k: scope[k] for k in ("root_path", "path", "scheme")}
        info["raw_path"] = scope["raw_path"].decode("latin-1")
        info["client"] = list(scope["client"]) if scope["client"] else None
        info["server"] = list(scope["server"]) if scope["server"] else None
        info["host"] = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        await _respond(send, 200, json.dumps(info).encode(), [(b"content-type", b"application/json")])
    elif path == "/announce-slow":  # a slow request the test knows is in flight
        print("slow request started", flush=True)
        await asyncio.sleep(float(q.get("delay", "2")))
        await _respond(send, 200, b"slow done")
    elif path == "/announce-slow-stream":  # a streamed response whose head is out when announced
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"slow ", "more_body": True})
        print("slow stream started", flush=True)
        await asyncio.sleep(float(q.get("delay", "1")))
        await send({"type": "http.response.body", "body": b"stream done"})
    elif path == "/stall-upload":  # read one chunk, then stop reading until /release-upload
        _release_upload = asyncio.Event()
        first = await receive()
        print("upload stalled", flush=True)
        await _release_upload.wait()
        body = b""
        if first.get("more_body"):
            body, _ = await _read_body(receive)
        await _respond(send, 200, json.dumps({"len": len(first.get("body", b"")) + len(body)}).encode())
    elif path == "/release-upload":
        if _release_upload is not None:
            _release_upload.set()
        await _respond(send, 200, b"released")
    elif path == "/big-progress":  # like /big, printing (every 256 KiB) how much went into send()
        size = int(q.get("size", str(64 * 1024 * 1024)))
        chunk = b"x" * 65536
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
            if sent % (256 * 1024) == 0:
                print(f"sent {sent}", flush=True)
    elif path == "/disconnect-then-send":  # wait for the client to leave, then try to send
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        try:
            await _respond(send, 200, b"too late")
        except OSError as exc:
            print(f"send after disconnect raised {type(exc).__name__}", flush=True)
            raise
    else:
        await app(scope, receive, send)


def http_app_factory() -> Any:
    return http_app


class _Missing:
    pass


not_callable_instance = _Missing()
