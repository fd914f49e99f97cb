"""Build fastgate's hot path with mypyc where it can, and the pure-Python package where not.

The modules compiled are fastgate.build.COMPILED (read from the source, not imported: the
build environment does not have fastgate's dependencies). Without mypyc, or when the C
compiler fails (none installed, no Python headers), the build still succeeds and installs
the same modules as Python; fastgate logs one line at startup saying so. Either way
fastgate/_build_info.json records what was built, for ``fastgate --version``.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
INFO_FILE = "_build_info.json"


def compiled_modules() -> list[str]:
    """fastgate.build.COMPILED, read with ast."""
    tree = ast.parse((ROOT / "fastgate" / "build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "COMPILED":
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    raise RuntimeError("fastgate/build.py: no COMPILED")


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def info(reason: str | None) -> dict[str, object]:
    """The record the running fastgate reads (fastgate.build.build_info)."""
    if reason is not None:
        return {"compiler": None, "reason": reason}
    import mypy.version

    return {
        "compiler": "mypyc",
        "mypy": mypy.version.__version__,
        "python": platform.python_version(),
        "sources": {m: hashlib.sha256(source_of(m).read_bytes()).hexdigest() for m in compiled_modules()},
    }


# The setup.py commands that only write metadata: pip runs setup.py three times per install
# (get_requires_for_build_*: egg_info; prepare_metadata_for_build_*: dist_info; then the
# build), and mypycify type-checks and generates C each time it is called, ~20 s apiece.
METADATA_COMMANDS = {"egg_info", "dist_info"}
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "sdist", "bdist"}


def metadata_only(argv: list[str]) -> bool:
    """Whether this run of setup.py writes metadata only (no extension module is built)."""
    commands = [arg for arg in argv[1:] if not arg.startswith("-")]
    return bool(commands) and commands[0] in METADATA_COMMANDS and not BUILD_COMMANDS & set(commands)


def mypyc_extensions() -> tuple[list[object], str | None]:
    """mypyc's extension modules, or none and why."""
    try:
        from mypyc.build import mypycify
    except ImportError:
        return [], "built without mypyc"
    paths = [str(source_of(m).relative_to(ROOT)) for m in compiled_modules()]
    # opt_level 3 is mypyc's default; the group name keeps the shared runtime library's name
    # stable (fastgate__mypyc) instead of a hash of the module list. The generated C goes to a
    # directory of this Python's own: `make check-all` builds every Python's venv from the
    # same tree at once, and one build must not rewrite the files another is compiling.
    target = str(Path("build") / f"mypyc-{sys.implementation.cache_tag}")
    try:
        extensions = list(mypycify(paths, opt_level="3", group_name="fastgate", target_dir=target))
    except (Exception, SystemExit) as exc:  # a type error or a mypyc bug: the pure build still works
        reason = f"mypyc failed: {type(exc).__name__}: {exc}"
        print(f"fastgate: {reason}; installing the pure build", file=sys.stderr)
        return [], reason
    # mypy leaves ~1.2 million objects behind; every later full collection (and the one at
    # exit) walked them all: ~7 s of CPU per build. Frozen, the collector skips them.
    gc.freeze()
    return extensions, None


class BuildExt(build_ext):
    """build_ext that falls back to the pure build when compiling fails, and records the outcome."""

    reason: str | None = None

    def run(self) -> None:
        reason = BuildExt.reason
        if reason is None:
            try:
                super().run()
            except Exception as exc:  # no compiler, no headers: any failure of the C toolchain
                reason = f"built without a working C compiler: {type(exc).__name__}: {exc}".strip()
                print(f"fastgate: compiling the hot path failed, installing the pure build ({reason})",
                      file=sys.stderr)
                self._remove_outputs()
        self._write_info(reason)

    def _remove_outputs(self) -> None:
        # A half-built set would mix compiled and pure modules: none, or all.
        for ext in self.extensions:
            for path in (Path(self.get_ext_fullpath(ext.name)),):
                path.unlink(missing_ok=True)
        self.extensions = []

    def _write_info(self, reason: str | None) -> None:
        text = json.dumps(info(reason), indent=1, sort_keys=True) + "\n"
        # The wheel's copy (build_lib) and, for editable installs, the source tree's.
        targets = [ROOT / "fastgate" / INFO_FILE] if self.inplace else [Path(self.build_lib) / "fastgate" / INFO_FILE]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def get_outputs(self) -> list[str]:
        out = list(super().get_outputs())
        if not self.inplace:
            out.append(str(Path(self.build_lib) / "fastgate" / INFO_FILE))
        return out


extensions: list[object] = []
if not metadata_only(sys.argv):  # the metadata does not depend on the extension modules
    extensions, BuildExt.reason = mypyc_extensions()
if BuildExt.reason is not None:
    # No extension modules: build_ext will not run, so the reason is recorded here (the
    # source tree's copy serves editable installs; package-data carries it into wheels).
    (ROOT / "fastgate" / INFO_FILE).write_text(json.dumps(info(BuildExt.reason), indent=1, sort_keys=True) + "\n")
setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
