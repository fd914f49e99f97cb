"""App loading: module:attr, dotted attributes, factories, --app-dir, ASGI 2 detection, errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgate.asgi.loader import ASGI2Adapter, import_from_string, is_asgi2, load_app
from fastgate.errors import AppLoadError

MODULE = '''
import functools

async def app(scope, receive, send):
    await send({"type": "asgi3", "path": scope["path"]})

class Namespace:
    class Inner:
        @staticmethod
        async def app(scope, receive, send):
            await send({"type": "nested"})

class ASGI2:
    def __init__(self, scope):
        self.scope = scope
    async def __call__(self, receive, send):
        await send({"type": "asgi2", "path": self.scope["path"]})

def asgi2_function(scope):
    async def instance(receive, send):
        await send({"type": "asgi2-fn", "path": scope["path"]})
    return instance

class ASGI3Instance:
    async def __call__(self, scope, receive, send):
        await send({"type": "asgi3-instance"})

class ASGI2Instance:
    def __call__(self, scope):
        return ASGI2(scope)

asgi3_instance = ASGI3Instance()
asgi2_instance = ASGI2Instance()
partial_app = functools.partial(app)

def factory():
    return app

def failing_factory():
    raise ValueError("no config")

def needs_args(a, b):
    return app

not_callable = {"a": 1}
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    name = f"loader_app_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "broken_on_import.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('config missing')\n")
    (tmp_path / "syntax_error.py").write_text("def (:\n")
    saved = list(sys.path)
    yield tmp_path
    sys.path[:] = saved
    for mod in [m for m in sys.modules if m.startswith(("loader_app_", "broken_on_import", "raises_on_import",
                                                         "syntax_error"))]:
        del sys.modules[mod]


def mod(app_dir: Path) -> str:
    return next(p.stem for p in app_dir.glob("loader_app_*.py"))


def call(app: Any, path: str = "/p") -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": path}, receive, send))
    return sent


@pytest.mark.parametrize(
    ("attr", "kind", "adapted"),
    [
        ("app", "asgi3", False),
        ("Namespace.Inner.app", "nested", False),
        ("ASGI2", "asgi2", True),
        ("asgi2_function", "asgi2-fn", True),
        ("asgi3_instance", "asgi3-instance", False),
        ("asgi2_instance", "asgi2", True),
        ("partial_app", "asgi3", False),
    ],
)
def test_load_and_detect(app_dir: Path, attr: str, kind: str, adapted: bool) -> None:
    app = load_app(f"{mod(app_dir)}:{attr}", app_dir=str(app_dir))
    assert isinstance(app, ASGI2Adapter) is adapted
    assert call(app)[0]["type"] == kind


def test_factory(app_dir: Path) -> None:
    app = load_app(f"{mod(app_dir)}:factory", factory=True, app_dir=str(app_dir))
    assert call(app)[0]["type"] == "asgi3"


def test_forced_interface(app_dir: Path) -> None:
    app = load_app(f"{mod(app_dir)}:asgi2_function", app_dir=str(app_dir), interface="asgi2")
    assert isinstance(app, ASGI2Adapter)
    app = load_app(f"{mod(app_dir)}:ASGI2", app_dir=str(app_dir), interface="asgi3")
    assert not isinstance(app, ASGI2Adapter)


def test_app_dir_goes_first_on_sys_path(app_dir: Path) -> None:
    load_app(f"{mod(app_dir)}:app", app_dir=str(app_dir))
    assert sys.path[0] == str(app_dir)
    load_app(f"{mod(app_dir)}:app", app_dir=str(app_dir))
    assert sys.path.count(str(app_dir)) == 1


@pytest.mark.parametrize(
    ("target", "kw", "message"),
    [
        ("nocolon", {}, "app must be given as MODULE:ATTRIBUTE, e.g. 'main:app' (got 'nocolon')"),
        (":app", {}, "app must be given as MODULE:ATTRIBUTE"),
        ("mod:", {}, "app must be given as MODULE:ATTRIBUTE"),
        ("no_such_module_xyz:app", {}, "could not import module 'no_such_module_xyz': not found"),
        ("no_such_pkg_xyz.sub:app", {}, "could not import module 'no_such_pkg_xyz.sub': not found"),
        ("broken_on_import:app", {}, "error while importing 'broken_on_import': ModuleNotFoundError: "
                                     "No module named 'no_such_dependency_xyz'"),
        ("raises_on_import:app", {}, "error while importing 'raises_on_import': RuntimeError: config missing"),
        ("syntax_error:app", {}, "error while importing 'syntax_error': SyntaxError"),
        ("MOD:missing", {}, "module 'MOD' has no attribute 'missing'"),
        ("MOD:Namespace.nope", {}, "module 'MOD' has no attribute 'Namespace.nope'"),
        ("MOD:not_callable", {}, "'MOD:not_callable' is not callable (got dict); expected an ASGI app"),
        ("MOD:not_callable", {"factory": True}, "--factory: 'MOD:not_callable' is not callable"),
        ("MOD:failing_factory", {"factory": True}, "--factory: calling 'MOD:failing_factory' failed: "
                                                   "ValueError: no config"),
        ("MOD:needs_args", {"factory": True}, "--factory: calling 'MOD:needs_args' failed: TypeError"),
    ],
)
def test_errors_are_one_clear_line(app_dir: Path, target: str, kw: dict[str, Any], message: str) -> None:
    target = target.replace("MOD:", mod(app_dir) + ":")
    message = message.replace("'MOD", "'" + mod(app_dir))
    with pytest.raises(AppLoadError) as info:
        load_app(target, app_dir=str(app_dir), **kw)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_import_from_string_plain() -> None:
    assert import_from_string("os.path:join") is __import__("os").path.join


def test_is_asgi2_edge_cases() -> None:
    class Awaitable:
        def __await__(self) -> Any:
            yield

    assert not is_asgi2(Awaitable)
    assert not is_asgi2(print)  # builtin, no signature to read: assume ASGI 3

    async def varargs(*args: Any) -> None: ...

    assert not is_asgi2(varargs)

    def sync_three(scope: Any, receive: Any, send: Any) -> None: ...

    assert not is_asgi2(sync_three)
    assert is_asgi2(lambda scope: None)
    assert not is_asgi2(lambda *a: None)


def test_asgi2_from_tests_apps() -> None:
    from tests import apps

    assert isinstance(load_app("tests.apps:ASGI2App"), ASGI2Adapter)
    assert not isinstance(load_app("tests.apps:app"), ASGI2Adapter)
    assert call(load_app("tests.apps:ASGI2App"))[1]["body"] == b"asgi2 /p"
    assert apps.factory() is apps.app
