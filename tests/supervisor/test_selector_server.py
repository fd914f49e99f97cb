"""The master's small-server base (``supervisor/selector_server.py``): its shared paths, once.

A one-line echo protocol over real UNIX sockets and a real selector this test drives as the
master's loop would, with a clock that stands still unless a test moves it (``now``): nothing
here waits for a deadline to pass.
The protocols on top (the control socket, the scrape endpoint) are tested in test_control.py
and test_metrics.py.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastgate.supervisor.selector_server import ACCEPT_PAUSE, Client, SelectorServer, unix_listener

MAX_CLIENTS = 3
MAX_REQUEST = 100
TIMEOUT = 5.0


class LineServer(SelectorServer[Client]):
    """Answers one line (``\\n``-terminated) with ``reply``, or with the line itself.

    On a UNIX socket at ``path``, or (None) on a loopback TCP port: only TCP lets a client reset.
    """

    def __init__(self, path: str | None, selector: selectors.BaseSelector, *, busy: bytes = b"") -> None:
        self.reply: bytes | None = None
        self.accept_errors: list[OSError] = []
        if path is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        else:
            sock = unix_listener(path)
        sock.listen(16)
        super().__init__(sock, selector, "t", max_clients=MAX_CLIENTS, max_request=MAX_REQUEST, timeout=TIMEOUT,
                         busy=busy, unix_path=path)

    def _new_client(self, sock: socket.socket, deadline: float) -> Client:
        return Client(sock, deadline)

    def _complete(self, inbuf: bytes) -> bool:
        return b"\n" in inbuf

    def _on_readable(self, fd: int, client: Client, now: float) -> None:
        request = self._receive(fd, client)
        if request is not None:
            self._send(fd, client, request if self.reply is None else self.reply)

    def _accept_failed(self, exc: OSError) -> None:
        self.accept_errors.append(exc)


class Bench:
    def __init__(self, path: str | None, busy: bytes = b"") -> None:
        self.path = path
        self.selector = selectors.DefaultSelector()
        self.server = LineServer(path, self.selector, busy=busy)

    def pump(self, rounds: int = 5, now: float = 0.0) -> None:
        """Run the master's loop ``rounds`` times; the clock stands at ``now`` (default: before any deadline)."""
        for _ in range(rounds):
            for key, _ in self.selector.select(0.01):
                self.server.on_ready(key.fd, now)
        self.server.expire(now)

    def client(self) -> socket.socket:
        if self.path is None:
            return socket.create_connection(self.server.sock.getsockname(), timeout=5)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(self.path)
        return sock

    def read_all(self, sock: socket.socket, now: float = 0.0) -> bytes:
        """Everything the server sends ``sock`` until it closes, pumping the server meanwhile.

        The clock stands still (before the deadlines unless ``now`` says otherwise): a server
        that does not close a connection by itself makes this fail, not wait for a deadline.
        """
        data = b""
        sock.settimeout(0.01)
        for _ in range(500):
            self.pump(1, now)
            try:
                while chunk := sock.recv(1 << 20):
                    data += chunk
                return data
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with bytes of ours unread
                return data
        raise AssertionError(f"not closed; {len(data)} bytes so far")

    def registered(self) -> int:
        """How many fds (the listener included) the server has in the selector."""
        return len(self.selector.get_map())


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(str(tmp_path / "s.sock"))
    yield b
    b.server.close()
    b.selector.close()


def test_a_request_split_over_sends_is_answered_then_closed(bench: Bench) -> None:
    with bench.client() as sock:
        sock.sendall(b"hel")
        bench.pump()
        (fd, client), = bench.server.clients.items()
        assert client.inbuf == b"hel" and bench.registered() == 2
        sock.sendall(b"lo\n")
        assert bench.read_all(sock) == b"hello\n"
    assert not bench.server.clients and bench.registered() == 1  # unregistered, not only forgotten
    bench.server.on_ready(fd, 0.0)  # an event for a client closed earlier in the same round: ignored


@pytest.mark.parametrize("busy", [b"", b"busy\n"])
def test_clients_over_the_cap_are_refused_at_accept(tmp_path: Path, busy: bytes) -> None:
    bench = Bench(str(tmp_path / "s.sock"), busy=busy)
    socks = [bench.client() for _ in range(MAX_CLIENTS + 2)]
    try:
        bench.pump(now=0.0)
        assert len(bench.server.clients) == MAX_CLIENTS
        # The ones served time out (they sent nothing) and get nothing; the refused ones got `busy`.
        answers = [bench.read_all(s, now=TIMEOUT) for s in socks]
        assert sorted(answers) == [b""] * MAX_CLIENTS + [busy] * 2
        assert not bench.server.clients and bench.registered() == 1
    finally:
        for s in socks:
            s.close()
        bench.server.close()
        bench.selector.close()


def test_the_deadline_counts_from_accept_and_bytes_do_not_move_it(bench: Bench) -> None:
    with bench.client() as sock:
        bench.pump(now=0.0)
        sock.sendall(b"still typing")
        bench.pump(now=TIMEOUT - 0.1)
        assert len(bench.server.clients) == 1
        bench.pump(1, now=TIMEOUT)
        assert not bench.server.clients
        assert bench.read_all(sock) == b""


