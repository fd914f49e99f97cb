"""Apps for tests/worker/test_request_start.py (served as ``tests.worker.speed_apps:NAME``)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

request_id: contextvars.ContextVar[int] = contextvars.ContextVar("request_id")
_counter = 0


async def task_identity(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Checks what anyio's cancel scopes rely on: one current task for the whole request."""
    if scope["type"] != "http":
        return
    global _counter
    _counter += 1
    # A context variable set by one request must not be visible to the next one on the
    # same connection: each request runs in its own copy of the context.
    leaked = request_id.get(None)
    request_id.set(_counter)
    before = asyncio.current_task()
    if scope["path"] == "/suspend":
        await asyncio.sleep(0.001)
    after = asyncio.current_task()
    body = b"same" if before is not None and before is after else b"different"
    if leaked is not None:
        body += b" leaked"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def starlette_app() -> Any:
    """A Starlette app whose middleware and responses use anyio task groups and cancel scopes
    (served with ``--factory``)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    class Tag(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            response.headers["x-mw"] = "1"
            return response

    async def plain(request: Request) -> Response:
        return PlainTextResponse("plain")

    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            for i in range(3):
                yield b"chunk%d\n" % i

        return StreamingResponse(chunks())

    async def echo(request: Request) -> Response:
        return JSONResponse({"length": len(await request.body())})

    def sync(request: Request) -> Response:  # run in a worker thread by anyio
        return PlainTextResponse("sync")

    routes = [Route("/", plain), Route("/stream", stream), Route("/echo", echo, methods=["POST"]), Route("/sync", sync)]
    return Starlette(routes=routes, middleware=[Middleware(Tag)])
