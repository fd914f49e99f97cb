"""Read a worker's resources through ``tests.fault_apps``' ``/stats`` and wait for them to come back."""

from __future__ import annotations

import json
import socket
import struct

from tests.server import ServerProcess, read_response, wait_for

# What a leak would leave behind; "pid" must not change either (a crash is no cleanup).
LEAK_KEYS = ("tasks", "fds", "http_protocols", "ws_protocols", "request_cycles", "ws_cycles")


def stats(server: ServerProcess) -> dict[str, int]:
    """The worker's counts, read over a connection of its own (counted in every reading alike)."""
    with server.connect(timeout=10) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert status == 200
    return dict(json.loads(body))


def settled(server: ServerProcess) -> dict[str, int]:
    """Stats once two readings in a row agree on every leak key (earlier connections are gone)."""
    last: list[dict[str, int]] = [stats(server)]

    def same() -> dict[str, int] | None:
        now = stats(server)
        previous, last[0] = last[0], now
        return now if all(now[k] == previous[k] for k in LEAK_KEYS) else None

    return wait_for(same, 15, 0.05, "a quiet worker")  # type: ignore[return-value]


def assert_back_to(server: ServerProcess, before: dict[str, int], timeout: float = 15.0) -> dict[str, int]:
    """Poll until tasks, fds and protocol objects are what they were in ``before``; same pid."""
    seen: list[dict[str, int]] = []

    def back() -> bool:
        now = stats(server)
        seen.append(now)
        return all(now[k] == before[k] for k in LEAK_KEYS)

    try:
        wait_for(back, timeout, 0.05)
    except AssertionError:
        raise AssertionError(f"worker did not come back to {before}; last {seen[-1]}") from None
    assert seen[-1]["pid"] == before["pid"]
    return seen[-1]


def hang_up(sock: socket.socket, how: str) -> None:
    """``close``: an ordinary close (a FIN, or a RST if unread data is pending); ``reset``: RST."""
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
