"""Helpers for the supervisor end-to-end tests: process trees, worker pids, a load client."""

from __future__ import annotations

import glob
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.server import ServerProcess, read_response

READY_RE = re.compile(r"Worker (\d+) \(slot (\d+), generation (\d+)\) ready")


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    out: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def get(server: ServerProcess, path: str = "/pid", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection (Connection: close)."""
    with server.connect(timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        status, _, body, _ = read_response(sock)
        return status, body


def serving_pids(server: ServerProcess, want: int, timeout: float = 20.0) -> set[int]:
    """Worker pids seen answering /pid, until ``want`` distinct ones answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {seen} answered within {timeout}s:\n{server.output}")
        seen.add(int(get(server)[1]))
    return seen


@dataclass
class LoadClient:
    """Threads sending GET /pid on new connections until stopped; counts what failed."""

    server: ServerProcess
    threads: int = 4
    path: str = "/pid"
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    pids: Counter[int] = field(default_factory=Counter)
    last_by_pid: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> LoadClient:
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.server, self.path)
                error = None if status == 200 else f"status {status}"
            except (OSError, ConnectionError, ValueError) as exc:
                error, body = f"{type(exc).__name__}: {exc}", b""
            with self._lock:
                self.sent += 1
                if error is None:
                    self.ok += 1
                    if self.path == "/pid":
                        pid = int(body)
                        self.pids[pid] += 1
                        self.last_by_pid[pid] = time.monotonic()
                else:
                    self.failures.append(error)

    def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.sent
        while self.sent - start < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"load client made only {self.sent - start} requests in {timeout}s")
            time.sleep(0.01)


def kill_all(pids: set[int] | list[int]) -> None:
    """Test cleanup: make sure no process of ours survives a failed assertion."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(fields[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket ``pid`` has open."""
    out: set[int] = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out
