"""Apps for the supervisor e2e tests (``tests.supervisor.sup_apps:NAME``)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from tests.apps import _query
from tests.apps import app as base_app

# /grow keeps what it allocates, so the worker's RSS stays up (--limit-max-memory tests).
_HELD: list[bytes] = []


async def _answer(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``tests.apps:app`` plus endpoints that start processes, hold memory or show the environment."""
    if scope["type"] == "http" and scope["path"] == "/grow":
        # Written, not merely allocated: untouched pages would not count in the RSS.
        _HELD.append(b"x" * (int(_query(scope).get("mb", "1")) * 1024 * 1024))
        await _answer(send, str(os.getpid()).encode())
        return
    if scope["type"] == "http" and scope["path"] == "/env":
        await _answer(send, os.environ.get(_query(scope)["name"], "-").encode())
        return
    if scope["type"] == "http" and scope["path"] in ("/orphan", "/child"):
        if scope["path"] == "/orphan":
            # sh exits at once; its background sleep is re-parented to PID 1 (the master
            # when it runs as init of a PID namespace), which must reap it.
            subprocess.run(["sh", "-c", "sleep 0.3 >/dev/null 2>&1 &"], check=True)
            body = b"orphaned"
        else:
            # A long-lived child in the worker's process group: it must not outlive the worker.
            proc = subprocess.Popen(["sleep", "300"])
            body = str(proc.pid).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await base_app(scope, receive, send)
