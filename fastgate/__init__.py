"""fastgate: a production ASGI server (master + uvloop workers, httptools, websockets)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgate import build as _build

__version__ = "0.1.0"

# Before any compiled module is imported: FASTGATE_PURE=1 (or sources edited since the
# compiled build) loads the hot path from its .py sources in this process and its children.
_build.select()

if TYPE_CHECKING:
    from fastgate.config import Config

__all__ = ["Config", "__version__", "run"]


def run(app: str, **options: Any) -> int:
    """Serve ``app`` ("module:attr") with the given options (flat names, as in the CLI).

    Returns:
        the process exit code.
    """
    from fastgate import config as _config
    from fastgate.runner import run as _run

    return _run(_config.build({"app": app, **options}))


def __getattr__(name: str) -> Any:
    if name == "Config":
        from fastgate.config import Config

        return Config
    raise AttributeError(name)
