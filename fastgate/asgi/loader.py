"""Import the application from ``"package.module:attribute.path"``.

Turns every failure into an ``AppLoadError`` with one line that names the problem, and
adapts ASGI 2 (double-callable) apps to the ASGI 3 signature.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from typing import Any

from fastgate.asgi.types import ASGIApp, Receive, Scope, Send
from fastgate.errors import AppLoadError


def import_from_string(target: str) -> Any:
    """Import ``module:attr`` (attr may be dotted).

    Raises:
        AppLoadError: bad format, module not found, import-time error, missing attribute.
    """
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f"app must be given as MODULE:ATTRIBUTE, e.g. 'main:app' (got {target!r})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"could not import module {module_name!r}: not found (check --app-dir and the module name)"
            ) from None
        raise AppLoadError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attrs!r}") from None
    return obj


def _positional_arity(fn: Any) -> int | None:
    """Number of positional parameters ``fn`` takes, None if unknown, -1 for *args."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return -1
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def is_asgi2(app: Any) -> bool:
    """Whether ``app`` is an ASGI 2 double callable: ``app(scope)`` -> ``instance(receive, send)``."""
    if inspect.isclass(app):
        # A class is instantiated per connection with the scope, then awaited with
        # (receive, send): the ASGI 2 shape, unless the class itself is awaitable.
        return not hasattr(app, "__await__")
    if inspect.isfunction(app) or inspect.ismethod(app):
        if asyncio.iscoroutinefunction(app):
            return False
        return _positional_arity(app) == 1
    call = getattr(type(app), "__call__", None)  # noqa: B004 - the method itself, to test if it is async
    if call is not None and asyncio.iscoroutinefunction(call):
        return False
    return _positional_arity(app) == 1


class ASGI2Adapter:
    """Present an ASGI 2 app with the ASGI 3 signature."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def load_app(target: str, *, factory: bool = False, app_dir: str = ".", interface: str = "auto") -> ASGIApp:
    """Import and prepare the ASGI app.

    Args:
        target: ``module:attr``.
        factory: call the imported object (no arguments) to get the app.
        app_dir: directory put first on ``sys.path``.
        interface: ``auto``, ``asgi3`` or ``asgi2``.

    Raises:
        AppLoadError: the app cannot be imported or is not usable.
    """
    path = os.path.abspath(app_dir or ".")
    if path not in sys.path:
        sys.path.insert(0, path)
    obj = import_from_string(target)
    if factory:
        if not callable(obj):
            raise AppLoadError(f"--factory: {target!r} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f"--factory: calling {target!r} failed: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise AppLoadError(f"{target!r} is not callable (got {type(obj).__name__}); expected an ASGI app")
    if interface == "asgi2" or (interface == "auto" and is_asgi2(obj)):
        return ASGI2Adapter(obj)
    return obj  # type: ignore[no-any-return]
