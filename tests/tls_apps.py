"""ASGI apps of the TLS and extension tests (imported as ``tests.tls_apps:NAME``)."""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

# Where the file routes find their files: set by the test before the server starts.
FILES = os.environ.get("FG_TEST_FILES", "/nonexistent")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


async def scope_view(request: Request) -> Response:
    """The parts of the scope the TLS tests look at."""
    scope = request.scope
    return Response(json.dumps({"scheme": scope["scheme"], "extensions": _jsonable(scope.get("extensions"))}),
                    media_type="application/json")


async def fds_view(request: Request) -> Response:
    """This worker's pid and open fds (a leaked file or socket shows here)."""
    return Response(json.dumps({"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd"))}),
                    media_type="application/json")


async def file_view(request: Request) -> FileResponse:
    return FileResponse(os.path.join(FILES, request.path_params["name"]))


async def ws_scope(websocket: WebSocket) -> None:
    await websocket.accept()
    scope = websocket.scope
    await websocket.send_text(json.dumps({"scheme": scope["scheme"],
                                          "extensions": _jsonable(scope.get("extensions"))}))
    await websocket.close()


app = Starlette(routes=[
    Route("/scope", scope_view),
    Route("/fds", fds_view),
    Route("/files/{name}", file_view, methods=["GET", "HEAD"]),
    WebSocketRoute("/ws", ws_scope),
])


async def trailers_app(scope: Any, receive: Any, send: Any) -> None:
    """A chunked body followed by trailers when the client takes them (TE: trailers)."""
    if scope["type"] != "http":
        return
    offered = "http.response.trailers" in scope["extensions"]
    await send({"type": "http.response.start", "status": 200, "trailers": offered,
                "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum")]})
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world", "more_body": False})
    if offered:
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-count", b"2")], "more_trailers": False})
