"""ASGI apps for the WebSocket end-to-end tests (``tests.ws.apps:app``); the path picks the behaviour."""

from __future__ import annotations

import asyncio
from typing import Any

Scope = dict[str, Any]


def _query(scope: Scope) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    return dict(pairs)


def _say(*parts: object) -> None:
    # Printed lines are how e2e tests observe what the app saw.
    print("app:", *parts, flush=True)


async def _echo(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _say("disconnect", message["code"], repr(message.get("reason", "")))
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"plain http " + scope["path"].encode()})
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    root = scope["root_path"]
    if root and path.startswith(root):
        path = path[len(root):]  # the path includes root_path (ASGI spec clarification)
    q = _query(scope)
    message = await receive()
    assert message == {"type": "websocket.connect"}, message
    if path == "/echo":
        await send({"type": "websocket.accept"})
        await _echo(receive, send)
    elif path == "/scope":
        await send({"type": "websocket.accept"})
        info = {k: scope[k] for k in ("path", "raw_path", "query_string", "scheme", "http_version", "root_path",
                                      "subprotocols")}
        info["extensions"] = sorted(scope["extensions"])
        info["client"] = list(scope["client"])
        info["server"] = list(scope["server"])
        info["state"] = sorted(scope["state"])
        await send({"type": "websocket.send", "text": repr(info)})
        await _echo(receive, send)
    elif path == "/subprotocol":
        chosen = scope["subprotocols"][-1] if scope["subprotocols"] else None
        await send({"type": "websocket.accept", "subprotocol": chosen,
                    "headers": [(b"x-accept", b"yes"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]})
        await _echo(receive, send)
    elif path == "/reject":
        await send({"type": "websocket.close"})
        _say("rejected")
    elif path == "/return":
        return  # never accepts: 403
    elif path == "/deny":
        await send({"type": "websocket.http.response.start", "status": int(q.get("status", "418")),
                    "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"1")]})
        await send({"type": "websocket.http.response.body", "body": b"denied ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"by the app"})
    elif path == "/close":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": int(q.get("code", "4000")), "reason": q.get("reason", "bye")})
        message = await receive()
        _say("after close", message["type"], message.get("code"))
    elif path == "/raise-before":
        raise RuntimeError("boom before accept")
    elif path == "/raise-after":
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom after accept")
    elif path == "/send-after-close":
        await send({"type": "websocket.accept"})
        message = await receive()
        _say("got", message["type"], message.get("code"))
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            _say("send raised", type(exc).__name__, isinstance(exc, OSError))
            raise  # escaping: must not be logged as a server error
    elif path == "/slow":
        # Accepts, then reads nothing until told: the queue fills and reading pauses.
        await send({"type": "websocket.accept"})
        await asyncio.sleep(float(q.get("delay", "1")))
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            count += 1
            if message.get("text") == "last":
                await send({"type": "websocket.send", "text": f"received {count}"})
        _say("slow done", count)
    elif path == "/shutdown":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "ready"})
        message = await receive()
        while message["type"] != "websocket.disconnect":
            message = await receive()
        _say("disconnect", message["code"])
        await asyncio.sleep(0.2)  # cleanup still runs before the worker exits
        _say("cleanup done")
    elif path == "/big":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": b"\xab" * int(q.get("size", "1048576"))})
        await _echo(receive, send)
    else:
        await send({"type": "websocket.close"})
