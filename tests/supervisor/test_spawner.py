"""ForkSpawner: real forks of a tiny child function, reaped with waitpid."""

from __future__ import annotations

import os
import select
import signal
import time

from fastgate.supervisor.spawner import ForkSpawner, exit_code


def reap_all(spawner: ForkSpawner, n: int, timeout: float = 10.0) -> dict[int, int]:
    found: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(found) < n:
        assert time.monotonic() < deadline, f"reaped only {found}"
        found.update(spawner.reap())
        time.sleep(0.01)
    return found


def read(fd: int, timeout: float = 10.0) -> bytes:
    """Read from a non-blocking pipe, waiting up to ``timeout`` for data or EOF."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "nothing to read"
    return os.read(fd, 100)


def test_child_runs_with_a_report_pipe_in_its_own_process_group_and_its_code_is_reaped():
    def child(slot: int, generation: int, report_fd: int) -> int:
        os.write(report_fd, f"{slot} {generation}".encode())
        time.sleep(0.5)  # alive while the parent looks at its process group
        return 7

    spawner = ForkSpawner(child, block=(signal.SIGTERM,))
    handle = spawner.spawn(2, 5)
    try:
        assert os.getpgid(handle.pid) == handle.pid  # its own group, for killpg
        assert read(handle.fd) == b"2 5"
        assert reap_all(spawner, 1) == {handle.pid: 7}
        assert read(handle.fd) == b""  # the child's end closed at exit
    finally:
        os.close(handle.fd)
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGTERM}  # parent mask restored


def test_signals_reach_the_child_or_its_group_and_deaths_are_reported_as_negative():
    def child(slot: int, generation: int, report_fd: int) -> int:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        os.write(report_fd, b"R")
        time.sleep(30)
        return 0

    spawner = ForkSpawner(child, block=(signal.SIGTERM,))
    a, b = spawner.spawn(0, 1), spawner.spawn(1, 1)
    reaped: dict[int, int] = {}
    try:
        for h in (a, b):
            assert read(h.fd) == b"R"
        spawner.send_signal(a.pid, signal.SIGTERM)
        spawner.send_signal(b.pid, signal.SIGKILL, group=True)
        reaped = reap_all(spawner, 2)
        assert reaped == {a.pid: -signal.SIGTERM, b.pid: -signal.SIGKILL}
    finally:
        for h in (a, b):
            if h.pid not in reaped:  # never signal a reaped pid: the number may be reused
                os.kill(h.pid, signal.SIGKILL)
                os.waitpid(h.pid, 0)
            os.close(h.fd)


def test_a_child_that_raises_exits_1_and_exit_code_decodes_statuses():
    def child(slot: int, generation: int, report_fd: int) -> int:
        raise SystemExit(4)

    spawner = ForkSpawner(child)
    handle = spawner.spawn(0, 1)
    try:
        assert reap_all(spawner, 1) == {handle.pid: 4}
    finally:
        os.close(handle.fd)
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGABRT) == -signal.SIGABRT
