"""What every connection of a worker reads, worked out once from the configuration."""

from __future__ import annotations

import ssl
from typing import Any

from fastgate.asgi.scope import ProxyTrust
from fastgate.asgi.types import ASGIApp
from fastgate.config import Config, parse_networks
from fastgate.http.h1 import DefaultHeaders, H1Limits
from fastgate.logs import AccessFormatter, RateLimitedLog, access_logger, error_logger
from fastgate.tls import CipherIds, server_cert_pem
from fastgate.worker.metrics import WorkerMetrics
from fastgate.worker.probes import Probes
from fastgate.worker.request_id import RequestIds


class ServerSettings:
    """The per-worker constants of every connection: limits, headers, timeouts, the app.

    Args:
        config: the configuration.
        app: the ASGI 3 app.
        state: the lifespan state (filled at startup, copied into every scope).
        ssl_context: the context of this worker's TLS listeners, if any.
    """

    def __init__(self, config: Config, app: ASGIApp, state: dict[str, Any],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        http = config.http
        self.app = app
        self.state = state
        self.root_path = config.app.root_path
        self.websocket = config.websocket
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
        self.trust = ProxyTrust(parse_networks(http.forwarded_allow_ips), enabled=http.proxy_headers)
        self.timeout_keep_alive = http.timeout_keep_alive
        self.timeout_request_header = http.timeout_request_header
        # --timeout-request / --timeout-request-idle, 0.0 when off; ``timed`` says whether a
        # request deadline is armed at all (one attribute test per request when off).
        self.timeout_request = http.timeout_request or 0.0
        self.timeout_request_idle = http.timeout_request_idle or 0.0
        self.timed = bool(self.timeout_request or self.timeout_request_idle)
        self.limit_concurrency = http.limit_concurrency
        self.probes = Probes.from_paths(http.health_path, http.ready_path)
        # For the scope's tls extension, read once: the certificate this worker loaded.
        self.server_cert = server_cert_pem(config) if ssl_context is not None else None
        self.ciphers = CipherIds(ssl_context) if ssl_context is not None else None
        self.rejections = RateLimitedLog(error_logger)
        self.access_formatter: AccessFormatter | None = None
        if config.log.access_log and not access_logger.disabled:
            self.access_formatter = AccessFormatter(config.log.access_log_format, config.log.log_format == "json")
        # Request ids are worked out only when something uses them: a JSON access record
        # (its request_id field) or the echo header.
        self.request_id_header: bytes | None = (
            http.request_id_header.lower().encode("ascii") if http.request_id_header else None)
        json_log = self.access_formatter is not None and self.access_formatter.json_mode
        self.request_ids = RequestIds() if json_log or self.request_id_header is not None else None
        # --metrics-bind (and --control-socket, whose status shows requests served and open
        # connections): counters shipped to the master with each beat; None costs a request
        # one attribute test.
        p = config.process
        self.metrics = WorkerMetrics() if p.metrics_bind is not None or p.control_socket is not None else None
