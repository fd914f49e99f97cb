"""An ASGI app that hands the server bad values on every path (``tests.hostile_apps:app``).

The query string names the case; ``swallow=1`` makes the app catch the server's error and
return quietly, to show the refusal does not depend on what the app does next.
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Any

Scope = dict[str, Any]

# Header lists (or single values) an app might hand the server, each one invalid.
BAD_HEADERS: dict[str, Any] = {
    "crlf": [(b"x-a", b"1\r\nx-injected: yes")],
    "lf": [(b"x-a", b"1\nx-injected: yes")],
    "cr": [(b"x-a", b"1\rx-injected: yes")],
    "nul": [(b"x-a", b"1\x00x-injected: yes")],
    "ctl": [(b"x-a", b"1\x1bx-injected")],
    "del": [(b"x-a", b"1\x7fx-injected")],
    "name-space": [(b"x injected", b"1")],
    "name-colon": [(b"x-injected:", b"1")],
    "name-crlf": [(b"x-a\r\nx-injected", b"1")],
    "str-value": [(b"x-a", "x-injected")],
    "not-a-pair": [(b"x-injected",)],
}
BAD_STATUSES: dict[str, Any] = {"bool": True, "str": "200", "float": 200.0, "big": 1000, "small": 99}
BAD_SUBPROTOCOLS: dict[str, Any] = {
    "crlf": "chat\r\nx-injected: yes",
    "space": "chat x-injected",
    "bytes": b"chat",
    "unoffered": "x-injected",
}


def _query(scope: Scope) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    return dict(pairs)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def _http(scope: Scope, receive: Any, send: Any) -> None:
    path, query = scope["path"], _query(scope)
    if path == "/pid":
        body = json.dumps({"pid": os.getpid()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/scope":
        # What the app sees of the request: the Host it would build URLs from, the headers.
        body = json.dumps({
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "path": scope["path"], "query": scope["query_string"].decode("latin-1"),
        }).encode()
        await send({"type": "http.response.start", "status": HTTPStatus.OK, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/big":
        size = int(query.get("size", "65536"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * size})
        return
    start: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": []}
    if path.startswith("/header"):
        start["headers"] = BAD_HEADERS[query["case"]]
    elif path.startswith("/status"):
        start["status"] = BAD_STATUSES[query["case"]]
    elif path == "/httpstatus":
        start["status"] = HTTPStatus(int(query["code"]))
    try:
        await send(start)
        await send({"type": "http.response.body", "body": b"secret body"})
    except RuntimeError:
        if query.get("swallow") != "1":
            raise


async def _websocket(scope: Scope, receive: Any, send: Any) -> None:
    path, query = scope["path"], _query(scope)
    await receive()  # websocket.connect
    if path.startswith("/ws/accept-header"):
        message: dict[str, Any] = {"type": "websocket.accept", "headers": BAD_HEADERS[query["case"]]}
    elif path.startswith("/ws/subprotocol"):
        message = {"type": "websocket.accept", "subprotocol": BAD_SUBPROTOCOLS[query["case"]]}
    elif path.startswith("/ws/denial-header"):
        message = {"type": "websocket.http.response.start", "status": 403, "headers": BAD_HEADERS[query["case"]]}
    elif path.startswith("/ws/denial-status"):
        message = {"type": "websocket.http.response.start", "status": BAD_STATUSES[query["case"]], "headers": []}
    elif path == "/ws/denial-httpstatus":
        await send({"type": "websocket.http.response.start", "status": HTTPStatus.FORBIDDEN, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"denied"})
        return
    else:  # /ws/echo
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][0]
                    if scope["subprotocols"] else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                print("app: disconnect", message["code"], flush=True)
                return
            await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})
    try:
        await send(message)
        if message["type"] == "websocket.http.response.start":
            await send({"type": "websocket.http.response.body", "body": b"secret body"})
        else:
            await send({"type": "websocket.send", "text": "secret"})
    except RuntimeError:
        if query.get("swallow") != "1":
            raise


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        await _http(scope, receive, send)
    else:
        await _websocket(scope, receive, send)
