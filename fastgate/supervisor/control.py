"""The master's control socket (``--control-socket PATH``): one JSON line in, one out.

A request is ``{"cmd": "status"}``, ``{"cmd": "reload"}``, ``{"cmd": "scale", "n": N}``,
``{"cmd": "stop"}`` or ``{"cmd": "upgrade"}``. The master turns each command into the
event its signal produces (SIGHUP, SIGTTIN/SIGTTOU, SIGTERM, SIGUSR2), so the policy learns
no new language; it answers at once (status, upgrade) or when the outcome is known (the
reload's verdict, the scale reached, the stop done).

Like the metrics endpoint, the socket is only more fds in the master's selector (their
shared part is ``selector_server.SelectorServer``): non-blocking, a bounded request line, a
deadline per client, a bound on clients. The file is created with mode 0600: whoever can
connect can stop the server.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
from collections.abc import Callable
from typing import Any

from fastgate.supervisor.selector_server import Client, SelectorServer, unix_listener

MAX_CLIENTS = 8
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0  # to send the request line; a command that waits gets its own deadline
BUSY = b'{"ok": false, "error": "busy"}\n'  # to a client over MAX_CLIENTS


class _Client(Client):
    __slots__ = ("cid", "waiting")

    def __init__(self, cid: int, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, deadline)
        self.cid = cid  # never reused, unlike the fd: a late answer cannot reach another client
        self.waiting = False  # the request is in; the answer will come from the master


class ControlServer(SelectorServer[_Client]):
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
        self.handle = handle
        self._next_cid = 1
        sock = unix_listener(path, private=True)  # whoever can connect can stop the server
        sock.listen(16)
        super().__init__(sock, selector, tag, max_clients=MAX_CLIENTS, max_request=MAX_REQUEST,
                         timeout=REQUEST_TIMEOUT, busy=BUSY, unix_path=path)

    def answer(self, cid: int, reply: dict[str, Any]) -> None:
        """Send a waiting client its answer (then the connection closes)."""
        found = self._find(cid)
        if found is None:
            return  # it left or timed out meanwhile
        fd, client = found
        client.waiting = False
        self._send(fd, client, _encode(reply))

    def answer_now(self, cid: int, reply: dict[str, Any]) -> None:
        """Answer with a blocking send (the master is about to exit or exec)."""
        found = self._find(cid)
        if found is None:
            return
        fd, client = found
        with contextlib.suppress(OSError):
            client.sock.setblocking(True)
            client.sock.settimeout(1.0)
            client.sock.sendall(_encode(reply))
        self._close(fd)

    def wait(self, cid: int, deadline: float) -> None:
        """Client ``cid`` waits for an answer until ``deadline``."""
        found = self._find(cid)
        if found is not None:
            found[1].deadline = deadline

    # ------------------------------------------------------------ the protocol

    def _new_client(self, sock: socket.socket, deadline: float) -> _Client:
        cid, self._next_cid = self._next_cid, self._next_cid + 1
        return _Client(cid, sock, deadline)

    def _find(self, cid: int) -> tuple[int, _Client] | None:
        # By id, not fd: the fd of a client that left may already be another client's.
        # A scan: there are at most MAX_CLIENTS.
        for fd, client in self.clients.items():
            if client.cid == cid:
                return fd, client
        return None

    def _complete(self, inbuf: bytes) -> bool:
        return b"\n" in inbuf

    def _on_readable(self, fd: int, client: _Client, now: float) -> None:
        if client.waiting:
            self._check_gone(fd, client)
            return
        request = self._receive(fd, client)
        if request is None:
            return
        line = request.partition(b"\n")[0]
        try:
            decoded = json.loads(line)
            if not isinstance(decoded, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._send(fd, client, _encode({"ok": False, "error": f"bad request: {exc}"}))
            return
        client.waiting = True
        reply = self.handle(client.cid, decoded)
        if reply is not None:
            self.answer(client.cid, reply)

    def _on_deadline(self, fd: int, client: _Client) -> None:
        if client.waiting:
            self.answer(client.cid, {"ok": False, "error": "timed out waiting for the outcome"})
        self._close(fd)

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


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"
