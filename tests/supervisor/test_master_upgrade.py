"""The master's re-exec in place, without exec: a fake executor records the handover, and a
second Master in this same process adopts it (fake spawner, real pipes, sockets and signals)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any, NoReturn

import pytest

from fastgate import handover
from fastgate.ipc import BEAT, READY
from fastgate.supervisor.master import HANDLED_SIGNALS, Master, read_rss
from tests.supervisor.test_master import FakeSpawner, make_config, run_master, wait_until


class Execed(BaseException):
    """Stands for a successful exec: unwinds the first master's loop."""


class FakeExecutor:
    def __init__(self, fake: FakeSpawner, *, check_code: int = 0, exec_error: OSError | None = None) -> None:
        self.fake = fake
        self.check_code = check_code
        self.exec_error = exec_error
        self.checks: list[list[int]] = []
        self.env: dict[str, str] | None = None
        self.inheritable: dict[int, bool] = {}
        self.blocked: set[int] = set()

    def start_check(self, close_fds: Any) -> int:
        self.checks.append(list(close_fds))
        pid = 800_000 + len(self.checks)
        with self.fake.lock:  # its exit reaches the master like any child's, through waitpid
            self.fake.exits.append((pid, self.check_code))
        os.kill(os.getpid(), signal.SIGCHLD)
        return pid

    def exec(self, env: Any) -> NoReturn:
        if self.exec_error is not None:
            raise self.exec_error
        self.env = dict(env)
        state = json.loads(env[handover.ENV])
        fds = [state["life"][0], state["life"][1], *(fd for _, fd in state["pipes"])]
        fds += [listener["fd"] for listener in state["listeners"]]
        self.inheritable = {fd: os.get_inheritable(fd) for fd in fds}
        self.blocked = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        raise Execed


class ExecMaster(Master):
    """On ``Execed``, close only what a real exec closes (close-on-exec fds, handlers)."""

    execed = False

    def run(self) -> int:
        try:
            return super().run()
        except Execed:
            self.execed = True
            return -1

    def _cleanup(self) -> None:
        import sys

        if sys.exc_info()[0] is not Execed:
            super()._cleanup()
            return
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self.selector.close()
        for sock in (self._wakeup_r, self._wakeup_w):
            if sock is not None:
                sock.close()
        for listener in self.listeners:  # the fds live on in the next image
            for sock in listener.all_sockets():
                sock.detach()


@pytest.fixture(autouse=True)
def _no_handover_left():
    yield
    os.environ.pop(handover.ENV, None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def test_sigusr2_hands_everything_over_and_the_next_image_adopts_it_and_reloads(tmp_path):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    executor = FakeExecutor(fake)
    pid_file = tmp_path / "pid"
    first = ExecMaster(make_config(workers=2, pid_file=str(pid_file)), spawner=fake, executor=executor)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 2)
        fake.report(fake.spawned[0][0], BEAT)
        os.kill(os.getpid(), signal.SIGUSR2)

    try:
        assert run_master(first, actions) == -1
        assert first.execed
        listener_fds = executor.checks[0]
        assert len(listener_fds) == 2  # one per slot; the check does not hold them
        state = json.loads(executor.env[handover.ENV])  # type: ignore[index]
        assert state["pid"] == os.getpid() and state["reason"] == "SIGUSR2"
        assert [w["pid"] for w in state["policy"]["workers"]] == [p for p, _, _ in fake.spawned]
        assert all(executor.inheritable.values())  # exactly these survive exec
        assert set(HANDLED_SIGNALS) <= executor.blocked  # and signals wait for the new image
        assert pid_file.read_text() == f"{os.getpid()}\n"  # still there: no cleanup on exec

        # The next image: same process, the environment as exec passed it.
        os.environ[handover.ENV] = executor.env[handover.ENV]  # type: ignore[index]
        second = Master(make_config(workers=2, pid_file=str(pid_file)), spawner=fake, executor=executor)
        old = [p for p, _, _ in fake.spawned]
        adopted: list[int] = []

        def more() -> None:
            wait_until(lambda: len(fake.spawned) == 4)
            adopted.extend(s.fileno() for s in second.listeners[0].all_sockets())
            wait_until(lambda: all((p, signal.SIGTERM, True) in fake.signals for p in old))
            assert handover.ENV not in os.environ  # taken: no child inherits it
            os.kill(os.getpid(), signal.SIGTERM)

        assert run_master(second, more) == 0
    finally:
        fake.close()
    assert [g for _, _, g in fake.spawned] == [1, 1, 2, 2]
    assert adopted == listener_fds  # the very same sockets
    assert second.resumed_from is not None and second.resumed_from["reason"] == "SIGUSR2"
    assert not pid_file.exists()  # the last image cleans up


def test_a_failed_check_does_not_exec(caplog):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    executor = FakeExecutor(fake, check_code=1)
    master = Master(make_config(workers=1), spawner=fake, executor=executor)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: "Upgrade aborted" in caplog.text)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert executor.env is None
    assert "the new code does not start: the check process exited with code 1" in caplog.text


def test_a_failed_exec_restores_the_fds_and_the_signal_mask(caplog):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    executor = FakeExecutor(fake, exec_error=FileNotFoundError(2, "No such file or directory"))
    master = Master(make_config(workers=1), spawner=fake, executor=executor)
    seen: dict[str, Any] = {}

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: "Upgrade aborted: exec failed" in caplog.text)
        seen["pipes"] = [os.get_inheritable(fd) for fd in master.wid_to_fd.values()]
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert seen["pipes"] == [False]
    assert not set(HANDLED_SIGNALS) & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_a_check_that_cannot_start_aborts_the_upgrade(caplog):
    fake = FakeSpawner(on_spawn=lambda f, pid: f.report(pid, READY))
    executor = FakeExecutor(fake)

    def no_spawn(close_fds: Any) -> int:
        raise OSError(11, "Resource temporarily unavailable")

    executor.start_check = no_spawn  # type: ignore[method-assign]
    master = Master(make_config(workers=1), spawner=fake, executor=executor)

    def actions() -> None:
        wait_until(lambda: len(fake.spawned) == 1)
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: "Upgrade aborted" in caplog.text)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert run_master(master, actions) == 0
    finally:
        fake.close()
    assert "cannot start the check: [Errno 11] Resource temporarily unavailable" in caplog.text


def test_handover_for_another_pid_or_version_is_ignored_and_removed():
    env = {handover.ENV: json.dumps({"version": handover.VERSION, "pid": os.getpid() + 1})}
    assert handover.take(env) is None and env == {}
    env = {handover.ENV: json.dumps({"version": handover.VERSION + 1, "pid": os.getpid()})}
    assert handover.peek(env) is None
    assert handover.peek({handover.ENV: "{not json"}) is None
    assert handover.peek({}) is None
    good = {handover.ENV: handover.encode({"config": {}})}
    assert handover.peek(good) is not None and handover.ENV in good  # peek leaves it


def test_config_from_a_handover_restores_tuples_and_skips_unknown_options():
    config = make_config(workers=3, bind=("127.0.0.1:0", "unix:/tmp/x.sock"), headers=("X-A: 1",))
    state = json.loads(handover.encode({"config": {**config.flat(), "an_option_from_the_future": 1}}))
    assert handover.config_from(state) == config


def test_read_rss_of_this_process_and_of_no_process():
    rss = read_rss(os.getpid())
    assert rss is not None and rss > 1024 * 1024
    assert read_rss(2**22 + 12345) is None