def test_an_incomplete_request_is_kept_up_to_max_request_bytes(bench: Bench) -> None:
    with bench.client() as sock:
        sock.sendall(b"x" * MAX_REQUEST)
        for _ in range(100):
            bench.pump(1)
            if [len(c.inbuf) for c in bench.server.clients.values()] == [MAX_REQUEST]:
                break
        assert [len(c.inbuf) for c in bench.server.clients.values()] == [MAX_REQUEST]  # at the bound: kept
        sock.sendall(b"x")
        assert bench.read_all(sock) == b""  # one byte past it, still no line end: dropped unanswered
    assert not bench.server.clients


def test_a_request_that_ends_in_the_read_crossing_the_bound_is_answered(bench: Bench) -> None:
    # The bound is on what is kept while incomplete (checked after each read of at most
    # READ_SIZE bytes), not on the request: one read that completes it is served.
    line = b"y" * (MAX_REQUEST + 20) + b"\n"
    with bench.client() as sock:
        sock.sendall(line)
        assert bench.read_all(sock) == line


def test_a_client_that_never_reads_costs_one_send_per_readiness_and_goes_at_its_deadline(bench: Bench) -> None:
    bench.server.reply = b"z" * (8 << 20)  # more than any socket buffer holds
    with bench.client() as sock:
        sock.sendall(b"go\n")
        bench.pump(20, now=0.0)  # returns: nothing here blocks on the full buffer
        (fd, client), = bench.server.clients.items()
        assert 0 < len(client.out) < len(bench.server.reply)
        assert bench.selector.get_key(client.sock).events == selectors.EVENT_WRITE
        bench.pump(1, now=TIMEOUT)
        assert not bench.server.clients and bench.registered() == 1
        assert len(bench.read_all(sock)) < len(bench.server.reply)


def test_a_slow_reader_gets_the_whole_answer_over_many_sends(bench: Bench) -> None:
    bench.server.reply = b"".join(b"%07d\n" % i for i in range(1 << 17))  # 1 MiB: some five socket buffers
    with bench.client() as sock:
        sock.sendall(b"go\n")
        assert bench.read_all(sock) == bench.server.reply


def test_a_client_that_hangs_up_mid_request_is_dropped(bench: Bench) -> None:
    sock = bench.client()
    sock.sendall(b"half a li")
    bench.pump()
    assert len(bench.server.clients) == 1
    sock.close()
    bench.pump()
    assert not bench.server.clients and bench.registered() == 1


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (linger on, zero seconds)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_reset_before_the_request_is_complete_drops_the_client() -> None:
    bench = Bench(None)
    try:
        sock = bench.client()
        sock.sendall(b"half a li")
        bench.pump()
        assert len(bench.server.clients) == 1
        reset(sock)  # the server's next recv fails (ECONNRESET), it does not read an end
        bench.pump()
        assert not bench.server.clients and bench.registered() == 1
    finally:
        bench.server.close()
        bench.selector.close()


def test_a_reset_while_the_answer_goes_out_drops_the_client() -> None:
    bench = Bench(None)
    bench.server.reply = b"z" * (8 << 20)
    try:
        sock = bench.client()
        sock.sendall(b"go\n")
        bench.pump(20)
        (_, client), = bench.server.clients.items()
        assert client.out  # the rest waits for write readiness
        reset(sock)  # readiness comes as an error; the next send fails (ECONNRESET or EPIPE)
        bench.pump()
        assert not bench.server.clients and bench.registered() == 1
    finally:
        bench.server.close()
        bench.selector.close()


class FailingListener:
    """Stands for the listener: its fd is the real one, its accept fails like EMFILE."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_a_failed_accept_rests_the_listener_then_serves_the_queued_client(
    bench: Bench, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = bench.server.sock
    with bench.client() as sock:
        monkeypatch.setattr(bench.server, "sock", FailingListener(real))
        bench.server.on_ready(real.fileno(), 10.0)
        assert [e.errno for e in bench.server.accept_errors] == [errno.EMFILE] and not bench.server.clients
        # The failed connection is still queued, so the listener stays readable: it is out
        # of the selector while it rests, or the master's loop would spin on it.
        assert bench.registered() == 0
        monkeypatch.undo()
        sock.sendall(b"again\n")
        bench.pump(now=10.0 + ACCEPT_PAUSE / 2)
        assert bench.registered() == 0 and len(bench.server.accept_errors) == 1
        bench.pump(now=10.0 + ACCEPT_PAUSE)  # the rest is over: listening again
        assert bench.registered() == 1
        assert bench.read_all(sock, now=10.0 + ACCEPT_PAUSE) == b"again\n"  # still queued: served now


def test_close_removes_the_socket_file_unless_told_not_to(tmp_path: Path) -> None:
    for unlink in (True, False):
        path = str(tmp_path / f"{unlink}.sock")
        bench = Bench(path)
        sock = bench.client()
        bench.pump()
        bench.server.close(unlink=unlink)
        assert os.path.exists(path) is not unlink
        assert bench.read_all(sock) == b"" and not bench.selector.get_map()
        sock.close()
        bench.selector.close()


def test_unix_listener_replaces_a_stale_file_and_private_means_0600(tmp_path: Path) -> None:
    path = str(tmp_path / "p.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    umask = os.umask(0o022)
    try:
        with unix_listener(path, private=True):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.umask(0o022) == 0o022  # the process umask is restored
        with unix_listener(path):  # replaces the file the first one left
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o755  # as the umask says
    finally:
        os.umask(umask)
