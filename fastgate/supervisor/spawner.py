"""Start, signal and reap worker processes: the only place the master forks.

``Spawner`` is the seam the master talks to; ``ForkSpawner`` does it with ``os.fork``.
Tests of the master loop substitute a fake.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

if TYPE_CHECKING:
    import socket

    from fastgate.config import Config
    from fastgate.errors import AppLoadError

from fastgate import handover

# The pre-exec check: what a new master image must import before it can adopt anything,
# and the handover format it must read. If the installed fastgate is broken (a half-done
# upgrade, a syntax error) or speaks another format, this fails in a throwaway process
# instead of in the master, which would then be gone for good.
UPGRADE_CHECK_CODE = (
    "import sys, fastgate.cli, fastgate.runner, fastgate.supervisor.master, fastgate.handover as h; "
    f"sys.exit(0 if h.VERSION == {handover.VERSION} else 'fastgate: error: the installed fastgate cannot adopt "
    f"this master (handover format ' + str(h.VERSION) + ', not {handover.VERSION})')"
)


@dataclass(frozen=True, slots=True)
class WorkerHandle:
    """A started worker: its pid and the read end of its report pipe."""

    pid: int
    fd: int


class Spawner(Protocol):
    def spawn(self, slot: int, generation: int) -> WorkerHandle: ...

    def send_signal(self, pid: int, sig: int, group: bool = False) -> None: ...

    def reap(self) -> list[tuple[int, int]]: ...


class Executor(Protocol):
    """The master's own process operations for re-executing in place (tests use a fake)."""

    def start_check(self, close_fds: Iterable[int]) -> int: ...

    def exec(self, env: Mapping[str, str]) -> NoReturn: ...


def exit_code(status: int) -> int:
    """``waitpid`` status -> exit code, or ``-signum`` for a signal death."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class ForkSpawner:
    """Fork workers; the child runs ``child_main(slot, generation, report_fd)`` and exits.

    Args:
        child_main: the worker's whole life; its return value is the exit code. It runs
            in the child right after ``fork`` and must close what the master owns.
    """

    def __init__(self, child_main: Callable[[int, int, int], int], block: Iterable[int] = ()) -> None:
        self.child_main = child_main
        self.block = set(block)

    def spawn(self, slot: int, generation: int) -> WorkerHandle:
        """Fork one worker.

        Raises:
            OSError: fork or pipe failed (EAGAIN, ENOMEM); the master treats it as a crash.
        """
        read_fd, write_fd = os.pipe()
        # Signals stay blocked across fork: until the child has restored default handlers,
        # a signal meant for it would run the master's handler and be lost. The child
        # unblocks them once set up; the parent right after fork.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.block) if self.block else None
        try:
            pid = os.fork()
        except OSError:
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child (covered by the e2e tests)
            code = 1
            try:
                os.close(read_fd)
                code = self.child_main(slot, generation, write_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        try:
            # Also done by the child; doing it here too closes the race with an early killpg.
            os.setpgid(pid, pid)
        except OSError:
            pass
        return WorkerHandle(pid, read_fd)

    def send_signal(self, pid: int, sig: int, group: bool = False) -> None:
        """Signal a worker, or its whole process group; a vanished target is fine."""
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            # Already gone (or, for a group, nothing left of it). Never fall back to the bare
            # pid: once reaped, the number may belong to an unrelated process.
            pass

    def reap(self) -> list[tuple[int, int]]:
        """Every child that exited, as ``(pid, exit code or -signum)``; never blocks."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if pid == 0:
                break
            out.append((pid, exit_code(status)))
        return out


class ProcessExecutor:
    """``Executor`` with ``posix_spawn`` and ``execve``.

    Args:
        python: the interpreter to run (the running one).
        argv: the command line the master image was started with (``sys.orig_argv``: the
            same script, ``-m fastgate`` or console script, with the interpreter's options).
    """

    def __init__(self, python: str = sys.executable, argv: Sequence[str] | None = None) -> None:
        self.python = python
        self.argv = list(sys.orig_argv if argv is None else argv)

    def start_check(self, close_fds: Iterable[int]) -> int:
        """Start the pre-exec check in a fresh interpreter; its pid (exit 0: fastgate imports).

        It inherits stdout/stderr (its traceback is the operator's explanation), not the
        listening sockets, and starts with no signal blocked.
        """
        actions = [(os.POSIX_SPAWN_CLOSE, fd) for fd in close_fds]
        return os.posix_spawn(self.python, [self.python, "-c", UPGRADE_CHECK_CODE], os.environ,
                              file_actions=actions, setsigmask=())

    def exec(self, env: Mapping[str, str]) -> NoReturn:
        """Replace this process's image with the same command (same pid); returns only by
        raising ``OSError``."""
        os.execve(self.python, self.argv, dict(env))


def preload_app(config: Config) -> Any:
    """``--preload``: import the app in the master, as a worker would (``AppLoadError`` if not).

    ``fastgate.worker.server`` comes along (uvloop, httptools, the protocol code): imported
    before the fork, it is shared copy-on-write too. No loop or thread is created.
    """
    from fastgate.worker.server import configured_app  # shared with the workers, and checked here

    return configured_app(config)


def report_app_load_error(exc: AppLoadError) -> None:
    """Print a preload failure exactly as a worker prints an app load failure."""
    from fastgate.worker.server import report_app_load_error as report

    report(exc)


def become_worker(
    config: Config, sockets: Sequence[socket.socket], *, report_fd: int, parent_fd: int, master_pid: int,
    app: Any = None, tls: Sequence[bool] = (),
) -> int:  # pragma: no cover - runs in the child
    """The child's entry into the worker code, imported only after fork.

    Without ``--preload`` the master never imports ``fastgate.worker`` (nor uvloop, nor the
    app), so each worker starts from fresh imports and the master stays small and loop-free.
    With it, ``app`` is the master's preloaded app and the worker uses it as it is.
    """
    from fastgate.worker.server import run_worker

    return run_worker(config, sockets, report_fd=report_fd, parent_fd=parent_fd, master_pid=master_pid, app=app,
                      tls=tls)
