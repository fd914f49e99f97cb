"""The app of benchmarks/preload_memory.py: about 100 MiB of ordinary Python objects built at
import time (a dict of records, as a lookup table or a loaded model's vocabulary would be).

``GET /`` reads a few random records (their reference counts change, as in any real use);
``GET /gc`` runs a full collection in the worker that answers, which every long-running
worker does sooner or later; ``GET /pid`` answers the worker's pid.
"""

from __future__ import annotations

import gc
import json
import os
import random
from typing import Any

RECORDS = int(os.environ.get("PRELOAD_RECORDS", "160000"))

# A record: a dict holding a str, a float, a small list and a nested dict: about 650 bytes
# all told, so the default RECORDS make about 100 MiB.
TABLE: dict[int, dict[str, Any]] = {
    i: {"name": f"user-{i:08d}", "score": i * 0.5, "tags": [i % 7, i % 11], "meta": {"k": i}}
    for i in range(RECORDS)
}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/gc":
        body = str(gc.collect()).encode() + b" " + str(os.getpid()).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        picked = [TABLE[random.randrange(RECORDS)] for _ in range(8)]
        body = json.dumps([r["name"] for r in picked]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
