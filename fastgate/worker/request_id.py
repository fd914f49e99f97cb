"""Request ids: a trusted proxy's ``X-Request-ID``, or one made up here.

Only worked out when something uses it (JSON access logs, ``--request-id-header``): with
neither, ``ServerSettings.request_ids`` is None and a request pays one attribute test.

A generated id is a per-worker random prefix and a counter (``5f0c1a2b9e47-1a``): unique
across workers and restarts (48 random bits per worker life) and far cheaper than a
``uuid4`` per request (no system call, one f-string). Ids are labels, not secrets: that
the next one is guessable from the last one is fine.
"""

from __future__ import annotations

import os

from fastgate.asgi.scope import ConnectionInfo
from fastgate.fields import is_request_id

HEADER = b"x-request-id"


class RequestIds:
    """Hands out one id per request of a worker."""

    __slots__ = ("prefix", "count")

    def __init__(self) -> None:
        # Made in the worker process (ServerSettings is built after the fork), so siblings
        # never share a prefix.
        self.prefix = os.urandom(6).hex()
        self.count = 0

    def for_request(self, headers: list[tuple[bytes, bytes]], info: ConnectionInfo) -> str:
        """The id of one request.

        Args:
            headers: the request's headers (lower-case names).
            info: its connection; only a peer trusted for forwarded headers
                (``--forwarded-allow-ips``) may name the id.
        """
        if info.proxy_trusted:
            for name, value in headers:
                if name == HEADER:
                    # The first one counts; a malformed one is replaced, not escaped.
                    if is_request_id(value):
                        return value.decode("ascii")
                    break
        self.count += 1
        return f"{self.prefix}-{self.count:x}"
