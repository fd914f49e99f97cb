"""An app whose requests take as long as the query says (``tests.slow_apps:app``), for
``--timeout-request`` and ``--timeout-request-idle``.

Paths: ``/fast``; ``/sleep?s=S`` (answers after S seconds); ``/start-only`` (gives the head,
never the body); ``/partial`` (head and one chunk, then nothing); ``/stream?n=N&every=E``
(N chunks E seconds apart, then the end; ``gap_at=K&gap=G`` waits G seconds before chunk K);
``/swallow`` (ignores its cancellation, then tries to send: prints what ``send`` raised);
WebSocket: echo.
"""

from __future__ import annotations

import asyncio
from typing import Any

Scope = dict[str, Any]


def _query(scope: Scope) -> dict[str, str]:
    return dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)


async def _start(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})


async def _http(scope: Scope, receive: Any, send: Any) -> None:
    path, query = scope["path"], _query(scope)
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", "60")))
    elif path == "/start-only":
        await _start(send)
        await asyncio.sleep(60)
    elif path == "/partial":
        await _start(send)
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        await asyncio.sleep(60)
    elif path == "/stream":
        await _start(send)
        gap_at = int(query.get("gap_at", "-1"))
        for i in range(int(query["n"])):
            await asyncio.sleep(float(query.get("gap", "0")) if i == gap_at else float(query["every"]))
            await send({"type": "http.response.body", "body": b"chunk%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        return
    elif path == "/swallow":
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # an app that will not be told
        try:
            await _start(send)
        except OSError as exc:
            print(f"swallow: send raised {type(exc).__name__}", flush=True)
            raise
        return
    await _start(send)
    await send({"type": "http.response.body", "body": b"ok"})


async def _websocket(scope: Scope, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    else:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
