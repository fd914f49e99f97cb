"""ASGI type aliases and the one place the ASGI version numbers are written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION: Final = "3.0"
WWW_SPEC_VERSION: Final = "2.5"  # the HTTP and WebSocket spec (scope "asgi" key)
LIFESPAN_SPEC_VERSION: Final = "2.0"
