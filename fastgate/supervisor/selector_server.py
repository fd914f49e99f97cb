"""The part the master's small servers share: a listener and its clients in the master's selector.

The control socket (``supervisor/control.py``) and the scrape endpoint (``supervisor/scrape.py``)
run in the master's single-threaded loop, so neither may ever block it: every fd is non-blocking,
a client's request is read into a bounded buffer, each client has a deadline, and at most
``max_clients`` are served at once. A slow or hostile client costs the master one ``recv`` or
``send`` per readiness and is dropped at its deadline. What differs (where a request ends, what
the answer is, whether it comes at once) is the subclass's.

A client's life: accepted (its deadline set) → readable until its request is complete →
``_send`` registers it for writing → closed once its answer is out, or at its deadline, or when
it hangs up or a socket call fails.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
from typing import Generic, TypeVar

READ_SIZE = 4096  # bytes per recv: a request is a line or a short head; bounded by max_request anyway
# Seconds the listener rests after a failed accept (EMFILE and friends). The connection that
# failed stays queued, so the listener stays readable: without the rest the master's loop
# would spin on it (and log a failure per pass) until a descriptor frees up.
ACCEPT_PAUSE = 0.5


class Client:
    """One accepted connection: its socket, what it sent so far, what is left to send, its deadline."""

    __slots__ = ("sock", "inbuf", "out", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.deadline = deadline


C = TypeVar("C", bound=Client)


def unix_listener(path: str, *, private: bool = False) -> socket.socket:
    """A UNIX stream socket bound at ``path``, replacing a stale file left by an earlier run.

    Args:
        path: the socket file.
        private: create it mode 0600 (under a umask, so there is no moment it is open to others).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177) if private else None
    try:
        sock.bind(path)
    finally:
        if old is not None:
            os.umask(old)
    return sock


class SelectorServer(Generic[C]):
    """A listener and its clients, driven by the master's selector.

    The master calls ``on_ready`` for each ready fd whose selector data is ``tag``, and
    ``expire`` on every wake-up. Subclasses say when a request is complete
    (``_complete``), what a readable client means (``_on_readable``, usually: ``_receive``
    then ``_send`` the answer) and how a client is made (``_new_client``).

    Args:
        sock: the bound, listening socket (made non-blocking and registered here).
        selector: the master's selector; every fd is registered with data ``tag``.
        tag: the selector data marking this server's fds (the key's fd says which).
        max_clients: clients served at once; more are refused at accept.
        max_request: bytes of an incomplete request kept before the client is dropped.
        timeout: seconds a client has from its accept (a subclass may move the deadline).
        busy: sent (best effort) to a client refused at accept, then it is closed.
        unix_path: the socket file, removed at ``close``.
    """

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector, tag: str, *, max_clients: int,
                 max_request: int, timeout: float, busy: bytes = b"", unix_path: str | None = None) -> None:
        self.selector = selector
        self.tag = tag
        self.max_clients = max_clients
        self.max_request = max_request
        self.timeout = timeout
        self.busy = busy
        self.unix_path = unix_path
        self.clients: dict[int, C] = {}  # by fd
        self.resume_at = 0.0  # when a resting listener listens again (0.0: it listens)
        sock.setblocking(False)
        self.sock = sock
        selector.register(sock, selectors.EVENT_READ, tag)

    def on_ready(self, fd: int, now: float) -> None:
        """The selector says ``fd`` (the listener or a client) is ready."""
        if fd == self.sock.fileno():
            self._accept(now)
            return
        client = self.clients.get(fd)
        if client is None:
            return  # closed earlier in this same round of events
        if client.out:
            self._write(fd, client)
        else:
            self._on_readable(fd, client, now)

    def expire(self, now: float) -> None:
        """Drop clients past their deadline, end a rest after a failed accept (called on every
        master wake-up: at least once a second)."""
        if self.resume_at and now >= self.resume_at:
            self.resume_at = 0.0
            self.selector.register(self.sock, selectors.EVENT_READ, self.tag)
        for fd, client in list(self.clients.items()):
            if now >= client.deadline:
                self._on_deadline(fd, client)

    def close(self, unlink: bool = True) -> None:
        """Close every client and the listener; remove the socket file unless ``unlink`` is False."""
        for fd in list(self.clients):
            self._close(fd)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()
        if unlink and self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)

    # ------------------------------------------------------------ for subclasses

    def _new_client(self, sock: socket.socket, deadline: float) -> C:
        raise NotImplementedError

    def _complete(self, inbuf: bytes) -> bool:
        """Whether ``inbuf`` holds a whole request."""
        raise NotImplementedError

    def _on_readable(self, fd: int, client: C, now: float) -> None:
        raise NotImplementedError

    def _on_deadline(self, fd: int, client: C) -> None:
        self._close(fd)

    def _accept_failed(self, exc: OSError) -> None:
        """``accept`` failed (EMFILE and friends); the listener rests ACCEPT_PAUSE seconds, then tries again."""

    # ------------------------------------------------------------ the shared paths

    def _accept(self, now: float) -> None:
        # At most max_clients per readiness: a flood of connects cannot hold the master here.
        for _ in range(self.max_clients):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._accept_failed(exc)
                self.selector.unregister(self.sock)
                self.resume_at = now + ACCEPT_PAUSE
                return
            if len(self.clients) >= self.max_clients:
                if self.busy:
                    with contextlib.suppress(OSError):
                        sock.send(self.busy)  # a fresh socket's buffer takes it: this cannot block
                sock.close()
                continue
            sock.setblocking(False)
            self.clients[sock.fileno()] = self._new_client(sock, now + self.timeout)
            self.selector.register(sock, selectors.EVENT_READ, self.tag)

    def _receive(self, fd: int, client: C) -> bytes | None:
        """Read what the client sent; return its request once complete, else None.

        The client is closed (and None returned) when it hangs up, a ``recv`` fails, or its
        request grows past ``max_request`` without completing.
        """
        try:
            data = client.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._close(fd)
            return None
        if not data:
            self._close(fd)
            return None
        client.inbuf += data
        if self._complete(client.inbuf):
            return client.inbuf
        if len(client.inbuf) > self.max_request:
            self._close(fd)
        return None

    def _send(self, fd: int, client: C, answer: bytes) -> None:
        """Send ``answer``: what one ``send`` does not take goes out at the next write readiness."""
        client.out = answer
        self.selector.modify(client.sock, selectors.EVENT_WRITE, self.tag)
        self._write(fd, client)

    def _write(self, fd: int, client: C) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(fd)  # one request per connection: the answer is out, so it is done

    def _close(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()
