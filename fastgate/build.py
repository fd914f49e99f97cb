"""Which build of fastgate runs: the hot path compiled by mypyc, or the same modules as Python.

``COMPILED`` is the one list of modules that setup.py hands to mypyc; everything else is
always Python. The build records what it did in ``_build_info.json`` beside this file: the
compiler and its version, or why it fell back to the pure build, and a digest of each
compiled source. At run time the compiled modules are used unless

* ``FASTGATE_PURE=1`` is set (a debugging switch): :func:`install_pure_finder` puts a finder
  first on ``sys.meta_path`` that loads these modules from their ``.py`` sources, which the
  import system would otherwise pass over for the extension modules beside them; or
* a compiled source changed since the build (an editable install where someone edited a
  module and did not rebuild): the extension would run the old code, so the sources run.

``fastgate/__init__.py`` calls :func:`select` before anything else is imported, so forked
workers (which inherit ``sys.meta_path``) and re-executed masters (which inherit the
environment) run the same build as the process that started them.

This module imports nothing from fastgate and is never compiled itself.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

# The hot path: the sans-I/O core, the ASGI cycles and the worker's per-connection code.
# Kept to what pays: each module here costs build time and is measured by benchmarks/bench_h1.py.
COMPILED: Final = (
    "fastgate.http.events",
    "fastgate.http.h1",
    "fastgate.http.h1_receive",
    "fastgate.http.h1_send",
    "fastgate.ws.session",
    "fastgate.asgi.channel",
    "fastgate.asgi.cycle",
    "fastgate.asgi.http_cycle",
    "fastgate.asgi.ws_cycle",
    "fastgate.asgi.scope",
    "fastgate.worker.deadlines",
    "fastgate.worker.flow",
    "fastgate.worker.output",
    "fastgate.worker.protocol",
    "fastgate.worker.websocket",
)

PURE_ENV: Final = "FASTGATE_PURE"
INFO_FILE: Final = "_build_info.json"
_ROOT: Final = Path(__file__).resolve().parent


def source_path(module: str, root: Path = _ROOT) -> Path:
    """The ``.py`` file of a fastgate module under the package directory ``root``."""
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(module: str, root: Path = _ROOT) -> str:
    """sha256 of a module's source: the build records it, the run compares it."""
    return hashlib.sha256(source_path(module, root).read_bytes()).hexdigest()


def build_info() -> dict[str, object]:
    """What the build recorded (an empty dict for a source tree that was never built)."""
    try:
        data = json.loads((_ROOT / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pure_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """True when FASTGATE_PURE asks for the pure build (any value but "", "0")."""
    return environ.get(PURE_ENV, "") not in ("", "0")


class _SourceFinder:
    """Finds the modules of COMPILED as ``.py`` sources, ahead of their extension modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED or path is None:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


# Why the pure build runs, if it does (None: whatever the import system finds).
_pure_reason: str | None = None


def install_pure_finder(reason: str) -> None:
    """Load the modules of COMPILED from their sources from now on (idempotent)."""
    global _pure_reason
    _pure_reason = reason
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def _stale(info: dict[str, object]) -> str | None:
    """The first compiled module whose source differs from the one compiled, if any."""
    sources = info.get("sources")
    if not isinstance(sources, dict):
        return None
    for module, digest in sources.items():
        try:
            if source_digest(str(module)) != digest:
                return str(module)
        except OSError:
            return str(module)
    return None


def select() -> None:
    """Choose the build for this process and its children (called by fastgate/__init__.py)."""
    if pure_requested():
        install_pure_finder(f"{PURE_ENV}=1")
        return
    info = build_info()
    if info.get("compiler") == "mypyc":
        stale = _stale(info)
        if stale is not None:
            install_pure_finder(f"{stale} changed since the compiled build: reinstall (make install) to compile it")
        else:
            ignore_compiled_throw_warning()
    elif isinstance(info.get("reason"), str):
        # The last build was pure: extension modules still beside the sources (an editable
        # tree compiled before) are leftovers of older code and must not run.
        install_pure_finder(str(info["reason"]))


# What Python 3.12+ warns when a coroutine is thrown into with (type, value, traceback).
THROW_WARNING: Final = r"the \(type, exc, tb\) signature of throw\(\) is deprecated"


def ignore_compiled_throw_warning() -> None:
    """Keep cancellation the same in both builds under ``-W error``.

    A mypyc-compiled coroutine passes an exception on to the awaitable it waits for with the
    three-argument ``throw()`` (mypyc/mypyc#1214), which Python 3.12+ answers with a
    DeprecationWarning. With warnings as errors the warning replaces the CancelledError of
    a drain deadline: the app's WebSocket closed 1011 (an app error) instead of 1012. The
    warning is about the compiler's generated code, not about anything a user can change.
    """
    if sys.version_info >= (3, 12):
        warnings.filterwarnings("ignore", message=THROW_WARNING, category=DeprecationWarning)


def _is_extension(module: str) -> bool:
    """Whether ``module`` is (or would be) loaded from an extension module."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None) or ""
    else:
        spec = importlib.util.find_spec(module)
        origin = (spec.origin if spec is not None else None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The modules of COMPILED that this process runs compiled."""
    return [m for m in COMPILED if _is_extension(m)]


def describe() -> str:
    """One line: which build runs, and the compiler version or why it is pure."""
    compiled = compiled_modules()
    if len(compiled) == len(COMPILED):
        info = build_info()
        return f"compiled (mypyc {info.get('mypy', '?')}, {len(compiled)} modules)"
    if compiled:
        missing = sorted(set(COMPILED) - set(compiled))
        return f"mixed: {len(compiled)} of {len(COMPILED)} modules compiled, not {', '.join(missing)}"
    if _pure_reason is not None:
        return f"pure Python ({_pure_reason})"
    reason = build_info().get("reason")
    if isinstance(reason, str):
        return f"pure Python ({reason})"
    return "pure Python (no compiled modules: built without mypyc or a C compiler)"


def is_compiled() -> bool:
    """True when every module of COMPILED runs compiled."""
    return len(compiled_modules()) == len(COMPILED)
