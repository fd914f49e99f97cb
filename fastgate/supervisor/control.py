"""The master's control socket (``--control-socket PATH``): one JSON line in, one out.

A request is ``{"cmd": "status"}``, ``{"cmd": "reload"}``, ``{"cmd": "scale", "n": N}``,
``{"cmd": "stop"}`` or ``{"cmd": "upgrade"}``. The master turns each command into the
event its signal produces (SIGHUP, SIGTTIN/SIGTTOU, SIGTERM, SIGUSR2), so the policy learns
no new language; it answers at once (status, upgrade) or when the outcome is known (the
reload's verdict, the scale reached, the stop done).

Like the metrics endpoint, the socket is only more fds in the master's selector: non-
blocking, a bounded request line, a deadline per client, a bound on clients. The file is
created with mode 0600: whoever can connect can stop the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
from collections.abc import Callable
from typing import Any

MAX_CLIENTS = 8
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0  # to send the request line; a command that waits gets its own deadline


class _Client:
    __slots__ = ("cid", "sock", "inbuf", "out", "deadline", "waiting")

    def __init__(self, cid: int, sock: socket.socket, deadline: float) -> None:
        self.cid = cid  # never reused, unlike the fd: a late answer cannot reach another client
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.deadline = deadline
        self.waiting = False  # the request is in; the answer will come from the master


class ControlServer:
    """Accepts control clients and hands each request to ``handle``.

    Args:
        path: the socket file (replaced if stale, removed at close).
        selector: the master's selector; fds are registered with data ``tag``.
        tag: the selector data marking this server's fds.
        handle: called with a client id and the decoded request; returns the answer, or
            None when the master will call ``answer`` later (before ``timeout``).
    """

    def __init__(self, path: str, selector: selectors.BaseSelector, tag: str,
                 handle: Callable[[int, dict[str, Any]], dict[str, Any] | None]) -> None:
        self.path = path
        self.selector = selector
        self.tag = tag
        self.handle = handle
        self.clients: dict[int, _Client] = {}  # by fd
        self._fds: dict[int, int] = {}  # cid -> fd
        self._next_cid = 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(0o177)  # created 0600: there is no moment it is open to others
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock
        selector.register(sock, selectors.EVENT_READ, tag)

    def on_ready(self, fd: int, now: float) -> None:
        if fd == self.sock.fileno():
            self._accept(now)
            return
        client = self.clients.get(fd)
        if client is None:
            return
        if client.out:
            self._write(fd, client)
        elif not client.waiting:
            self._read(fd, client, now)
        else:
            self._check_gone(fd, client)

    def answer(self, cid: int, reply: dict[str, Any]) -> None:
        """Send a waiting client its answer (then the connection closes)."""
        fd = self._fds.get(cid)
        client = self.clients.get(fd) if fd is not None else None
        if fd is None or client is None or client.cid != cid:
            return  # it left or timed out meanwhile
        client.waiting = False
        client.out = json.dumps(reply).encode() + b"\n"
        self.selector.modify(client.sock, selectors.EVENT_WRITE, self.tag)
        self._write(fd, client)

    def answer_now(self, cid: int, reply: dict[str, Any]) -> None:
        """Answer with a blocking send (the master is about to exit or exec)."""
        fd = self._fds.get(cid)
        client = self.clients.get(fd) if fd is not None else None
        if fd is None or client is None:
            return
        with contextlib.suppress(OSError):
            client.sock.setblocking(True)
            client.sock.settimeout(1.0)
            client.sock.sendall(json.dumps(reply).encode() + b"\n")
        self._close(fd)

    def wait(self, cid: int, deadline: float) -> None:
        """Client ``cid`` waits for an answer until ``deadline``."""
        fd = self._fds.get(cid)
        client = self.clients.get(fd) if fd is not None else None
        if client is not None:
            client.deadline = deadline

    def expire(self, now: float) -> None:
        for fd, client in list(self.clients.items()):
            if now >= client.deadline:
                if client.waiting:
                    self.answer(client.cid, {"ok": False, "error": "timed out waiting for the outcome"})
                self._close(fd)

    def close(self, unlink: bool = True) -> None:
        for fd in list(self.clients):
            self._close(fd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # ------------------------------------------------------------ clients

    def _accept(self, now: float) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.clients) >= MAX_CLIENTS:
                with contextlib.suppress(OSError):
                    sock.send(b'{"ok": false, "error": "busy"}\n')
                sock.close()
                continue
            sock.setblocking(False)
            cid, self._next_cid = self._next_cid, self._next_cid + 1
            self.clients[sock.fileno()] = _Client(cid, sock, now + REQUEST_TIMEOUT)
            self._fds[cid] = sock.fileno()
            self.selector.register(sock, selectors.EVENT_READ, self.tag)

    def _read(self, fd: int, client: _Client, now: float) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return
        client.inbuf += data
        line, sep, _ = client.inbuf.partition(b"\n")
        if not sep:
            if len(client.inbuf) > MAX_REQUEST:
                self._close(fd)
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._reply(fd, client, {"ok": False, "error": f"bad request: {exc}"})
            return
        client.waiting = True
        reply = self.handle(client.cid, request)
        if reply is not None:
            self.answer(client.cid, reply)

    def _check_gone(self, fd: int, client: _Client) -> None:
        # A waiting client that hangs up (Ctrl-C on `fastgate ctl`) is dropped; the command
        # itself goes on.
        try:
            data = client.sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)

    def _reply(self, fd: int, client: _Client, reply: dict[str, Any]) -> None:
        client.waiting = True
        self.answer(client.cid, reply)

    def _write(self, fd: int, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(fd)

    def _close(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        self._fds.pop(client.cid, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()
