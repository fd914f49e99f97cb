"""The master loop with a fake spawner and real signals sent to the test process (no fork)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from fastgate import config as config_mod
from fastgate.errors import EXIT_APP_LOAD_FAILED
from fastgate.ipc import BEAT, DRAINING, READY
from fastgate.supervisor.master import Master
from fastgate.supervisor.spawner import WorkerHandle


class FakeSpawner:
    """Workers are pipes; 'exiting' queues a reap result and nudges the master with SIGCHLD."""

    def __init__(self, *, on_spawn: Any = None) -> None:
        self.next_pid = 900_000  # above pid_max on most systems: never a real process
        self.spawned: list[tuple[int, int, int]] = []  # (pid, slot, generation)
        self.write_fds: dict[int, int] = {}
        self.signals: list[tuple[int, int, bool]] = []
        self.exits: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.on_spawn = on_spawn

    def spawn(self, slot: int, generation: int) -> WorkerHandle:
        r, w = os.pipe()
        pid = self.next_pid
        self.next_pid += 1
        self.spawned.append((pid, slot, generation))
        self.write_fds[pid] = w
        if self.on_spawn is not None:
            self.on_spawn(self, pid)
        return WorkerHandle(pid, r)

    def report(self, pid: int, message: bytes) -> None:
        os.write(self.write_fds[pid], message)

    def exit(self, pid: int, code: int) -> None:
        with self.lock:
            self.exits.append((pid, code))
        fd = self.write_fds.pop(pid, None)
        if fd is not None:
            os.close(fd)
        os.kill(os.getpid(), signal.SIGCHLD)

    def send_signal(self, pid: int, sig: int, group: bool = False) -> None:
        self.signals.append((pid, sig, group))
        if sig in (signal.SIGTERM, signal.SIGKILL) and pid in self.write_fds:
            self.exit(pid, 0 if sig == signal.SIGTERM else -9)

    def reap(self) -> list[tuple[int, int]]:
        with self.lock:
            out, self.exits = self.exits, []
        return out

    def close(self) -> None:
        for fd in self.write_fds.values():
            os.close(fd)


def make_config(**options: Any) -> config_mod.Config:
    return config_mod.build({"app": "tests.apps:app", "port": 0, **options})


def run_master(master: Master, actions: Any) -> int:
    """Run the master in this (main) thread while ``actions`` drives it from another."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            actions()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            os.kill(os.getpid(), signal.SIGQUIT)

    t = threading.Thread(target=drive)
    t.start()
    code = master.run()
    t.join(10)
    if errors:
        raise errors[0]
    return code


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_signals_drive_the_policy_and_sigterm_exits_0(tmp_path):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    master = Master(make_config(workers=2, pid_file=str(tmp_path / "pid")), spawner=fake)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 2)
        assert (tmp_path / "pid").read_text() == f"{os.getpid()}\n"
        os.kill(os.getpid(), signal.SIGTTIN)
        wait_until(lambda: len(fake.spawned) == 3)
        fake.report(fake.spawned[0][0], BEAT)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: any(s == signal.SIGUSR1 for _, s, _ in fake.signals))
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert [slot for _, slot, _ in fake.spawned] == [0, 1, 2]
    assert sorted(p for p, s, g in fake.signals if s == signal.SIGTERM and g) == [p for p, _, _ in fake.spawned]
    assert not (tmp_path / "pid").exists()
    # Handlers and the wakeup fd are restored for the rest of the test process.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


def test_first_generation_boot_failure_exits_with_its_code():
    fake = FakeSpawner(on_spawn=lambda f, pid: f.exit(pid, EXIT_APP_LOAD_FAILED))
    master = Master(make_config(workers=1), spawner=fake)
    try:
        assert run_master(master, lambda: None) == EXIT_APP_LOAD_FAILED
    finally:
        fake.close()


def test_reload_source_byte_reloads_like_sighup_and_unknown_children_are_ignored():
    r, w = os.pipe()
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    master = Master(make_config(workers=1), spawner=fake, reload_source=r)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        with fake.lock:
            fake.exits.append((12345678, 0))  # an orphan the master adopted as PID 1
        os.write(w, b"x")
        wait_until(lambda: len(fake.spawned) == 2)
        assert fake.spawned[1][2] == 2  # a new generation
        wait_until(lambda: (fake.spawned[0][0], signal.SIGTERM, True) in fake.signals)
        fake.report(fake.spawned[1][0], DRAINING)  # recycling: replaced at once
        wait_until(lambda: len(fake.spawned) == 3)
        fake.exit(fake.spawned[1][0], 0)
        os.close(w)  # the watcher went away: the master carries on
        os.kill(os.getpid(), signal.SIGINT)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
        os.close(r)


def test_sighup_with_an_invalid_config_keeps_the_current_one(caplog):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))

    def reread() -> config_mod.Config:
        raise config_mod.ConfigError("--workers: expected an integer, got 'x' (from config file)")

    master = Master(make_config(workers=1), spawner=fake, reread=reread)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: len(fake.spawned) == 2)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert "invalid configuration ignored" in caplog.text


def test_bind_failure_exits_before_spawning(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake = FakeSpawner()
        master = Master(make_config(port=taken.getsockname()[1]), spawner=fake)
        assert master.run() != 0
    assert fake.spawned == []
    err = capsys.readouterr().err
    assert err.startswith("fastgate: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


@pytest.fixture(autouse=True)
def _propagate_fastgate_logs():
    """Master logs go to the 'fastgate' logger; let caplog see them."""
    import logging

    logger = logging.getLogger("fastgate")
    old = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = old


def test_sighup_with_an_unbindable_new_address_keeps_the_current_config(caplog, tmp_path):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    master = Master(make_config(workers=1), spawner=fake,
                    reread=lambda: make_config(workers=1, uds=str(tmp_path / "missing" / "x.sock")))

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: len(fake.spawned) == 2)  # the reload itself still happens
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert "configuration ignored, keeping the current one" in caplog.text
    assert master.config.bind.uds is None
