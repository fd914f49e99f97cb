"""The watcher child on its own: real file changes in, change batches out over the pipe.

No server here; the end-to-end reload tests are in tests/test_e2e_reload.py.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastgate.supervisor.reload import ChangeBatch, Reloader, WatchOptions
from tests.server import ROOT, wait_for

pytestmark = pytest.mark.e2e


class Watch:
    """A started Reloader plus helpers to read what it reports."""

    def __init__(self, reloader: Reloader) -> None:
        self.r = reloader
        self.batches: list[ChangeBatch] = []

    def pump(self, timeout: float) -> None:
        readable, _, _ = select.select([self.r.fileno()], [], [], timeout)
        if readable:
            self.batches.extend(self.r.read_batches())

    def next_batch(self, timeout: float = 10.0) -> ChangeBatch:
        deadline = time.monotonic() + timeout
        while not self.batches:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no change reported"
            assert not self.r.closed, "watcher exited"
            self.pump(remaining)
        return self.batches.pop(0)

    def ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.r.watching is None:
            assert time.monotonic() < deadline, "watcher never reported it was watching"
            assert not self.r.closed, "watcher exited"
            self.pump(deadline - time.monotonic())


@pytest.fixture(params=["events", "polling"])
def watch(request, tmp_path, monkeypatch) -> Iterator[tuple[Watch, Path]]:
    """A watcher over tmp_path/src, with OS events or with the poller."""
    if request.param == "polling":
        monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
        monkeypatch.setenv("WATCHFILES_POLL_DELAY_MS", "50")
    else:
        monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "false")
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / ".venv" / "lib").mkdir(parents=True)
    (src / "node_modules" / "x").mkdir(parents=True)
    (src / "app.py").write_text("A = 1\n")
    reloader = Reloader(WatchOptions((str(src),), ("*.py",), (), 0.05, False))
    reloader.start()
    w = Watch(reloader)
    try:
        w.ready()
        assert reloader.polling is (request.param == "polling")
        yield w, src
    finally:
        reloader.stop()
        assert reloader.proc is not None
        reloader.proc.wait(10)


def test_change_is_reported_with_its_path(watch):
    w, src = watch
    (src / "pkg" / "models.py").write_text("B = 2\n")
    assert w.next_batch().paths == (str(src / "pkg" / "models.py"),)
    (src / "app.py").write_text("A = 2\n")
    assert w.next_batch().paths == (str(src / "app.py"),)


def test_excluded_folders_and_other_files_report_nothing(watch):
    """Excluded changes first, then an included one: the first batch must be the included one."""
    w, src = watch
    (src / ".venv" / "lib" / "site.py").write_text("x\n")
    (src / "node_modules" / "x" / "y.py").write_text("x\n")
    (src / "pkg" / "__pycache__").mkdir()
    (src / "pkg" / "__pycache__" / "models.cpython-311.pyc").write_bytes(b"x")
    (src / "notes.txt").write_text("x\n")
    (src / ".venv" / "lib" / "site.py").write_text("changed again\n")
    (src / "app.py").write_text("A = 3\n")
    batch = w.next_batch()
    assert batch.paths == (str(src / "app.py"),), batch
    w.pump(0.5)
    assert w.batches == []


def test_new_directory_is_watched(watch):
    w, src = watch
    (src / "newpkg" / "deep").mkdir(parents=True)
    (src / "newpkg" / "deep" / "mod.py").write_text("C = 1\n")
    assert str(src / "newpkg" / "deep" / "mod.py") in w.next_batch().paths
    # Right after the report, an edit in the new directory is seen too.
    (src / "newpkg" / "deep" / "mod.py").write_text("C = 22\n")
    assert w.next_batch().paths == (str(src / "newpkg" / "deep" / "mod.py"),)


def test_a_new_virtualenv_is_not_watched(watch):
    w, src = watch
    env = src / "myenv"
    env.mkdir()
    (env / "pyvenv.cfg").write_text("home = /usr\n")
    (env / "lib").mkdir()
    w.pump(0.5)  # the directory creation is not a reportable change
    w.batches.clear()
    (env / "lib" / "site.py").write_text("x\n")
    (src / "app.py").write_text("A = 4\n")
    assert w.next_batch().paths == (str(src / "app.py"),)


def test_deleted_file_is_reported(watch):
    w, src = watch
    (src / "app.py").unlink()
    assert w.next_batch().paths == (str(src / "app.py"),)


def test_same_size_edit_with_unchanged_mtime_drops_stale_bytecode(watch):
    """Python would trust the old .pyc (same mtime second, same size); the watcher removes it."""
    w, src = watch
    app = src / "app.py"
    pyc = Path(importlib.util.cache_from_source(str(app)))
    py_compile.compile(str(app), cfile=str(pyc))
    st = app.stat()
    app.write_text("A = 9\n")  # same size as "A = 1\n"
    # Restore the old mtime exactly, as a same-second save looks to the import system.
    os.utime(app, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert w.next_batch().paths == (str(app),)
    assert not pyc.exists()


def test_rapid_saves_are_all_seen(watch):
    """Two saves well inside one second (notify's poller would miss the second)."""
    w, src = watch
    for text in ("A = 10\n", "A = 200\n"):
        (src / "app.py").write_text(text)
        assert w.next_batch(5).paths == (str(src / "app.py"),)


def test_watcher_exits_when_the_master_dies(tmp_path):
    """A 'master' that starts a watcher and is SIGKILLed leaves no watcher behind."""
    code = (
        "import os, sys, time\n"
        "from fastgate.supervisor.reload import Reloader, WatchOptions\n"
        f"r = Reloader(WatchOptions(({str(tmp_path)!r},), ('*.py',), (), 0.05, False))\n"
        "r.start()\n"
        "print(r.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    master = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert master.stdout is not None
        watcher_pid = int(master.stdout.readline())
        wait_for(lambda: _state(watcher_pid) == "S", 10, what="watcher running")
        master.kill()
        master.wait(10)
        wait_for(lambda: _state(watcher_pid) in (None, "Z"), 10, what="watcher gone")
    finally:
        master.kill()
        master.wait(10)
        if master.stdout is not None:
            master.stdout.close()


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def inotify_watches(pid: int) -> int:
    """Number of inotify watches a process holds (from /proc/PID/fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                count += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def test_excluded_trees_get_no_inotify_watch(tmp_path, monkeypatch):
    """Not descending means no kernel watch at all inside .venv or node_modules."""
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "false")
    src = tmp_path / "src"
    for i in range(40):
        (src / ".venv" / "lib" / f"pkg{i}" / "sub").mkdir(parents=True)
        (src / "node_modules" / f"m{i}" / "lib").mkdir(parents=True)
        (src / "envs" / "py" / f"d{i}").mkdir(parents=True)
    (src / "envs" / "py" / "pyvenv.cfg").write_text("home = /usr\n")
    (src / "pkg" / "sub").mkdir(parents=True)
    reloader = Reloader(WatchOptions((str(src),), ("*.py",), (), 0.05, False))
    reloader.start()
    try:
        w = Watch(reloader)
        w.ready()
        assert reloader.watching == 4  # src, src/envs, src/pkg, src/pkg/sub
        assert reloader.pid is not None
        assert inotify_watches(reloader.pid) == 4
    finally:
        reloader.stop()


def test_atomic_save_by_rename_is_reported(watch):
    """Editors that write a temporary file and rename it over the original (safe write)."""
    w, src = watch
    tmp = src / "app.py.tmp~"
    tmp.write_text("A = 'renamed into place'\n")
    os.replace(tmp, src / "app.py")
    assert w.next_batch().paths == (str(src / "app.py"),)


def test_directory_that_becomes_a_virtualenv_stops_being_watched(watch):
    """``python -m venv`` makes its directories first and writes pyvenv.cfg after."""
    w, src = watch
    lib = src / "myenv" / "lib" / "site-packages"
    lib.mkdir(parents=True)
    w.pump(0.5)
    (src / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")
    w.pump(0.5)
    assert w.batches == []
    (lib / "installed.py").write_text("x = 1\n")
    (src / "app.py").write_text("A = 5\n")
    assert w.next_batch().paths == (str(src / "app.py"),)
