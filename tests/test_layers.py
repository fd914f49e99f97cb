"""The layer rule of DESIGN.md section 2, checked on every module's imports with ``ast``.

leaf (build, config, errors, fields, logs, ipc, notify, asgi/types, asgi/channel) <- sans-I/O
(http, ws) <- asgi <- worker; the supervisor depends only on leaf modules. Imports inside
functions (lazy) across layers are allowed only where the design names them. The allow
lists are exact (every entry is an edge that exists) and docs/architecture.md shows them.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastgate"

# Modules that import no other layer: only each other (checked below).
LEAF = {"fastgate.build", "fastgate.config", "fastgate.errors", "fastgate.fields", "fastgate.logs", "fastgate.ipc",
        "fastgate.notify", "fastgate.ctl", "fastgate.asgi.types", "fastgate.asgi.channel"}

# What each layer may import from fastgate, at module level or lazily, and nothing more:
# every entry is an edge some module of the layer has (test_allow_lists_are_exact), so a
# new edge is added here on purpose and one that disappears is taken out. A module's layer
# is the most specific prefix that names it (more specific entries come first); "fastgate"
# is the package's __init__ alone. docs/architecture.md shows this table (kept equal).
ALLOWED: list[tuple[str, set[str]]] = [
    ("fastgate.build", set()),
    ("fastgate.config", {"fastgate.errors", "fastgate.fields"}),
    ("fastgate.fields", {"fastgate.errors"}),
    ("fastgate.errors", set()),
    ("fastgate.ipc", set()),
    ("fastgate.notify", set()),
    # The master's handover across exec: the running config, and fastgate's version for the log.
    ("fastgate.handover", {"fastgate", "fastgate.config"}),
    ("fastgate.logs", {"fastgate.config", "fastgate.errors"}),
    # The SSLContext from TLSSettings, built where it is used (worker) or checked (master).
    ("fastgate.tls", {"fastgate.config", "fastgate.errors"}),
    ("fastgate.asgi.types", set()),
    ("fastgate.asgi.channel", set()),
    ("fastgate.http", {"fastgate.http", "fastgate.errors", "fastgate.fields"}),
    ("fastgate.ws", {"fastgate.http", "fastgate.errors", "fastgate.fields"}),
    ("fastgate.asgi", {"fastgate.asgi", "fastgate.http", "fastgate.ws", "fastgate.config", "fastgate.errors",
                       "fastgate.fields"}),
    ("fastgate.worker", {"fastgate.worker", "fastgate.asgi", "fastgate.http", "fastgate.ws", "fastgate.config",
                         "fastgate.errors", "fastgate.fields", "fastgate.logs", "fastgate.ipc", "fastgate.tls"}),
    ("fastgate.supervisor", {"fastgate.supervisor", "fastgate.config", "fastgate.errors", "fastgate.ipc",
                             "fastgate.logs", "fastgate.notify", "fastgate.handover", "fastgate.tls"}),
    ("fastgate.runner", {"fastgate.build", "fastgate.config", "fastgate.errors", "fastgate.logs",
                         "fastgate.handover"}),
    ("fastgate.cli", {"fastgate", "fastgate.build", "fastgate.config", "fastgate.errors", "fastgate.logs",
                      "fastgate.runner", "fastgate.handover", "fastgate.ctl"}),
    ("fastgate.ctl", set()),
    ("fastgate.__main__", {"fastgate.cli"}),
    ("fastgate", {"fastgate.build", "fastgate.config", "fastgate.runner"}),
]

# Edges allowed only as lazy (function-level) imports: the exceptions the design names.
LAZY_ALLOWED = {
    ("fastgate.runner", "fastgate.supervisor"),  # run the master (or, single-process, bind the listeners)
    ("fastgate.runner", "fastgate.worker"),  # single-process mode only
    # The child's entry point; and --preload, where the master imports the app as a worker would.
    ("fastgate.supervisor.spawner", "fastgate.worker"),
    ("fastgate.supervisor.reload", "fastgate.worker"),  # the dev reload warms the worker's imports
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, bool, int]]:
    """(imported module, lazy?, line) for every fastgate import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # typing-only imports create no runtime edge
            if isinstance(child, ast.Import):
                out.extend((a.name, lazy, child.lineno) for a in child.names if a.name.startswith("fastgate"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                if target.startswith("fastgate"):
                    # `from fastgate.pkg import x` may name a submodule: that is the edge.
                    for a in child.names:
                        sub = f"{target}.{a.name}".replace(".", "/")
                        is_module = (root.parent / sub).is_dir() or (root.parent / (sub + ".py")).exists()
                        out.append((f"{target}.{a.name}" if is_module else target, lazy, child.lineno))
            visit(child, child_lazy)

    visit(tree, False)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def layer_of(module: str) -> str:
    for prefix, _ in ALLOWED:
        if module == prefix or (prefix != "fastgate" and module.startswith(prefix + ".")):
            return prefix
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it")


def allowed_for(module: str) -> set[str]:
    return dict(ALLOWED)[layer_of(module)]


def permitted(target: str, allowed: set[str]) -> bool:
    return any(target == a or (a != "fastgate" and target.startswith(a + ".")) for a in allowed)


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        allowed = allowed_for(module)
        for target, lazy, line in imports(path, root):
            if target == module or permitted(target, allowed):
                continue
            if lazy and any(module == m and target.startswith(t) for m, t in LAZY_ALLOWED):
                continue
            kind = "lazy import" if lazy else "import"
            found.append(f"{path.relative_to(root.parent)}:{line}: {kind} of {target} from {module}")
    return found


def test_layer_rule() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 15
    found = violations()
    assert not found, "forbidden imports (DESIGN.md section 2):\n" + "\n".join(found)


@functools.cache  # the sources do not change during a run; parsing them all costs seconds under coverage
def _edges() -> list[tuple[str, str, bool]]:
    return [(module_name(path), target, lazy) for path in sorted(PACKAGE.rglob("*.py"))
            for target, lazy, _ in imports(path) if target != module_name(path)]


def _exists(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").exists()


def test_allow_lists_are_exact() -> None:
    edges = _edges()
    names = {prefix for prefix, _ in ALLOWED} | set().union(*(a for _, a in ALLOWED)) | LEAF
    names |= {m for m, _ in LAZY_ALLOWED} | {t for _, t in LAZY_ALLOWED}
    assert not [n for n in names if not _exists(n)], "names of no module"
    unused = [(layer, target) for layer, allowed in ALLOWED for target in allowed
              if not any(layer_of(m) == layer and permitted(t, {target}) for m, t, _ in edges)]
    assert not unused, f"allowed edges no module has (remove them): {unused}"
    lazy_unused = [(m, t) for m, t in LAZY_ALLOWED
                   if not any(lazy and em == m and et.startswith(t) for em, et, lazy in edges)]
    assert not lazy_unused, f"lazy exceptions no module uses (remove them): {lazy_unused}"
    redundant = [(m, t) for m, t in LAZY_ALLOWED if permitted(t, allowed_for(m))]
    assert not redundant, f"lazy exceptions the layer allows anyway: {redundant}"


def test_leaf_modules_import_only_leaf_modules() -> None:
    for module, target, _ in _edges():
        if module in LEAF:
            assert target in LEAF, f"{module} imports {target}: not a leaf"


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def test_the_architecture_doc_shows_these_layers_and_names_real_modules() -> None:
    text = ARCHITECTURE.read_text()
    table: dict[str, set[str]] = {}
    lazy: set[tuple[str, str]] = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `fastgate") and len(cells) == 3:
            table[cells[0].strip("`")] = set(re.findall(r"`(fastgate[\w.]*)`", cells[2]))
        elif line.startswith("- lazily: "):
            found = re.findall(r"`(fastgate[\w.]*)`", line)
            lazy.add((found[0], found[1]))
    assert table == dict(ALLOWED), "docs/architecture.md's layer table differs from ALLOWED"
    assert lazy == LAZY_ALLOWED, "docs/architecture.md's lazy exceptions differ from LAZY_ALLOWED"
    named = set(re.findall(r"`(fastgate(?:\.\w+)+)", text)) | {
        p.removesuffix(".py").replace("/", ".") for p in re.findall(r"`(fastgate/[\w/]+\.py)`", text)}
    assert named and not [n for n in sorted(named) if not _exists(n) and not _exists(n.rpartition(".")[0])], \
        "docs/architecture.md names modules that do not exist"


def test_the_checker_catches_forbidden_edges(tmp_path: Path) -> None:
    root = tmp_path / "fastgate"
    (root / "http").mkdir(parents=True)
    (root / "worker").mkdir()
    (root / "supervisor").mkdir()
    for d in (root, root / "http", root / "worker", root / "supervisor"):
        (d / "__init__.py").write_text("")
    (root / "worker" / "protocol.py").write_text("")
    (root / "http" / "h1.py").write_text(
        "from fastgate.http import events\n"
        "from ..worker import protocol\n"  # relative, forbidden
        "def f():\n    import fastgate.worker.protocol\n"  # lazy, not in the allowed list
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fastgate.worker import protocol\n"
    )
    (root / "supervisor" / "spawner.py").write_text(
        "from fastgate.config import Config\n"
        "def child():\n    from fastgate.worker import protocol\n"  # the allowed lazy exception
        "from fastgate.http.h1 import H1Connection\n"  # forbidden: supervisor above leaf only
    )
    (root / "supervisor" / "master.py").write_text(
        "def child():\n    from fastgate.worker import protocol\n"  # lazy, but not an exception here
    )
    found = violations(root)
    assert found == [
        "fastgate/http/h1.py:2: import of fastgate.worker.protocol from fastgate.http.h1",
        "fastgate/http/h1.py:4: lazy import of fastgate.worker.protocol from fastgate.http.h1",
        "fastgate/supervisor/master.py:2: lazy import of fastgate.worker.protocol from fastgate.supervisor.master",
        "fastgate/supervisor/spawner.py:4: import of fastgate.http.h1 from fastgate.supervisor.spawner",
    ]


def test_the_exactness_checks_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # An allowed edge nobody has, and a lazy exception nobody uses, are reported.
    exact = list(ALLOWED)
    stale = [(layer, allowed | {"fastgate.supervisor"} if layer == "fastgate.http" else allowed)
             for layer, allowed in exact]
    monkeypatch.setitem(globals(), "ALLOWED", stale)
    with pytest.raises(AssertionError, match="allowed edges no module has"):
        test_allow_lists_are_exact()
    monkeypatch.setitem(globals(), "ALLOWED", exact)
    monkeypatch.setitem(globals(), "LAZY_ALLOWED", LAZY_ALLOWED | {("fastgate.worker.server", "fastgate.supervisor")})
    with pytest.raises(AssertionError, match="lazy exceptions no module uses"):
        test_allow_lists_are_exact()
