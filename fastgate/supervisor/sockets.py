"""Create the listening sockets: TCP (v4/v6), UNIX, inherited fds, systemd activation.

The master binds before forking and keeps every socket open for its whole life, so a worker
that exits never takes an accept queue with it.

Load spreading (per-slot sockets): with one shared listening socket, the kernel wakes every
worker and the one that is already awake takes the whole burst, so a few workers get most of
the keep-alive connections. For TCP, the master therefore binds one ``SO_REUSEPORT`` socket
per worker *slot* on the same address; the kernel hashes each new connection to one socket
of the group, which spreads connections evenly. Because the master keeps every slot socket
open, a worker that dies or recycles leaves its queue intact: the replacement in the same
slot inherits the socket and accepts what waited (the per-worker ``SO_REUSEPORT`` setups of
other servers drop that queue, since the worker owned the only copy). Before binding, an
exclusive probe bind checks that no other process holds the port (``SO_REUSEPORT`` would
otherwise let a second server silently share it); ``--reuse-port`` skips the probe for
deployments that want to share the port on purpose. UNIX sockets and inherited fds cannot be
multiplied and stay shared by all workers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import cast

from fastgate.config import Config, parse_bind
from fastgate.errors import BindError


@dataclass(slots=True)
class Listener:
    """A bound, listening socket and how to show and clean it up.

    ``per_slot`` listeners (TCP with SO_REUSEPORT) hand each worker slot its own socket on
    the same address; ``sock`` is slot 0's.
    """

    sock: socket.socket
    kind: str  # "tcp", "unix" or "fd"
    unix_path: str | None = None
    key: tuple[str, object] | None = None  # the address it was made for (see ``rebind``)
    per_slot: bool = False
    backlog: int = 2048
    slot_socks: dict[int, socket.socket] = field(default_factory=dict)

    def socket_for(self, slot: int) -> socket.socket:
        """The socket worker slot ``slot`` serves (bound on first use for per-slot listeners)."""
        if not self.per_slot or slot == 0:
            return self.sock
        sock = self.slot_socks.get(slot)
        if sock is None:
            try:
                sock = bind_like(self.sock, self.backlog)
            except OSError:
                return self.sock  # cannot happen on our own port group; sharing is a safe fallback
            self.slot_socks[slot] = sock
        return sock

    def release(self, slot: int) -> None:
        """Close a per-slot socket no worker uses any more (SIGTTOU, smaller reload)."""
        sock = self.slot_socks.pop(slot, None)
        if sock is not None:
            sock.close()

    def all_sockets(self) -> list[socket.socket]:
        return [self.sock, *self.slot_socks.values()]

    @property
    def display(self) -> str:
        return self.describe(False)

    def describe(self, tls: bool) -> str:
        """Where it listens, for the log: ``http://`` or ``https://`` address, ``unix:`` path, fd."""
        suffix = " (TLS)" if tls else ""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}{suffix}"
        addr = self.sock.getsockname()
        if isinstance(addr, tuple):
            host = f"[{addr[0]}]" if self.sock.family == socket.AF_INET6 else addr[0]
            return f"{'https' if tls else 'http'}://{host}:{addr[1]}"
        return f"fd://{self.sock.fileno()} ({addr!r}){suffix}"

    def close(self) -> None:
        """Close the socket; the process that bound a UNIX socket also removes its file."""
        for sock in self.slot_socks.values():
            sock.close()
        self.slot_socks.clear()
        self.sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(self.unix_path).st_mode):
                    os.unlink(self.unix_path)


def addresses(config: Config, *, default: bool = True) -> list[tuple[str, object]]:
    """What to listen on: every --bind, plus --uds / --fd, else --host/--port (if ``default``)."""
    b = config.bind
    result = [parse_bind(a) for a in b.bind]
    if b.uds:
        result.append(("unix", b.uds))
    if b.fd is not None:
        result.append(("fd", b.fd))
    if not result and default:
        result.append(("tcp", (b.host, b.port)))
    return result


SD_LISTEN_FDS_START = 3


