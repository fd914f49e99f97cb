"""Exception hierarchy and process exit codes.

Exit codes follow gunicorn and uvicorn so that orchestrators and scripts written for
them read ours the same way.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad command line or config: same code argparse uses
EXIT_BOOT_FAILED = 3  # lifespan startup failed, or the worker could not start serving
EXIT_APP_LOAD_FAILED = 4  # the application could not be imported or is not an ASGI callable


class FastgateError(Exception):
    """Base class of every error fastgate raises on purpose."""


class ConfigError(FastgateError):
    """An option has an invalid value; the message names the flag and the fix."""


class AppLoadError(FastgateError):
    """The ASGI application could not be imported or is not callable."""


class LifespanFailure(FastgateError):
    """The application reported (or raised) a lifespan startup/shutdown failure."""


class BindError(FastgateError):
    """A listening socket could not be created."""


class LocalProtocolError(FastgateError):
    """fastgate's own code (or the app through it) misused a protocol object."""


class ASGIProtocolError(RuntimeError):
    """The application broke the ASGI message contract (wrong order, wrong type)."""


class ClientDisconnected(OSError):
    """Raised by ``send`` once the peer is gone (ASGI spec 2.4: an OSError subclass)."""
