"""The control socket's server (a real selector and UNIX sockets) and the client's table."""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgate import ctl
from fastgate.supervisor import control


class Bench:
    def __init__(self, path: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.requests: list[tuple[int, dict[str, Any]]] = []
        self.later = False  # answer later (as the master does for reload) instead of at once
        self.server = control.ControlServer(path, self.selector, "control", self.handle)
        self.path = path

    def handle(self, cid: int, request: dict[str, Any]) -> dict[str, Any] | None:
        self.requests.append((cid, request))
        return None if self.later else {"ok": True, "echo": request}

    def pump(self, rounds: int = 5, now: float | None = None) -> None:
        for _ in range(rounds):
            for key, _ in self.selector.select(0.01):
                self.server.on_ready(key.fd, time.monotonic() if now is None else now)
        self.server.expire(time.monotonic() if now is None else now)

    def client(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(self.path)
        return sock

    def read(self, sock: socket.socket) -> bytes:
        data = b""
        for _ in range(100):
            self.pump(1)
            sock.settimeout(0.01)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with our bytes unread
                return data
            if not chunk:
                return data
            data += chunk
        raise AssertionError("no answer")


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(str(tmp_path / "c.sock"))
    yield b
    b.server.close()
    b.selector.close()


def test_socket_is_0600_and_removed_at_close(bench: Bench) -> None:
    assert stat.S_IMODE(os.stat(bench.path).st_mode) == 0o600
    bench.server.close()
    assert not os.path.exists(bench.path)


def test_one_line_in_one_line_out(bench: Bench) -> None:
    with bench.client() as sock:
        sock.sendall(b'{"cmd": "status"}\n')
        assert json.loads(bench.read(sock)) == {"ok": True, "echo": {"cmd": "status"}}
    with bench.client() as sock:
        sock.sendall(b'{"cmd": "sta')  # split over two sends
        bench.pump()
        sock.sendall(b'tus"}\n')
        assert json.loads(bench.read(sock))["ok"] is True


@pytest.mark.parametrize("line", [b"not json\n", b"[1, 2]\n", b"\xff\n"])
def test_bad_requests_are_answered_not_handled(bench: Bench, line: bytes) -> None:
    with bench.client() as sock:
        sock.sendall(line)
        reply = json.loads(bench.read(sock))
    assert reply["ok"] is False and reply["error"].startswith("bad request") and bench.requests == []


def test_an_endless_line_is_dropped(bench: Bench) -> None:
    with bench.client() as sock:
        try:
            sock.sendall(b"x" * (control.MAX_REQUEST * 3))
        except OSError:
            pass
        assert bench.read(sock) == b""


def test_a_later_answer_reaches_its_client_and_a_timeout_answers_for_it(bench: Bench) -> None:
    bench.later = True
    with bench.client() as a, bench.client() as b:
        a.sendall(b'{"cmd": "reload"}\n')
        b.sendall(b'{"cmd": "reload"}\n')
        bench.pump()
        (cid_a, _), (cid_b, _) = bench.requests
        bench.server.wait(cid_b, 0.0)  # b's deadline is over at once
        bench.server.answer(cid_a, {"ok": True, "verdict": "replaced"})
        assert json.loads(bench.read(a)) == {"ok": True, "verdict": "replaced"}
        assert json.loads(bench.read(b))["error"] == "timed out waiting for the outcome"
    bench.server.answer(cid_a, {"ok": True})  # gone: nothing happens, and no other client gets it
    assert not bench.server.clients


def test_a_waiting_client_that_hangs_up_is_dropped(bench: Bench) -> None:
    bench.later = True
    sock = bench.client()
    sock.sendall(b'{"cmd": "stop"}\n')
    bench.pump()
    assert len(bench.server.clients) == 1
    sock.close()
    bench.pump()
    assert not bench.server.clients


def test_silent_clients_time_out_and_are_bounded(bench: Bench) -> None:
    socks = [bench.client() for _ in range(control.MAX_CLIENTS + 2)]
    try:
        bench.pump(now=0.0)
        assert len(bench.server.clients) == control.MAX_CLIENTS
        assert [peek(s) for s in socks].count(b'{"ok": false, "error": "busy"}\n') == 2
        bench.pump(1, now=control.REQUEST_TIMEOUT)
        assert not bench.server.clients
    finally:
        for s in socks:
            s.close()


def peek(sock: socket.socket) -> bytes:
    sock.settimeout(0.2)
    try:
        return sock.recv(100)
    except TimeoutError:
        return b"(nothing)"


def test_status_table() -> None:
    screen = ctl.format_status({
        "master": 10, "phase": "running", "generation": 3, "target": 2,
        "workers": [
            {"pid": 11, "slot": 0, "generation": 3, "state": "ready", "uptime": 3725.0, "requests": 120345,
             "connections": 12, "rss": 31 * 1024 * 1024, "heartbeat_age": 0.4},
            {"pid": None, "slot": 1, "generation": 3, "state": "spawning", "uptime": 0.1, "requests": None,
             "connections": None, "rss": None, "heartbeat_age": 0.1},
        ],
    })
    lines = screen.splitlines()
    assert lines[0] == "master 10  running  generation 3  workers 2/2"
    assert lines[2].split() == ["11", "0", "3", "ready", "1h02m", "120345", "12", "31.0M", "0.4s", "ago"]
    assert lines[3].split() == ["-", "1", "3", "spawning", "0s", "-", "-", "-", "0.1s", "ago"]
    assert len({len(line) for line in lines[1:3]}) == 1  # aligned columns
