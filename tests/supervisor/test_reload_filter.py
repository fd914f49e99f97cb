"""Unit tests of the reload filter, the pruned walk, the poller snapshot and the reload options (no processes)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fastgate.config import ReloadSettings, load
from fastgate.errors import ConfigError
from fastgate.supervisor import reload as rl
from fastgate.supervisor import reload_watcher as rw
from fastgate.supervisor.reload import ChangeBatch, Reloader, WatchOptions
from fastgate.supervisor.reload_watcher import WatchFilter, walk_dirs


def make_tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")


def filt(root: Path, includes: tuple[str, ...] = ("*.py",), excludes: tuple[str, ...] = ()) -> WatchFilter:
    return WatchFilter([str(root)], includes, excludes)


# ------------------------------------------------------------------ file matching


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("app.py", True),
        ("pkg/sub/models.py", True),
        ("README.md", False),
        ("app.pyc", False),
        (".venv/lib/python3.11/site-packages/x.py", False),
        ("venv/lib/x.py", False),
        ("node_modules/pkg/x.py", False),
        (".git/hooks/x.py", False),
        ("pkg/__pycache__/x.py", False),
        (".mypy_cache/x.py", False),
        (".pytest_cache/x.py", False),
        (".ruff_cache/x.py", False),
        (".tox/py311/x.py", False),
        ("build/lib/app.py", False),
        ("dist/app.py", False),
        ("fastgate.egg-info/x.py", False),
        ("pkg/.#app.py", False),  # emacs lock file
        ("app.py~", False),  # backup file
    ],
)
def test_default_includes_and_excludes(tmp_path, rel, expected):
    assert filt(tmp_path).match_file(str(tmp_path / rel)) is expected


def test_user_excludes_by_name_relative_path_and_absolute_path(tmp_path):
    f = filt(tmp_path, excludes=("migrations", "docs/generated", "*_test.py", str(tmp_path / "scratch")))
    assert not f.match_file(str(tmp_path / "db/migrations/0001.py"))
    assert not f.match_file(str(tmp_path / "docs/generated/conf.py"))
    assert f.match_file(str(tmp_path / "docs/conf.py"))
    assert not f.match_file(str(tmp_path / "pkg/app_test.py"))
    assert not f.match_file(str(tmp_path / "scratch/x.py"))
    assert f.match_file(str(tmp_path / "pkg/app.py"))


def test_includes_with_paths_and_double_star(tmp_path):
    f = filt(tmp_path, includes=("*.py", "templates/*.html", "**/*.sql"))
    assert f.match_file(str(tmp_path / "templates/index.html"))
    assert not f.match_file(str(tmp_path / "static/index.html"))
    assert f.match_file(str(tmp_path / "q.sql"))
    assert f.match_file(str(tmp_path / "db/queries/q.sql"))


def test_excludes_win_over_includes(tmp_path):
    f = filt(tmp_path, includes=("*.py",), excludes=("settings_local.py",))
    assert not f.match_file(str(tmp_path / "settings_local.py"))


def test_explicit_root_inside_an_excluded_folder_is_watched(tmp_path):
    root = tmp_path / "build"
    f = WatchFilter([str(tmp_path), str(root)], ("*.py",), ())
    assert f.match_file(str(root / "gen.py"))  # judged relative to the innermost root
    assert not f.match_file(str(tmp_path / "dist/gen.py"))
    assert not f.exclude_dir(str(root))


def test_including_a_default_excluded_name_stops_excluding_it(tmp_path):
    assert not filt(tmp_path).match_file(str(tmp_path / "build/x.py"))
    assert filt(tmp_path, includes=("*.py", "build")).match_file(str(tmp_path / "build/x.py"))


def test_files_outside_every_root_and_the_root_itself_do_not_match(tmp_path):
    f = filt(tmp_path / "src")
    assert not f.match_file(str(tmp_path / "src"))
    # A path outside the roots is still filtered by name (and never watched anyway).
    assert not f.match_file(str(tmp_path / "other/.venv/x.py"))


def test_watchfiles_filter_signature(tmp_path):
    f = filt(tmp_path)
    assert f(2, str(tmp_path / "a.py")) is True
    assert f(2, str(tmp_path / "a.txt")) is False


# ------------------------------------------------------------------ directory walk


def test_walk_prunes_excluded_and_environment_folders(tmp_path):
    make_tree(tmp_path, [
        "app.py", "pkg/models.py", "pkg/sub/x.py",
        ".venv/lib/python3.11/site-packages/big/x.py",
        "myenv/pyvenv.cfg", "myenv/lib/python3.11/site-packages/x.py",  # a venv under any name
        "condaenv/conda-meta/", "condaenv/lib/x.py",
        "node_modules/left-pad/index.js", ".git/objects/ab/", "pkg/__pycache__/",
        "docs/_build/html/", "docs/conf.py",
    ])
    dirs = walk_dirs(filt(tmp_path, excludes=("docs/_build",)))
    rel = sorted(os.path.relpath(d, tmp_path) for d in dirs)
    assert rel == [".", "docs", "pkg", "pkg/sub"]


def test_walk_never_lists_excluded_folders(tmp_path, monkeypatch):
    """The point of pruning: no system call inside node_modules or .venv at all."""
    make_tree(tmp_path, ["app.py", "node_modules/a/b/c/x.js", ".venv/lib/x.py", "src/y.py"])
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path):  # type: ignore[no-untyped-def]
        scanned.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(rw.os, "scandir", spy)
    walk_dirs(filt(tmp_path))
    assert sorted(scanned) == [".", "src"]


def test_walk_follows_a_symlink_cycle_once(tmp_path):
    make_tree(tmp_path, ["a/x.py"])
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    dirs = walk_dirs(filt(tmp_path))
    assert sorted(os.path.relpath(d, tmp_path) for d in dirs) == [".", "a"]


def test_walk_skips_a_vanished_root(tmp_path):
    assert walk_dirs(filt(tmp_path / "gone")) == []


def test_snapshot_sees_same_size_edit_within_a_second(tmp_path):
    """The poller compares nanosecond mtimes, size and inode (notify's poller does not)."""
    make_tree(tmp_path, ["app.py", "notes.txt", ".venv/x.py"])
    f = filt(tmp_path)
    before = rw.snapshot(f)
    assert set(before) == {str(tmp_path / "app.py")}
    st = os.stat(tmp_path / "app.py")
    (tmp_path / "app.py").write_text("y")  # same size
    os.utime(tmp_path / "app.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert rw.snapshot(f) != before


# ------------------------------------------------------------------ options


def test_options_default_to_cwd_plus_outside_app_dir(tmp_path, monkeypatch):
    work, app = tmp_path / "work", tmp_path / "app"
    work.mkdir()
    app.mkdir()
    (work / "inner").mkdir()
    monkeypatch.chdir(work)
    opts = rl.watch_options(ReloadSettings(reload=True), app_dir=str(app))
    assert opts.roots == (str(work), str(app))
    assert opts.includes == ("*.py",)
    # An app dir inside the current directory is already covered.
    assert rl.watch_options(ReloadSettings(reload=True), app_dir="inner").roots == (str(work),)
    # --reload-dir replaces the default.
    opts = rl.watch_options(ReloadSettings(reload=True, reload_dirs=(str(app),), reload_delay=0.2), app_dir=".")
    assert opts.roots == (str(app),)
    assert opts.delay == 0.2
    assert WatchOptions.from_json(opts.to_json()) == opts


def test_missing_reload_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^--reload-dir: .*nope.* is not a directory"):
        rl.watch_options(ReloadSettings(reload=True, reload_dirs=(str(tmp_path / "nope"),)))


def test_reload_with_workers_0_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^--reload: needs the master"):
        load({"reload": True, "workers": 0}, environ={})
    assert load({"reload": False, "workers": 0}, environ={}).process.workers == 0
    assert load({"reload": True, "workers": 2}, environ={}).reload.reload


@pytest.mark.parametrize(
    ("poll", "env", "expected"),
    [
        (True, {}, True),
        (False, {"WATCHFILES_FORCE_POLLING": "1"}, True),
        (False, {"WATCHFILES_FORCE_POLLING": "true"}, True),
        (False, {"WATCHFILES_FORCE_POLLING": "false"}, False),
        (False, {"WATCHFILES_FORCE_POLLING": "disabled"}, False),
        (True, {"WATCHFILES_FORCE_POLLING": "false"}, True),
    ],
)
def test_force_polling(poll, env, expected):
    assert rw.force_polling(poll, env) is expected


def test_poll_delay_from_environment():
    assert rw.poll_delay_ms({}) == 300
    assert rw.poll_delay_ms({"WATCHFILES_POLL_DELAY_MS": "50"}) == 50
    assert rw.poll_delay_ms({"WATCHFILES_POLL_DELAY_MS": "soon"}) == 300


# ------------------------------------------------------------------ master side decoding


def test_read_batches_reassembles_partial_lines_and_reports_eof():
    reloader = Reloader(WatchOptions((), ("*.py",), (), 0.05, False))
    r, w = os.pipe()
    os.set_blocking(r, False)
    reloader._fd, reloader.closed = r, False
    try:
        assert reloader.read_batches() == []
        os.write(w, b'{"count": 2, "paths": ["/a.py", "/b.py"]}\n{"count": 7, "pa')
        assert reloader.read_batches() == [ChangeBatch(2, ("/a.py", "/b.py"))]
        os.write(w, b'ths": ["/c.py"]}\nnot json\n')
        assert reloader.read_batches() == [ChangeBatch(7, ("/c.py",))]
        assert not reloader.closed
    finally:
        os.close(w)
    assert reloader.read_batches() == []
    assert reloader.closed
    assert reloader.fileno() == -1


def test_batch_description_is_relative_and_bounded(tmp_path):
    paths = tuple(str(tmp_path / f"m{i}.py") for i in range(7))
    text = ChangeBatch(7, paths).describe(str(tmp_path))
    assert text == "m0.py, m1.py, m2.py, m3.py, m4.py (+2 more)"
    assert ChangeBatch(1, ("/elsewhere/x.py",)).describe(str(tmp_path)) == "/elsewhere/x.py"


# ------------------------------------------------------------------ syntax pre-check


def test_syntax_errors_only_when_every_changed_file_fails_to_compile(tmp_path):
    good, bad, bad2, tpl = (tmp_path / n for n in ("good.py", "bad.py", "bad2.py", "page.html"))
    good.write_text("x = 1\n")
    bad.write_text("def f(:\n")
    bad2.write_text("x = \0\n")  # a null byte: ValueError / SyntaxError from compile()
    tpl.write_text("<p>{{ x }}</p>\n")
    errors = rw.syntax_errors([str(bad), str(bad2)])
    assert errors is not None and len(errors) == 2
    assert "bad.py" in errors[0] and errors[0].endswith("SyntaxError: invalid syntax")
    # Anything else in the batch means a reload may help: let the new worker decide.
    assert rw.syntax_errors([str(bad), str(good)]) is None
    assert rw.syntax_errors([str(bad), str(tpl)]) is None
    assert rw.syntax_errors([str(bad), str(tmp_path / "deleted.py")]) is None
    assert rw.syntax_errors([]) is None


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_batch_with_syntax_errors_is_logged_and_requests_no_reload():
    reloader = Reloader(WatchOptions((), ("*.py",), (), 0.05, False))
    r, w = os.pipe()
    os.set_blocking(r, False)
    reloader._fd, reloader.closed = r, False
    handler = _Records()
    logger = logging.getLogger("fastgate.error")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        os.write(w, b'{"count": 1, "paths": ["/p/app.py"], "syntax_errors": ["SyntaxError: invalid syntax"]}\n')
        assert reloader.read_requests() is False
        (message,) = handler.messages
        assert "not reloading, the code does not compile" in message
        assert message.endswith("SyntaxError: invalid syntax")
        os.write(w, b'{"count": 1, "paths": ["/p/app.py"]}\n')
        assert reloader.read_requests() is True
        assert "1 change detected in /p/app.py: reloading" in handler.messages[1]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        os.close(w)
        reloader.read_batches()  # EOF: closes the read end


def test_in_environment_checks_markers_between_file_and_root(tmp_path):
    make_tree(tmp_path, ["env/pyvenv.cfg", "env/lib/x.py", "conda/conda-meta/", "conda/lib/y.py", "pkg/z.py"])
    f = filt(tmp_path)
    assert f.in_environment(str(tmp_path / "env/lib/x.py"))
    assert f.in_environment(str(tmp_path / "conda/lib/y.py"))
    assert not f.in_environment(str(tmp_path / "pkg/z.py"))
    assert not f.in_environment(str(tmp_path / "app.py"))
    # The root itself is never an excluded environment (a --reload-dir inside a venv is watched).
    assert not filt(tmp_path / "env").in_environment(str(tmp_path / "env/lib/x.py"))
