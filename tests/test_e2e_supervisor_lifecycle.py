"""Worker health and lifecycle under the master: hangs, recycling, scaling, orphans, activation."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fastgate.config import available_cpus
from tests.server import CommandProcess, fastgate_command, read_response, recv_until_closed, wait_for
from tests.supervisor.util import (
    READY_RE,
    alive,
    children,
    get,
    kill_all,
    listening_inodes,
    serving_pids,
    socket_inodes,
)

pytestmark = pytest.mark.e2e


def worker_count(server_or_pid, n: int, timeout: float = 30.0) -> set[int]:
    """Wait until the master has exactly ``n`` children; their pids."""
    pid = server_or_pid if isinstance(server_or_pid, int) else server_or_pid.pid

    def exactly() -> set[int] | None:
        found = children(pid)
        return found if len(found) == n else None

    return wait_for(exactly, timeout, what=f"{n} workers")  # type: ignore[return-value]


def test_worker_with_a_blocked_loop_gets_sigabrt_with_a_traceback_and_is_replaced(serve):
    server = serve("tests.apps:app", "--workers", "1", "--timeout-worker-healthcheck", "2")
    (old,) = serving_pids(server, 1)
    blocked = server.connect(timeout=30)
    try:
        blocked.sendall(b"GET /block?seconds=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.wait_line(rf"Worker {old} sent no heartbeat .*: SIGABRT", 30)
        server.wait_line("Fatal Python error: Aborted", 10)
        server.wait_line(r'File ".*tests/apps\.py", line \d+ in app', 10)  # where it was stuck
        assert recv_until_closed(blocked) == b""  # the stuck request dies with its worker
    finally:
        blocked.close()
    new = int(wait_for(lambda: (pid := int(get(server)[1])) != old and pid, 30))  # type: ignore[arg-type]
    assert not alive(old)
    assert children(server.pid) == {new}


def test_sigterm_lets_a_slow_request_finish_then_exits_0(serve):
    server = serve("tests.apps:app", "--workers", "2")
    with server.connect(timeout=30) as sock:
        sock.sendall(b"GET /stream?n=6&gap=0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = bytearray()
        while b"chunk 0" not in received:
            received += sock.recv(65536)
        server.signal(signal.SIGTERM)
        received += recv_until_closed(sock)
    assert b"chunk 5\n" in received and received.endswith(b"0\r\n\r\n")
    assert server.wait(30) == 0
    assert "Worker" in server.output and "exited (code 0)" in server.output


def test_max_requests_recycling_loses_no_request(serve):
    server = serve("tests.apps:app", "--workers", "2", "--limit-max-requests", "20")
    first = serving_pids(server, 2)

    def one(_: int) -> tuple[int, bytes]:
        return get(server, "/pid", timeout=30)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(200)))
    assert [status for status, _ in results] == [200] * 200
    # Drain-first: a worker at its limit serves on until its replacement is ready (so it
    # may serve more than 20), and only then drains; both first workers get replaced.
    for pid in first:
        server.wait_line(rf"Worker \d+ replaces worker {pid} \(recycled for max-requests", 30)
        wait_for(lambda pid=pid: not alive(pid), 30, what=f"worker {pid} gone")
    assert "Served 20 requests (--limit-max-requests): asking the master for a replacement" in server.output


def test_ttin_and_ttou_change_the_worker_count(serve):
    server = serve("tests.apps:app", "--workers", "1")
    (first,) = worker_count(server, 1)
    server.signal(signal.SIGTTIN)
    worker_count(server, 2)
    server.signal(signal.SIGTTIN)
    three = worker_count(server, 3)
    assert len(serving_pids(server, 3)) == 3
    server.signal(signal.SIGTTOU)
    two = worker_count(server, 2)
    assert two < three
    # One at a time: the kernel merges a signal sent again before the first was handled.
    mark = len(server.lines)
    server.signal(signal.SIGTTOU)
    server.wait_line(r"SIGTTOU: 1 worker\(s\)", 30, start=mark)
    server.signal(signal.SIGTTOU)
    server.wait_line("SIGTTOU ignored: at least one worker runs", 30, start=mark)
    assert worker_count(server, 1) == {first}  # the newest slots went first
    assert get(server) == (200, str(first).encode())


def test_workers_exit_when_the_master_is_killed(serve):
    server = serve("tests.apps:app", "--workers", "2", "--timeout-worker-healthcheck", "2")
    workers = worker_count(server, 2)
    try:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        wait_for(lambda: not any(alive(p) for p in workers), 10, what="workers gone after the master")
        assert "is gone" in server.output
    finally:
        kill_all(workers)


def test_master_as_pid_1_reaps_orphans_and_stops_on_sigterm(tmp_path):
    cmd = ["unshare", "--pid", "--fork", "--mount-proc",
           *fastgate_command("tests.supervisor.sup_apps:app", "--port", "0", "--workers", "2", "--log-level", "debug")]
    server = CommandProcess(cmd)
    try:
        server.start()
        server.wait_line(r"Listening on http://\S+ \(pid 1\)")
        (master,) = wait_for(lambda: children(server.pid), 10)  # unshare's child: PID 1 inside
        for _ in range(3):
            assert get(server, "/orphan") == (200, b"orphaned")
        server.wait_line("Reaped unknown child", 20)
        workers = worker_count(master, 2)

        def zombies() -> list[int]:
            return [p for p in children(master) if not alive(p)]

        wait_for(lambda: not zombies() and len(children(master)) == 2, 20, what="orphans reaped")
        os.kill(master, signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(alive(p) for p in workers)
    finally:
        server.stop()


def test_listen_fds_socket_activation(tmp_path):
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # systemd passes the socket as fd 3 with LISTEN_PID set to the service's pid.
    launcher = (
        "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd) if fd != 3 else None; "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.executable, [sys.executable, '-m', 'fastgate', *sys.argv[2:]])"
    )
    server = CommandProcess([sys.executable, "-c", launcher, str(fd), "tests.apps:app", "--workers", "2"],
                            pass_fds=(fd,))
    try:
        server.start()
        listener.close()  # only fastgate holds it now
        assert server.port == port and server.host == "::1"  # family and address read from the fd
        with socket.create_connection(("::1", port), timeout=10) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body, _ = read_response(sock)
        assert status == 200 and b'"::1"' in body
        assert "127.0.0.1:8000" not in server.output  # no default bind next to the inherited socket
        server.signal(signal.SIGTERM)
        try:
            assert server.wait(30) == 0
        except Exception:
            print(server.output)
            raise
    finally:
        listener.close()
        server.stop()


def test_pid_file_is_written_and_removed(serve, tmp_path):
    pid_file = tmp_path / "fastgate.pid"
    server = serve("tests.apps:app", "--pid", str(pid_file))
    assert pid_file.read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not pid_file.exists()


def test_sigusr1_reopens_log_files_in_master_and_workers(serve, tmp_path):
    log = tmp_path / "fastgate.log"
    server = serve("tests.apps:app", "--workers", "1", "--log-file", str(log), wait_listening=False)
    port = int(wait_for(lambda: log.exists() and _listen_port(log), 20))  # type: ignore[arg-type]
    server.port = port
    wait_for(lambda: "All 1 worker(s) ready" in log.read_text(), 20)
    rotated = tmp_path / "fastgate.log.1"
    log.rename(rotated)
    server.signal(signal.SIGUSR1)
    # Both the master and the worker write to the new file once they reopened it.
    wait_for(lambda: log.exists(), 20, what="the master reopened its log")

    # The worker reopens when its copy of the signal arrives: a request before that is logged
    # to the rotated file, rightly. Each try has its own path; once one shows in the new file
    # the worker has reopened, and from then on it writes nowhere else.
    tries = itertools.count()

    def access_logged() -> bool:
        path = f"/after-rotate/{next(tries)}"
        get(server, path)
        return f'"GET {path} HTTP/1.1"' in log.read_text()

    wait_for(access_logged, 20, interval=0.2, what="the worker reopened its log")
    get(server, "/after-reopen")
    wait_for(lambda: "/after-reopen" in log.read_text(), 20, what="the next request logged")
    old = rotated.read_text()
    assert "/after-reopen" not in old
    assert f'"GET /after-rotate/{next(tries) - 1} HTTP/1.1"' not in old  # the try that showed up: only there


def _listen_port(log: Path) -> int | None:
    import re

    m = re.search(r"Listening on http://127\.0\.0\.1:(\d+)", log.read_text())
    return int(m.group(1)) if m else None


def test_shutdown_delay_reports_not_ready_while_still_serving(serve):
    server = serve("tests.apps:app", "--workers", "1", "--ready-path", "/ready", "--health-path", "/health",
                   "--shutdown-delay", "3")
    assert get(server, "/ready") == (200, b"OK\n")
    server.signal(signal.SIGTERM)
    wait_for(lambda: get(server, "/ready")[0] == 503, 10, what="readiness 503")
    assert get(server, "/")[0] == 200  # still accepting during the delay
    assert get(server, "/health")[0] == 200
    assert server.wait(30) == 0


def test_keep_alive_connections_spread_across_workers(serve):
    server = serve("tests.apps:app", "--workers", "2")
    a, b = worker_count(server, 2)
    server.wait_line("All 2 worker\\(s\\) ready", 20)
    # The mechanism: one SO_REUSEPORT listening socket per worker slot, all kept by the master.
    listening = listening_inodes(server.port)
    mine_a, mine_b = socket_inodes(a) & listening, socket_inodes(b) & listening
    assert len(mine_a) == len(mine_b) == 1 and mine_a != mine_b
    assert socket_inodes(server.pid) & listening == mine_a | mine_b
    socks = [server.connect(timeout=10) for _ in range(64)]
    try:
        per_pid: Counter[int] = Counter()
        for sock in socks:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            per_pid[int(read_response(sock)[2])] += 1
    finally:
        for sock in socks:
            sock.close()
    print(f"64 keep-alive connections per worker: {sorted(per_pid.values())}")
    assert len(per_pid) == 2 and min(per_pid.values()) >= 12


def test_workers_auto_uses_the_available_cpus(serve):
    server = serve("tests.apps:app", "--workers", "auto")
    worker_count(server, available_cpus())


def test_web_concurrency_sets_the_worker_count(serve):
    server = serve("tests.apps:app", env={"WEB_CONCURRENCY": "3"})
    worker_count(server, 3)


def test_workers_0_runs_without_a_master(serve):
    server = serve("tests.apps:app", "--workers", "0")
    assert get(server) == (200, str(server.pid).encode())
    assert children(server.pid) == set()
    assert not READY_RE.search(server.output)


def test_second_sigint_forces_exit(serve):
    server = serve("tests.apps:app", "--workers", "1")
    with server.connect(timeout=30) as sock:
        sock.sendall(b"GET /stream?n=1000&gap=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = bytearray()
        while b"chunk 0" not in received:
            received += sock.recv(65536)
        started = time.monotonic()
        server.signal(signal.SIGINT)
        server.wait_line("SIGINT: graceful shutdown", 10)
        server.signal(signal.SIGINT)
        assert server.wait(20) == 0
        assert time.monotonic() - started < 15


def test_worker_that_cannot_drain_is_killed_after_the_graceful_timeout(serve):
    server = serve("tests.apps:app", "--workers", "1", "--timeout-graceful-shutdown", "1")
    (worker,) = serving_pids(server, 1)
    blocked = server.connect(timeout=30)
    try:
        blocked.sendall(b"GET /block?seconds=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        # Whether the block starts before or after SIGTERM, the loop cannot finish the drain.
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_line(rf"Worker {worker} did not exit in time: SIGKILL", 20)
        assert server.wait(20) == 0
        assert time.monotonic() - started < 15  # 1 s graceful + margin, not the 60 s block
    finally:
        blocked.close()
    assert not alive(worker)
