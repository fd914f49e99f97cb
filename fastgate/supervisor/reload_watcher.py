"""The reload watcher: the child process that watches files and reports to the master.

Runs in a fresh interpreter started by ``Reloader`` (``reload.py``); it inherits only the
write end of a pipe and writes one JSON line per message: ``{"watching": N, "polling":
false}`` once it watches, then ``{"count": N, "paths": [...]}`` per batch of changes
(``"syntax_errors": [...]`` added when none of the changed files compiles).

Not descending into ``.venv`` or ``node_modules``
-------------------------------------------------
A recursive watch (inotify or polling) walks the whole tree before any filter runs: with
a virtual environment in the project that is thousands of directories (one inotify watch
each), which is why ``uvicorn --reload`` burns CPU. Here the tree is walked in Python with
pruning (``WatchFilter.exclude_dir``: VCS folders, caches, ``node_modules``,
``build``/``dist``, any directory holding ``pyvenv.cfg`` or ``conda-meta``, and the
user's excludes), and every kept directory is watched *non-recursively*. A directory
created later shows up as an "added" event in its (watched) parent: the watcher starts a
new watch over the new directory list, then reports the included files already inside
the new directory (they may have been written before the new watch started).

Polling (``--reload-poll``, ``WATCHFILES_FORCE_POLLING``) compares stat snapshots of the
same pruned tree (see ``poll_forever`` for why not watchfiles' own poller).

Stale bytecode
--------------
Python trusts a ``.pyc`` whose recorded source mtime (whole seconds) and size match the
source. An edit that keeps the size within the same second as the previous compile (a
one-character fix, a formatter, a test) would be served from the stale ``.pyc``. The
watcher removes the cached bytecode of every changed ``.py`` file before reporting it.

Signals
-------
The watcher exits when the master goes away (its parent pid changes) or kills it; it
ignores SIGINT, SIGTERM and SIGHUP sent to the process group (the master coordinates
Ctrl-C and shutdown, as with workers).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_EXCLUDE_DIRS: tuple[str, ...] = (
    ".git", ".hg", ".svn", ".bzr",
    ".venv", "venv", ".env", ".conda",
    "node_modules", "bower_components",
    "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox",
    ".idea", ".vscode", ".eggs", "*.egg-info",
    "build", "dist", "htmlcov",
)
# Files that are never source, whatever --reload-include says: bytecode and editor
# swap/backup files (vim's .swp and 4913 probe, emacs' .#lock and backup~).
DEFAULT_EXCLUDE_FILES: tuple[str, ...] = ("*.py[cod]", "*.sw?", "*~", ".#*", "4913", ".DS_Store")
# A directory holding one of these is a Python environment (venv/virtualenv or conda).
ENV_MARKERS: frozenset[str] = frozenset({"pyvenv.cfg", "conda-meta"})
# Above this many watched directories, tell the user how to exclude some.
MANY_DIRS = 2000
# At most this many paths travel in one report line (the count is always exact).
MAX_REPORTED_PATHS = 50


# --------------------------------------------------------------------------- filter


def _match_any(patterns: Iterable[str], name: str, rel: str, abspath: str) -> bool:
    """Whether a glob matches: patterns without '/' match the entry name; with '/' the
    path relative to its watched root (or the absolute path, for absolute patterns)."""
    for pattern in patterns:
        if "/" not in pattern:
            if fnmatch.fnmatchcase(name, pattern):
                return True
        elif pattern.startswith("/"):
            if fnmatch.fnmatchcase(abspath, pattern.rstrip("/")):
                return True
        else:
            pattern = pattern.rstrip("/")
            if fnmatch.fnmatchcase(rel, pattern):
                return True
            # '**/x' also matches 'x' at the root, as in .gitignore.
            if pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]):
                return True
    return False


class WatchFilter:
    """Decides which directories to watch and which file changes matter.

    Args:
        roots: directories to watch (made absolute).
        includes: globs of files whose changes trigger a reload (``--reload-include``).
        excludes: globs of files or directories to ignore (``--reload-exclude``).

    Glob rules: a pattern without ``/`` matches a file or directory *name* anywhere
    (``*.py``, ``node_modules``, ``*.log``); a pattern with ``/`` matches the path
    relative to the watched root (``docs/_build``, ``templates/*.html``, ``**/*.sql``),
    or the absolute path when it starts with ``/``. An excluded directory is not watched
    at all. Excludes win over includes.
    """

    def __init__(self, roots: Sequence[str], includes: Sequence[str], excludes: Sequence[str]) -> None:
        self.roots = tuple(_unique(os.path.abspath(r) for r in roots))
        # Longest first, so a path is judged relative to the innermost root holding it.
        self._roots_by_depth = sorted(self.roots, key=len, reverse=True)
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)
        self.exclude_dir_names = tuple(d for d in DEFAULT_EXCLUDE_DIRS if d not in self.includes)

    def _root_of(self, path: str) -> str | None:
        for root in self._roots_by_depth:
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return root
        return None

    def _relparts(self, path: str) -> tuple[str, list[str]]:
        root = self._root_of(path)
        rel = os.path.relpath(path, root) if root is not None else path.lstrip(os.sep)
        parts = [] if rel == "." else rel.split(os.sep)
        return rel.replace(os.sep, "/"), parts

    def exclude_dir(self, path: str, entries: Iterable[str] = ()) -> bool:
        """Whether the directory ``path`` (absolute) must not be watched or descended into.

        Args:
            path: the directory.
            entries: names inside it, when the caller has listed it already (detects
                virtual environments without another system call).
        """
        path = os.path.abspath(path)
        if path in self.roots:
            return False
        name = os.path.basename(path)
        rel, _ = self._relparts(path)
        if _match_any(self.exclude_dir_names, name, rel, path):
            return True
        if self.excludes and _match_any(self.excludes, name, rel, path):
            return True
        return not ENV_MARKERS.isdisjoint(entries)

    def in_environment(self, path: str) -> bool:
        """Whether a directory between ``path`` and its watched root is a Python environment.

        One ``stat`` per level: only used for the few paths of a change batch.
        """
        root = self._root_of(os.path.abspath(path))
        d = os.path.dirname(os.path.abspath(path))
        while root is not None and d != root and len(d) > len(root):
            if any(os.path.exists(os.path.join(d, marker)) for marker in ENV_MARKERS):
                return True
            d = os.path.dirname(d)
        return False

    def __call__(self, change: object, path: str) -> bool:
        """Whether a change of the file ``path`` should trigger a reload.

        The signature is watchfiles' ``watch_filter`` (the change kind is not used).
        """
        return self.match_file(path)

    def match_file(self, path: str) -> bool:
        """Whether ``path`` (absolute) is a file whose changes trigger a reload."""
        path = os.path.abspath(path)
        rel, parts = self._relparts(path)
        if not parts:
            return False
        name = parts[-1]
        # Any excluded directory on the way down excludes the file.
        root = self._root_of(path) or os.sep
        prefix = root
        for part in parts[:-1]:
            prefix = os.path.join(prefix, part)
            if self.exclude_dir(prefix):
                return False
        if _match_any(DEFAULT_EXCLUDE_FILES, name, rel, path):
            return False
        if self.excludes and _match_any(self.excludes, name, rel, path):
            return False
        return _match_any(self.includes, name, rel, path)


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def walk_dirs(filt: WatchFilter, roots: Sequence[str] | None = None) -> list[str]:
    """Every directory to watch under ``roots`` (default: the filter's roots), pruned.

    Symbolic links to directories are followed once (a cycle is not walked twice);
    unreadable directories are skipped.
    """
    out: list[str] = []
    seen: set[str] = set()
    stack = [os.path.abspath(r) for r in reversed(roots if roots is not None else filt.roots)]
    while stack:
        path = stack.pop()
        try:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            continue
        if filt.exclude_dir(path, (e.name for e in entries)):
            continue
        out.append(path)
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            # Names are checked before descending: no scandir of node_modules or .git.
            if is_dir and not filt.exclude_dir(entry.path):
                subdirs.append(entry.path)
        stack.extend(reversed(sorted(subdirs)))
    return out


def files_in(filt: WatchFilter, dirs: Sequence[str]) -> list[str]:
    """Included files directly inside ``dirs`` (used after a directory appears)."""
    out = []
    for d in dirs:
        try:
            with os.scandir(d) as it:
                for entry in it:
                    if entry.is_file() and filt.match_file(entry.path):
                        out.append(entry.path)
        except OSError:
            continue
    return out


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """What the watcher child needs, as plain JSON-able values."""

    roots: tuple[str, ...]
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    delay: float
    poll: bool

    def to_json(self) -> str:
        return json.dumps({"roots": self.roots, "includes": self.includes, "excludes": self.excludes,
                           "delay": self.delay, "poll": self.poll})

    @classmethod
    def from_json(cls, text: str) -> WatchOptions:
        d = json.loads(text)
        return cls(roots=tuple(d["roots"]), includes=tuple(d["includes"]), excludes=tuple(d["excludes"]),
                   delay=float(d["delay"]), poll=bool(d["poll"]))

# --------------------------------------------------------------------------- child side


class _ParentGone:
    """watchfiles ``stop_event``: set once the master is gone (we were re-parented)."""

    def __init__(self) -> None:
        self.ppid = os.getppid()

    def is_set(self) -> bool:
        return os.getppid() != self.ppid


def force_polling(poll: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to poll instead of using OS events.

    ``--reload-poll`` forces it; otherwise ``WATCHFILES_FORCE_POLLING`` decides as in
    watchfiles (set and not ``false``/``disable``/``disabled`` means poll), and without
    it WSL is detected (its bind mounts of Windows folders deliver no inotify events).
    """
    if poll:
        return True
    env = os.environ if environ is None else environ
    value = env.get("WATCHFILES_FORCE_POLLING")
    if value:
        return value.lower() not in {"false", "disable", "disabled"}
    import platform

    uname = platform.uname()
    return uname.system.lower() == "linux" and "microsoft-standard" in uname.release.lower()


def poll_delay_ms(environ: Mapping[str, str] | None = None) -> int:
    """Polling interval: ``WATCHFILES_POLL_DELAY_MS`` if set, else 300 ms (watchfiles' default)."""
    value = (os.environ if environ is None else environ).get("WATCHFILES_POLL_DELAY_MS", "")
    return int(value) if value.isdecimal() else 300


def _invalidate_bytecode(paths: Iterable[str]) -> None:
    for path in paths:
        if not path.endswith(".py"):
            continue
        try:
            os.unlink(importlib.util.cache_from_source(path))
        except (OSError, ValueError, NotImplementedError):
            pass


def syntax_errors(paths: Iterable[str]) -> list[str] | None:
    """If *every* changed file is Python source that does not compile, the errors; else None.

    Then a reload cannot help: each new worker would fail to import (and with N workers
    print the same traceback N times), or the file is not imported at all. The watcher
    reports the error once and the previous workers keep serving. A batch with any other
    change (a file that compiles, a deleted file, a template) reloads as usual.
    """
    import traceback

    errors = []
    for path in paths:
        if not path.endswith(".py"):
            return None
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError:
            return None  # deleted or unreadable: let the import decide
        try:
            compile(source, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            errors.append("".join(traceback.format_exception_only(exc)).rstrip())
        else:
            return None
    return errors or None


def _report(fd: int, paths: Sequence[str]) -> None:
    message: dict[str, Any] = {"count": len(paths), "paths": sorted(paths)[:MAX_REPORTED_PATHS]}
    errors = syntax_errors(paths)
    if errors:
        message["syntax_errors"] = errors
    _send(fd, message)


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


Snapshot = dict[str, tuple[int, int, int]]


def snapshot(filt: WatchFilter) -> Snapshot:
    """``{path: (mtime_ns, size, inode)}`` of every included file under the filter's roots."""
    out: Snapshot = {}
    for d in walk_dirs(filt):
        try:
            with os.scandir(d) as it:
                for entry in it:
                    try:
                        if entry.is_file() and filt.match_file(entry.path):
                            st = entry.stat()
                            out[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
                    except OSError:
                        continue
        except OSError:
            continue
    return out


def poll_forever(opts: WatchOptions, out_fd: int, stop: _ParentGone, delay_s: float) -> int:
    """Polling watcher: compare stat snapshots every ``delay_s`` seconds.

    Written here rather than using watchfiles' poll mode because notify's poll watcher
    compares whole-second mtimes: a second save within the same second as the first is
    never seen (a typo fixed right after a save would keep the old code serving). Here
    nanosecond mtime, size and inode are compared, and only the pruned tree is walked.
    """
    filt = WatchFilter(opts.roots, opts.includes, opts.excludes)
    before = snapshot(filt)
    _send(out_fd, {"watching": len(walk_dirs(filt)), "polling": True})
    while not stop.is_set():
        time.sleep(delay_s)
        after = snapshot(filt)
        if after == before:
            continue
        # Debounce: keep looking while the tree still changes (a save is several writes).
        step = max(opts.delay, 0.001)
        give_up = time.monotonic() + max(1.6, step)
        while time.monotonic() < give_up:
            time.sleep(step)
            latest = snapshot(filt)
            if latest == after:
                break
            after = latest
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        before = after
        _invalidate_bytecode(changed)
        _report(out_fd, sorted(changed))
    return 0


def watch_forever(opts: WatchOptions, out_fd: int) -> int:
    """Child main loop: watch, report each batch of changes on ``out_fd``; returns an exit code.

    This is ``watchfiles.watch()`` unrolled over its engine, ``RustNotify``, for one
    reason: when a directory appears, the watcher over the new directory list must be
    running *before* the batch is reported, or a save made right after the report
    would fall in the gap. ``watch()`` only starts its watcher on the first ``next()``.
    """
    from watchfiles import Change
    from watchfiles._rust_notify import RustNotify  # in the child only: native threads

    filt = WatchFilter(opts.roots, opts.includes, opts.excludes)
    stop = _ParentGone()
    step_ms = max(1, int(opts.delay * 1000))
    debounce_ms = max(1600, step_ms)
    if force_polling(opts.poll):
        return poll_forever(opts, out_fd, stop, poll_delay_ms() / 1000)

    def start(dirs: list[str]) -> RustNotify:
        if len(dirs) > MANY_DIRS:
            print(f"fastgate: warning: watching {len(dirs)} directories for --reload; exclude large folders "
                  "with --reload-exclude or narrow the watch with --reload-dir", file=sys.stderr, flush=True)
        # (paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied)
        return RustNotify(dirs, False, False, 300, False, True)

    dirs = walk_dirs(filt)
    watcher = start(dirs)
    _send(out_fd, {"watching": len(dirs), "polling": False})
    try:
        while True:
            raw = watcher.watch(debounce_ms, step_ms, 5000, stop)
            if raw == "stop":
                return 0  # the master is gone
            if isinstance(raw, str):  # "timeout", or "signal" (SIGINT is ignored, so unexpected)
                continue
            changed: set[str] = set()
            new_dirs: list[str] = []
            env_appeared = False
            for change, path in raw:
                if os.path.basename(path) in ENV_MARKERS:
                    # A directory just became a virtual environment (``python -m venv``
                    # writes pyvenv.cfg after making its directories): stop watching it.
                    env_appeared = True
                elif change == Change.added and os.path.isdir(path):
                    if not filt.exclude_dir(path):
                        new_dirs.append(path)
                elif filt.match_file(path) and not filt.in_environment(path):
                    changed.add(path)
            if new_dirs or env_appeared:
                # Watch the new directory list first, then look at what the new directories
                # already hold: files written before the new watcher started are found by
                # the scan, files written after it by the watcher.
                old, watcher = watcher, start(walk_dirs(filt))
                late = old.watch(1, 1, 1, None)
                old.close()
                if not isinstance(late, str):
                    changed.update(p for _, p in late if filt.match_file(p) and not filt.in_environment(p))
                changed.update(files_in(filt, walk_dirs(filt, new_dirs)))
            if changed:
                _invalidate_bytecode(changed)
                _report(out_fd, sorted(changed))
    finally:
        watcher.close()


def child_main(argv: Sequence[str]) -> int:
    """Entry point of the watcher process: ``argv`` is ``[options_json, fd]``."""
    # The master coordinates Ctrl-C and shutdown; a signal sent to the whole process group
    # (Ctrl-C, `timeout`, `kill -- -PGID`) must not make the watcher vanish under it. The
    # watcher ends when the master stops it (SIGKILL) or exits (re-parenting).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    opts = WatchOptions.from_json(argv[0])
    fd = int(argv[1])
    try:
        return watch_forever(opts, fd)
    except BrokenPipeError:
        return 0  # the master closed its end: it is shutting down
