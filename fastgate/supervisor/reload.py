"""Developer reload, master side: start the watcher child and turn its reports into reloads.

How it works
------------
The master is single-threaded and must stay so (it forks workers; forking a threaded
process is unsafe), and watchfiles runs native threads. So the watcher
(``reload_watcher.py``) lives in its own child process, started with a fresh interpreter
(``python -c ...``), that inherits only the write end of a pipe. For every batch of
relevant changes it writes one JSON line::

    {"count": 3, "paths": ["/src/app.py", "/src/models.py", "/src/util.py"]}

The master selects on the read end (``Reloader`` is its ``reload_source``);
``Reloader.read_requests()`` decodes the lines and logs which files changed, and the
master runs the same readiness-gated rolling replacement as SIGHUP (in reload mode one
new worker boots first, so broken code fails once). The master never imports the app,
so each new worker imports the code fresh from disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from fastgate.config import ReloadSettings
from fastgate.errors import ConfigError
from fastgate.supervisor.reload_watcher import WatchOptions, _unique, poll_delay_ms

__all__ = ["ChangeBatch", "Reloader", "WatchOptions", "warm_worker_imports", "watch_options"]

logger = logging.getLogger("fastgate.error")


# --------------------------------------------------------------------------- options


def watch_options(settings: ReloadSettings, app_dir: str = ".") -> WatchOptions:
    """Resolve the reload settings into absolute roots and globs.

    Without ``--reload-dir`` the current directory is watched, plus ``--app-dir`` when
    it lies outside it (otherwise the app's own files would not be watched).

    Raises:
        ConfigError: a ``--reload-dir`` is not a directory.
    """
    if settings.reload_dirs:
        roots = [os.path.abspath(d) for d in settings.reload_dirs]
        for given, root in zip(settings.reload_dirs, roots, strict=True):
            if not os.path.isdir(root):
                raise ConfigError(f"--reload-dir: {given!r} is not a directory; give an existing directory to watch")
    else:
        cwd = os.getcwd()
        roots = [cwd]
        app_root = os.path.abspath(app_dir or ".")
        if os.path.isdir(app_root) and not (app_root + os.sep).startswith(cwd.rstrip(os.sep) + os.sep):
            roots.append(app_root)
    return WatchOptions(roots=tuple(_unique(roots)), includes=tuple(settings.reload_includes) or ("*.py",),
                        excludes=tuple(settings.reload_excludes), delay=settings.reload_delay,
                        poll=settings.reload_poll)

# --------------------------------------------------------------------------- master side


def warm_worker_imports() -> None:
    """Import the worker's own modules (never the app) in the master, before any fork.

    Every reload forks a new worker; with these already imported it only has to import
    the app, which takes save-to-serving from about 180 ms to about 110 ms here. This
    creates no event loop and no thread (uvloop and asyncio are only imported: the
    loop is made in the child), so the master stays single-threaded and loop-free, and
    the app itself is still imported fresh by each new worker.
    """
    import fastgate.worker.server  # noqa: F401


class _WakeUp(Exception):
    """Raised by a signal handler to end ``Reloader.wait_for_change``."""


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """One batch of changed files, as reported by the watcher."""

    count: int
    paths: tuple[str, ...]
    syntax_errors: tuple[str, ...] = ()  # set: every changed file fails to compile; no reload

    def describe(self, cwd: str | None = None) -> str:
        """Human-readable list for the log: ``app.py, pkg/models.py (+3 more)``."""
        base = cwd or os.getcwd()
        shown = []
        for p in self.paths[:5]:
            rel = os.path.relpath(p, base)
            shown.append(p if rel.startswith("..") else rel)
        more = self.count - len(shown)
        return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


class Reloader:
    """The master's handle on the watcher child.

    Usage in the master: ``start()`` before forking workers, add ``fileno()`` to the
    selector, call ``read_batches()`` when it is readable (an empty list with
    ``closed`` set means the watcher died), ``stop()`` on shutdown. The master's
    ``waitpid(-1)`` may reap the child (an unknown pid, logged at debug level); ``stop()``
    takes that as done.

    Args:
        options: what to watch.
        python: interpreter for the watcher (the running one by default).
    """

    def __init__(self, options: WatchOptions, *, python: str = sys.executable) -> None:
        self.options = options
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None  # a watcher started by the previous master image
        self._fd = -1
        self._buf = b""
        self.closed = True
        self.watching: int | None = None  # directories watched, once the watcher is up
        self.polling = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self._adopted_pid

    def adopt(self, pid: int | None, fd: int) -> None:
        """Take over the watcher a previous image of this master started (re-exec in place)."""
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._adopted_pid, self._fd, self._buf, self.closed = pid, fd, b"", False

    def fileno(self) -> int:
        return self._fd

    def start(self) -> None:
        """Start the watcher process (fresh interpreter; only the pipe is inherited)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_inheritable(r, False)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                "from fastgate.supervisor.reload_watcher import child_main; sys.exit(child_main(sys.argv[1:]))")
        try:
            self.proc = subprocess.Popen(
                [self.python, "-c", code, self.options.to_json(), str(w)],
                pass_fds=(w,), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(w)
        self._fd, self._buf, self.closed = r, b"", False

    def read_batches(self) -> list[ChangeBatch]:
        """Read what the watcher reported so far (non-blocking); sets ``closed`` at EOF."""
        batches = []
        while not self.closed:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                data = b""
            if not data:
                self._close_fd()
                break
            self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                d: dict[str, Any] = json.loads(line)
                if "watching" in d:
                    self.watching, self.polling = int(d["watching"]), bool(d["polling"])
                    continue
                batches.append(ChangeBatch(count=int(d["count"]), paths=tuple(d["paths"]),
                                           syntax_errors=tuple(d.get("syntax_errors", ()))))
            except (ValueError, KeyError, TypeError):
                continue
        return batches

    def read_requests(self) -> bool:
        """Read the watcher's reports and log them; whether a reload is requested.

        The master calls this when the pipe is readable (see ``Master``'s
        ``reload_source``); at EOF ``closed`` is set.
        """
        was_watching = self.watching
        batches = self.read_batches()
        if was_watching is None and self.watching is not None:
            how = f"polling every {poll_delay_ms()} ms" if self.polling else "OS events"
            logger.info("Watching %d director%s for changes to %s (%s): %s", self.watching,
                        "y" if self.watching == 1 else "ies", ", ".join(self.options.includes), how,
                        ", ".join(self.options.roots))
        requested = False
        for batch in batches:
            plural = "" if batch.count == 1 else "s"
            if batch.syntax_errors:
                logger.error("%d change%s detected in %s: not reloading, the code does not compile (the previous "
                             "workers keep serving; save a fix to reload):\n%s", batch.count, plural,
                             batch.describe(), "\n".join(batch.syntax_errors))
                continue
            logger.info("%d change%s detected in %s: reloading", batch.count, plural, batch.describe())
            requested = True
        return requested

    def wait_for_change(self) -> bool:
        """Block until the watcher reports a change (True) or goes away (False).

        Used between two masters when the app could not start at all; SIGHUP also
        ends the wait (True), as it would ask a running master to reload.
        """
        import select

        def on_hup(signum: int, frame: object) -> None:
            raise _WakeUp

        old = signal.signal(signal.SIGHUP, on_hup)
        try:
            while not self.closed:
                select.select([self._fd], [], [])
                if self.read_requests():
                    return True
            return False
        except _WakeUp:
            return True
        finally:
            signal.signal(signal.SIGHUP, old)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self.closed = True

    def stop(self, wait: float = 5.0) -> None:
        """Stop the watcher, close the pipe and reap the watcher (up to ``wait`` seconds).

        SIGKILL: the watcher ignores the polite signals (see ``child_main``) and holds
        nothing that needs cleaning up.
        """
        self._close_fd()
        if self._adopted_pid is not None:
            _kill_and_reap(self._adopted_pid, wait)
            self._adopted_pid = None
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)  # ECHILD (the master reaped it already) counts as done
            except subprocess.TimeoutExpired:
                pass


def _kill_and_reap(pid: int, wait: float) -> None:
    """SIGKILL an adopted watcher and reap it (up to ``wait`` seconds; ECHILD: reaped already)."""
    import time

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.01)
