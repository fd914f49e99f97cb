"""Per-worker state shared by every connection: settings, app, registry, counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastgate.asgi.scope import ProxyTrust
from fastgate.asgi.types import ASGIApp
from fastgate.config import Config, parse_networks
from fastgate.http.h1 import DefaultHeaders, H1Limits
from fastgate.logs import AccessFormatter, RateLimitedLog, access_logger, error_logger
from fastgate.worker.deadlines import DeadlineSweeper, sweep_interval

if TYPE_CHECKING:
    from fastgate.worker.protocol import HttpProtocol
    from fastgate.worker.websocket import WebSocketProtocol


class WorkerContext:
    """Everything a connection needs from its worker, computed once.

    Args:
        config: the configuration.
        app: the ASGI 3 app.
        lifespan_state: the state dict filled during lifespan startup.
    """

    def __init__(self, config: Config, app: ASGIApp, lifespan_state: dict[str, Any] | None = None) -> None:
        http = config.http
        self.config = config
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None  # the worker's loop, set by the first connection
        self.lifespan_state: dict[str, Any] = lifespan_state if lifespan_state is not None else {}
        self.root_path = config.app.root_path
        self.limits = H1Limits(
            max_request_line=http.limit_request_line,
            max_header_count=http.limit_request_fields,
            max_header_size=http.limit_request_field_size,
            websocket=config.websocket.ws != "none",
        )
        extra: list[tuple[bytes, bytes]] = []
        for header in http.headers:
            name, _, value = header.partition(":")
            extra.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
        self.defaults = DefaultHeaders(server=b"fastgate" if http.server_header else None, extra=extra)
        self.date_header = http.date_header
        self.trust = ProxyTrust(parse_networks(http.forwarded_allow_ips), enabled=http.proxy_headers)
        self.timeout_keep_alive = http.timeout_keep_alive
        self.timeout_request_header = http.timeout_request_header
        self.limit_concurrency = http.limit_concurrency
        self.health_path = http.health_path.encode() if http.health_path else None
        self.ready_path = http.ready_path.encode() if http.ready_path else None

        self.connections: set[HttpProtocol] = set()
        self.websockets: set[WebSocketProtocol] = set()
        self.sweeper = DeadlineSweeper(self.connections, sweep_interval(self.timeout_keep_alive,
                                                                           self.timeout_request_header))
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self.ready = False
        self.draining = False
        self.requests_served = 0
        self.max_requests: int | None = None
        self.on_max_requests: Callable[[], None] | None = None

        self.debug = error_logger.isEnabledFor(logging.DEBUG)
        self.rejections = RateLimitedLog(error_logger)
        self.access_formatter: AccessFormatter | None = None
        if config.log.access_log and not access_logger.disabled:
            self.access_formatter = AccessFormatter(config.log.access_log_format, config.log.log_format == "json")

    def register(self, protocol: HttpProtocol) -> None:
        self.connections.add(protocol)
        self.all_closed.clear()

    def unregister(self, protocol: HttpProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and not self.websockets:
            self.all_closed.set()

    def register_websocket(self, protocol: WebSocketProtocol) -> None:
        self.websockets.add(protocol)
        self.all_closed.clear()

    def unregister_websocket(self, protocol: WebSocketProtocol) -> None:
        self.websockets.discard(protocol)
        if not self.connections and not self.websockets:
            self.all_closed.set()

    def check_max_requests(self) -> None:
        """Called after each response once ``requests_served`` was counted up."""
        if self.requests_served == self.max_requests and self.on_max_requests is not None:
            self.on_max_requests()
