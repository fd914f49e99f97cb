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
