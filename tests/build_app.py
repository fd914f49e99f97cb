"""An app that tells which file each hot-path module of its worker was loaded from (tests/test_build.py)."""

from __future__ import annotations

import json
import sys
from typing import Any

from fastgate.build import COMPILED


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    files = {m: sys.modules[m].__file__ for m in COMPILED if m in sys.modules}
    body = json.dumps(files).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
