"""Which build runs (fastgate/build.py): the compiled hot path or its pure-Python twin.

``make test-compiled`` and ``make test-pure`` set TEST_BUILD, so a run meant to test the
compiled build fails here when it silently ran the pure one (no compiler at install, a
stale build). Without TEST_BUILD the expectation follows what the install recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from fastgate import build
from tests.server import ServerProcess

EXTENSIONS = (".so", ".pyd")


def expected_build() -> str:
    wanted = os.environ.get("TEST_BUILD")
    if wanted:
        assert wanted in ("compiled", "pure"), f"TEST_BUILD={wanted!r}: compiled or pure"
        return wanted
    if build.pure_requested() or build.build_info().get("compiler") != "mypyc":
        return "pure"
    return "compiled"


def test_the_expected_build_runs() -> None:
    import fastgate.worker.protocol  # noqa: F401  (the hot path as the server imports it)

    want = expected_build()
    files = {m: sys.modules[m].__file__ or "" for m in build.COMPILED if m in sys.modules}
    assert files, "no hot-path module imported"
    if want == "compiled":
        assert build.is_compiled(), build.describe()
        assert all(f.endswith(EXTENSIONS) for f in files.values()), files
        assert build.describe().startswith("compiled (mypyc ")
    else:
        assert build.compiled_modules() == [], build.describe()
        assert all(f.endswith(".py") for f in files.values()), files
        assert build.describe().startswith("pure Python (")


def run_python(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "FASTGATE_PURE"} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_fastgate_pure_loads_every_hot_module_from_its_source() -> None:
    out = run_python(
        "import importlib, json, fastgate.build as b\n"
        "files = {m: importlib.import_module(m).__file__ for m in b.COMPILED}\n"
        "print(json.dumps([b.describe(), files]))",
        FASTGATE_PURE="1",
    )
    describe, files = json.loads(out)
    assert describe == "pure Python (FASTGATE_PURE=1)"
    assert sorted(files) == sorted(build.COMPILED)
    assert all(f.endswith(".py") for f in files.values()), files


@pytest.mark.parametrize("value", ["", "0"])
def test_fastgate_pure_off_values_keep_the_installed_build(value: str) -> None:
    assert not build.pure_requested({"FASTGATE_PURE": value})
    out = run_python("import fastgate.build as b; print(b.describe())", FASTGATE_PURE=value)
    assert "FASTGATE_PURE" not in out


def test_version_names_the_build() -> None:
    out = subprocess.run([sys.executable, "-m", "fastgate", "--version"], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, "FASTGATE_PURE": "1"}).stdout
    assert out.strip() == "fastgate 0.1.0: pure Python (FASTGATE_PURE=1) build"
    env = {k: v for k, v in os.environ.items() if k != "FASTGATE_PURE"}
    out = subprocess.run([sys.executable, "-m", "fastgate", "--version"], capture_output=True, text=True,
                         timeout=60, check=True, env=env).stdout
    # Without the variable the installed build runs, whichever build this run tests.
    info = build.build_info()
    installed_compiled = info.get("compiler") == "mypyc" and build._stale(info) is None
    assert ("compiled (mypyc " in out) == installed_compiled, out


def test_a_source_edited_after_the_build_is_noticed() -> None:
    module = build.COMPILED[0]
    assert build._stale({"sources": {module: build.source_digest(module)}}) is None
    assert build._stale({"sources": {module: "0" * 64}}) == module
    assert build._stale({"sources": {"fastgate.no_such_module": "0" * 64}}) == "fastgate.no_such_module"
    assert build._stale({}) is None


@pytest.mark.e2e
@pytest.mark.parametrize("pure", [True, False])
def test_forked_workers_run_the_masters_build(pure: bool) -> None:
    if not pure and build.pure_requested():
        pytest.skip("FASTGATE_PURE is set for the whole run")
    env = {"FASTGATE_PURE": "1"} if pure else {}
    with ServerProcess(["tests.build_app:app", "--workers", "1", "--port", "0"], env=env) as server:
        files = httpx.get(server.url + "/", timeout=30).json()
        out = server.output
    assert files and sorted(files) == sorted(set(files) & set(build.COMPILED))
    if pure or expected_build() == "pure":
        assert all(f.endswith(".py") for f in files.values()), files
        # One startup line when the build fell back; none when FASTGATE_PURE asked for it.
        assert out.count("Running the pure Python (") == (0 if pure else 1), out
    else:
        assert all(f.endswith(EXTENSIONS) for f in files.values()), files
        assert "Running the pure Python" not in out, out


def test_a_drain_cancellation_closes_1012_with_warnings_as_errors() -> None:
    # The compiled build's coroutines throw with three arguments; under -W error Python 3.12+
    # turned that DeprecationWarning into the app's exception (1011 instead of 1012). This
    # runs the cycle test without pytest's warning filters, so only fastgate's own filter
    # (build.ignore_compiled_throw_warning) stands between the warning and the app.
    test = "tests/asgi/test_ws_cycle.py::test_cancelled_app_closes_1012"
    done = subprocess.run([sys.executable, "-W", "error", "-m", "pytest", "-q", "-p", "no:warnings",
                           "-p", "no:cacheprovider", "-p", "no:xdist", test],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
