"""The master and its workers as real processes: start, crash, boot failure, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.server import recv_until_closed, wait_for
from tests.supervisor.util import (
    READY_RE,
    LoadClient,
    alive,
    children,
    listening_inodes,
    serving_pids,
    socket_inodes,
)

pytestmark = pytest.mark.e2e


def test_master_forks_workers_that_serve_and_sigterm_exits_0(serve):
    server = serve("tests.apps:app", "--workers", "2")
    workers = wait_for(lambda: children(server.pid) if len(children(server.pid)) == 2 else None, 20)
    assert serving_pids(server, 2) == workers
    assert server.output.count("Listening on") == 1  # printed once, by the master, before forking
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert not any(alive(pid) for pid in workers)
    assert server.output.count("lifespan shutdown complete") == 2


def test_kill_9_of_a_worker_under_load_is_replaced(serve):
    server = serve("tests.apps:app", "--workers", "2")
    old = serving_pids(server, 2)
    victim = min(old)
    victim_socket = socket_inodes(victim) & listening_inodes(server.port)
    with LoadClient(server, threads=4) as load:
        load.wait_requests(50)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # A new pid answers: the replacement took over the dead worker's slot.
        new_pid = wait_for(lambda: next((p for p in load.pids if p not in old), None), 20)
        served_after = load.last_by_pid[new_pid] - killed_at
        load.wait_requests(50)
    print(f"kill -9 -> replacement serving: {served_after:.3f}s; sent {load.sent}, failed {len(load.failures)}")
    assert not alive(victim)
    assert children(server.pid) == (old - {victim}) | {new_pid}
    # The replacement serves the dead worker's slot socket: its queue was never dropped.
    assert socket_inodes(new_pid) & listening_inodes(server.port) == victim_socket
    server.wait_line(rf"Worker {victim} exited unexpectedly \(signal 9\)")


def test_app_import_error_in_first_generation_exits_4_at_once(serve):
    server = serve("tests.broken_app:app", "--workers", "3", wait_listening=False)
    assert server.wait(20) == 4
    assert "this module is broken on purpose" in server.output
    assert "could not load the app (exit 4): stopping" in server.output
    assert server.output.count("restarting") == 0  # no crash loop


def test_lifespan_startup_failure_exits_3(serve):
    server = serve("tests.apps:failing_startup", "--workers", "2", wait_listening=False)
    assert server.wait(20) == 3
    assert "database unreachable" in server.output


def test_port_in_use_fails_before_forking(serve):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve("tests.apps:app", "--port", str(port), "--workers", "2", wait_listening=False)
        assert server.wait(20) != 0
    assert f"fastgate: error: cannot listen on 127.0.0.1:{port}: Address already in use" in server.output
    assert "Starting" not in server.output
    assert "Traceback" not in server.output


def test_a_second_fastgate_cannot_join_the_port_through_so_reuseport(serve):
    first = serve("tests.apps:app", "--workers", "2")
    second = serve("tests.apps:app", "--port", str(first.port), wait_listening=False)
    assert second.wait(20) != 0
    assert "Address already in use" in second.output


def test_sigquit_is_a_fast_shutdown(serve):
    server = serve("tests.apps:app", "--workers", "2")
    with server.connect(timeout=20) as sock:
        sock.sendall(b"GET /stream?n=1000&gap=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = bytearray()
        while b"chunk 0" not in received:  # the request is in flight
            received += sock.recv(65536)
        started = time.monotonic()
        server.signal(signal.SIGQUIT)
        received += recv_until_closed(sock)
    assert server.wait(20) == 0
    assert time.monotonic() - started < 15  # not the 50 s the stream wanted
    assert b"chunk 999" not in received


def test_worker_ready_lines_name_slot_and_generation(serve):
    server = serve("tests.apps:app", "--workers", "2")
    server.wait_line(READY_RE, 20)
    server.wait_line("All 2 worker\\(s\\) ready", 20)
