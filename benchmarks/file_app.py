"""The app of ``tls_files.py`` (``benchmarks.file_app:app``): Starlette, as an app would be.

* ``GET /``      plaintext ``Hello, world!``
* ``GET /file``  the file named by ``BENCH_FILE`` through ``FileResponse`` (pathsend where offered)
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.routing import Route

FILE = os.environ.get("BENCH_FILE", "/dev/null")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, world!")


async def file(request: Request) -> FileResponse:
    return FileResponse(FILE)


app = Starlette(routes=[Route("/", hello), Route("/file", file)])
