"""Start real fastgate processes for end-to-end tests, and always reap them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"Listening on (https?://\[?([0-9a-fA-F.:]+)\]?:(\d+)|unix:(\S+))")


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class ServerProcess:
    """``python -m fastgate ARGS`` in a subprocess, with its stderr collected.

    Use as a context manager; the process is SIGTERMed, then SIGKILLed, and reaped.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        wait_listening: bool = True,
        timeout: float = 15.0,
        new_session: bool = True,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.args = list(args)
        self.pass_fds = pass_fds
        full_env = dict(os.environ)
        # The repo root only: tests/ must not be on the path (tests/http would shadow http).
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.pop("WEB_CONCURRENCY", None)
        if env:
            full_env.update(env)
        self.env = full_env
        self.cwd = cwd
        self.wait_listening = wait_listening
        self.timeout = timeout
        self.new_session = new_session
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.unix_path: str | None = None

    # -------------------------------------------------------------- lifecycle

    def command(self) -> list[str]:
        """The argv to run; subclasses may wrap fastgate in another command."""
        return [sys.executable, "-m", "fastgate", *self.args]

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
            start_new_session=self.new_session,
            pass_fds=self.pass_fds,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        if self.wait_listening:
            match = self.wait_line(LISTEN_RE, self.timeout)
            if match.group(4):
                self.unix_path = match.group(4)
            else:
                self.host, self.port = match.group(2), int(match.group(3))
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except ValueError:  # closed under us by stop()
            pass
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: re.Pattern[str] | str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (searching from line ``start``)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    m = regex.search(self.lines[index])
                    index += 1
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None
                                      and index >= len(self.lines)):
                    if self.proc is not None and self.proc.poll() is not None:
                        # Give the pump a moment to deliver the last lines.
                        self._cond.wait(0.2)
                        if index < len(self.lines):
                            continue
                    raise AssertionError(
                        f"no line matching {regex.pattern!r} within {timeout}s; output:\n" + self.output
                    )
                self._cond.wait(min(remaining, 0.1))

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._pump_thread.join(5)
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL the group if needed; always reaps."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                proc.wait(5)
        if self.new_session:
            self.kill_group()  # stray workers, if any
        self._pump_thread.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            # __exit__ does not run when __enter__ raises: reap the process and close its pipe
            # here (an unclosed pipe is a ResourceWarning in whichever test collects it).
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- clients

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.unix_path)
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)



class CommandProcess(ServerProcess):
    """Like ``ServerProcess``, but runs ``command`` (which must end up running fastgate,
    e.g. ``unshare ... python -m fastgate`` or ``systemd-socket-activate ...``)."""

    def __init__(self, command: Sequence[str], **kwargs: Any) -> None:
        super().__init__([], **kwargs)
        self.command_argv = list(command)

    def command(self) -> list[str]:
        return self.command_argv


def fastgate_command(*args: str) -> list[str]:
    """argv that runs fastgate with this interpreter."""
    return [sys.executable, "-m", "fastgate", *args]


def recv_until_closed(sock: socket.socket, limit: int = 10 * 1024 * 1024) -> bytes:
    """Read until the peer closes (or the socket timeout fires)."""
    chunks = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def read_response(
    sock: socket.socket, buf: bytearray | None = None
) -> tuple[int, dict[bytes, bytes], bytes, bytearray]:
    """Read one HTTP/1.1 response (Content-Length or chunked). Returns status, headers, body, leftover."""
    buf = buf if buf is not None else bytearray()

    def fill() -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a complete response")
        buf.extend(data)

    while b"\r\n\r\n" not in buf:
        fill()
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if status in (100, 101):
        return status, headers, b"", buf
    body = b""
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            fill()
        body, buf[:] = bytes(buf[:n]), buf[n:]
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            while b"\r\n" not in buf:
                fill()
            size_line, _, _ = bytes(buf).partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            del buf[: len(size_line) + 2]
            while len(buf) < size + 2:
                fill()
            parts.append(bytes(buf[:size]))
            del buf[: size + 2]
            if size == 0:
                break
        body = b"".join(parts)
    return status, headers, body, buf
