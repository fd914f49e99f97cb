"""Create the listening sockets: TCP (v4/v6), UNIX, inherited fds.

The master binds before forking, so every worker inherits the same sockets and a worker
that exits never takes the accept queue with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

from fastgate.config import Config, parse_bind
from fastgate.errors import BindError


@dataclass(slots=True)
class Listener:
    """A bound, listening socket and how to show and clean it up."""

    sock: socket.socket
    kind: str  # "tcp", "unix" or "fd"
    unix_path: str | None = None

    @property
    def display(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        addr = self.sock.getsockname()
        if isinstance(addr, tuple):
            host = f"[{addr[0]}]" if self.sock.family == socket.AF_INET6 else addr[0]
            return f"http://{host}:{addr[1]}"
        return f"fd://{self.sock.fileno()} ({addr!r})"

    def close(self) -> None:
        """Close the socket; the process that bound a UNIX socket also removes its file."""
        self.sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(self.unix_path).st_mode):
                    os.unlink(self.unix_path)


def addresses(config: Config) -> list[tuple[str, object]]:
    """What to listen on: every --bind, plus --uds / --fd, else --host/--port."""
    b = config.bind
    result = [parse_bind(a) for a in b.bind]
    if b.uds:
        result.append(("unix", b.uds))
    if b.fd is not None:
        result.append(("fd", b.fd))
    if not result:
        result.append(("tcp", (b.host, b.port)))
    return result


def bind_tcp(host: str, port: int, backlog: int, reuse_port: bool = False) -> socket.socket:
    """Bind and listen on TCP; IPv6 when the host is an IPv6 literal."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host and not _is_ip(host):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise BindError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        host = str(sockaddr[0])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = " (is another server running? pick another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def bind_unix(path: str, backlog: int, mode: int = 0o660) -> socket.socket:
    """Bind a UNIX socket, replacing a stale file left by a dead server."""
    if os.path.exists(path):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISSOCK(st.st_mode):
            raise BindError(f"cannot listen on unix:{path}: a non-socket file is in the way (--uds)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: a stale socket from a server that died
        else:
            raise BindError(f"cannot listen on unix:{path}: another server is using it (--uds)")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on unix:{path}: {exc.strerror} (--uds)") from None
    sock.set_inheritable(True)
    return sock


def from_fd(fd: int) -> socket.socket:
    """Adopt an inherited listening socket; family and type are read from the fd."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"--fd {fd}: not a usable socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(f"--fd {fd}: not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise BindError(f"--fd {fd}: the socket is not listening")
    sock.set_inheritable(True)
    return sock


def bind_all(config: Config) -> list[Listener]:
    """Create every listener the config asks for; on failure close what was opened.

    Raises:
        BindError: one line naming the address and the problem.
    """
    b = config.bind
    listeners: list[Listener] = []
    try:
        for kind, value in addresses(config):
            if kind == "tcp":
                host, port = value  # type: ignore[misc]
                listeners.append(Listener(bind_tcp(host, port, b.backlog, b.reuse_port), "tcp"))
            elif kind == "unix":
                path = str(value)
                listeners.append(Listener(bind_unix(path, b.backlog, int(b.uds_mode, 8)), "unix", unix_path=path))
            else:
                listeners.append(Listener(from_fd(int(value)), "fd"))  # type: ignore[call-overload]
    except BindError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