def systemd_fds(environ: MutableMapping[str, str] | None = None, *, consume: bool = True) -> list[int]:
    """File descriptors passed by systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``).

    They are only ours when ``LISTEN_PID`` is this process. With ``consume`` the variables
    are removed, so workers and the app's own children do not adopt them again.
    """
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if consume:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def bind_like(template: socket.socket, backlog: int) -> socket.socket:
    """One more SO_REUSEPORT listening socket on ``template``'s address (a worker slot's)."""
    sock = socket.socket(template.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if template.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            template.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        sock.bind(template.getsockname()[:2] if template.family == socket.AF_INET else template.getsockname())
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _probe_exclusive(family: socket.AddressFamily, host: str, port: int) -> int:
    """Bind without SO_REUSEPORT to check nobody holds the port; returns the port (0 picks one)."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((host, port))
        return int(probe.getsockname()[1])
    finally:
        probe.close()


def bind_tcp(
    host: str, port: int, backlog: int, reuse_port: bool = False, *, exclusive_probe: bool = False
) -> socket.socket:
    """Bind and listen on TCP; IPv6 when the host is an IPv6 literal.

    With ``exclusive_probe`` (and ``reuse_port``), first check that no other socket holds
    the address, so SO_REUSEPORT never joins someone else's port group by accident.
    """
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
        if reuse_port and exclusive_probe:
            port = _probe_exclusive(family, host, port)
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


def bind_all(
    config: Config, *, per_slot: bool = False, environ: MutableMapping[str, str] | None = None
) -> list[Listener]:
    """Create every listener the config asks for; on failure close what was opened.

    Args:
        config: the configuration.
        per_slot: bind TCP addresses with SO_REUSEPORT so each worker slot can get its own
            socket (see the module docstring).
        environ: where to look for systemd's ``LISTEN_FDS`` (default ``os.environ``).

    Raises:
        BindError: one line naming the address and the problem.
    """
    listeners: list[Listener] = []
    try:
        for fd in systemd_fds(environ):
            listeners.append(Listener(from_fd(fd), "fd", key=("systemd", fd)))
        listeners.extend(_bind_addresses(config, per_slot, [], systemd=bool(listeners)))
    except BindError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _bind_addresses(config: Config, per_slot: bool, reuse: list[Listener], *, systemd: bool) -> list[Listener]:
    """Listeners for the config's addresses; those in ``reuse`` with the same address are kept.

    On BindError, closes only what it bound itself.
    """
    b = config.bind
    by_key = {listener.key: listener for listener in reuse}
    out: list[Listener] = []
    fresh: list[Listener] = []
    try:
        for kind, value in addresses(config, default=not systemd):
            key = (kind, value)
            existing = by_key.pop(key, None)
            if existing is not None:
                out.append(existing)
                continue
            if kind == "tcp":
                host, port = cast("tuple[str, int]", value)
                reuse_port = b.reuse_port or per_slot
                sock = bind_tcp(host, port, b.backlog, reuse_port, exclusive_probe=not b.reuse_port)
                listener = Listener(sock, "tcp", key=key, per_slot=per_slot, backlog=b.backlog)
            elif kind == "unix":
                path = str(value)
                sock = bind_unix(path, b.backlog, int(b.uds_mode, 8))
                listener = Listener(sock, "unix", unix_path=path, key=key)
            else:
                listener = Listener(from_fd(int(cast(int, value))), "fd", key=key)
            fresh.append(listener)
            out.append(listener)
    except BindError:
        for listener in fresh:
            listener.close()
        raise
    return out


def rebind(config: Config, current: list[Listener], *, per_slot: bool = True) -> tuple[list[Listener], list[Listener]]:
    """The listeners a reloaded ``config`` asks for, keeping current sockets whose address is
    unchanged (so a port-0 or UNIX listener is not re-created) and systemd's sockets.

    Returns:
        ``(listeners, unused)``: what to serve now, and current listeners no longer asked for.

    Raises:
        BindError: a new address could not be bound (nothing current is closed).
    """
    inherited = [listener for listener in current if listener.key is not None and listener.key[0] == "systemd"]
    others = [listener for listener in current if listener not in inherited]
    new = inherited + _bind_addresses(config, per_slot, others, systemd=bool(inherited))
    unused = [listener for listener in current if all(listener is not n for n in new)]
    return new, unused
