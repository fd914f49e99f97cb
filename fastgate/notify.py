"""systemd ``sd_notify``: tell the service manager about readiness, reloads and stopping.

Only active when ``NOTIFY_SOCKET`` is set (``Type=notify`` / ``Type=notify-reload`` units).
Failures are logged at debug level and otherwise ignored: notification is best effort.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger("fastgate.error")


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The socket address from ``NOTIFY_SOCKET`` ('@name' is the abstract namespace), or None."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one state message (e.g. ``READY=1``). Returns whether it was sent.

    ``RELOADING=1`` gets the ``MONOTONIC_USEC`` field systemd's ``Type=notify-reload`` wants.
    """
    address = notify_address(environ)
    if address is None:
        return False
    lines = [state]
    if state == "RELOADING=1":
        lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    if state == "READY=1":
        lines.append(f"MAINPID={os.getpid()}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        logger.debug("sd_notify(%s) failed: %s", state, exc)
        return False
    return True
