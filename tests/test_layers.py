"""The layer rule of DESIGN.md section 2, checked on every module's imports with ``ast``.

leaf (config, errors, logs, ipc, asgi/types) <- sans-I/O (http, ws) <- asgi <- worker;
the supervisor depends only on leaf modules. Imports inside functions (lazy) are allowed
only where the design names them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastgate"

LEAF = {"fastgate.config", "fastgate.errors", "fastgate.fields", "fastgate.logs", "fastgate.logging", "fastgate.ipc",
        "fastgate.notify", "fastgate.handover",
        "fastgate.asgi.types", "fastgate.asgi.channel"}

# What each layer may import from fastgate (module-level imports). A module's own package
# prefix decides its layer; more specific entries come first.
ALLOWED: list[tuple[str, set[str]]] = [
    ("fastgate.config", {"fastgate.errors", "fastgate.fields"}),
    ("fastgate.fields", {"fastgate.errors"}),
    ("fastgate.errors", set()),
    ("fastgate.ipc", set()),
    # The master's handover across exec: the running config, and fastgate's version for the log.
    ("fastgate.handover", {"fastgate", "fastgate.config"}),
    ("fastgate.logs", {"fastgate.config", "fastgate.errors"}),
    ("fastgate.logging", {"fastgate.config"}),
    ("fastgate.asgi.types", set()),
    ("fastgate.asgi.channel", set()),
    ("fastgate.http", {"fastgate.http", "fastgate.errors", "fastgate.fields"}),
    ("fastgate.ws", {"fastgate.ws", "fastgate.http", "fastgate.errors", "fastgate.fields", "fastgate.asgi.types"}),
    # scope.py reads the parsed networks type from config (a leaf).
    ("fastgate.asgi", {"fastgate.asgi", "fastgate.http", "fastgate.ws"} | LEAF),
    ("fastgate.worker", {"fastgate.worker", "fastgate.asgi", "fastgate.http", "fastgate.ws"} | LEAF),
    ("fastgate.supervisor", {"fastgate.supervisor"} | LEAF),
    ("fastgate.runner", {"fastgate.supervisor", "fastgate"} | LEAF),
    ("fastgate.cli", {"fastgate", "fastgate.runner"} | LEAF),
    ("fastgate.__main__", {"fastgate.cli"}),
    ("fastgate", {"fastgate.config", "fastgate.runner"} | LEAF),
]

# Lazy (function-level) imports the design allows: (importing module, imported prefix).
LAZY_ALLOWED = {
    ("fastgate.runner", "fastgate.worker"),  # single-process mode only
    ("fastgate.runner", "fastgate.supervisor"),
    ("fastgate.runner", "fastgate.ws"),
    ("fastgate.supervisor.spawner", "fastgate.worker"),  # the child's entry point
    ("fastgate.supervisor.spawner", "fastgate.asgi"),  # --preload: the master imports the app
    ("fastgate.supervisor.master", "fastgate.worker"),
    ("fastgate.supervisor.reload", "fastgate.worker"),
    ("fastgate.cli", "fastgate.runner"),
    ("fastgate.worker.server", "fastgate.supervisor.sockets"),  # run_single binds its own sockets
    ("fastgate.worker.protocol", "fastgate.ws"),
    ("fastgate.worker.protocol", "fastgate.worker"),
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


def allowed_for(module: str) -> set[str]:
    for prefix, allowed in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            return allowed
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it")


def permitted(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed) or (
        target == "fastgate" and "fastgate" in allowed
    )


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
    (root / "supervisor" / "master.py").write_text(
        "from fastgate.config import Config\n"
        "def child():\n    from fastgate.worker import protocol\n"  # the allowed lazy exception
        "from fastgate.http.h1 import H1Connection\n"  # forbidden: supervisor above leaf only
    )
    found = violations(root)
    assert found == [
        "fastgate/http/h1.py:2: import of fastgate.worker.protocol from fastgate.http.h1",
        "fastgate/http/h1.py:4: lazy import of fastgate.worker.protocol from fastgate.http.h1",
        "fastgate/supervisor/master.py:4: import of fastgate.http.h1 from fastgate.supervisor.master",
    ]
