"""Logger names, log setup, access-log lines, and reopening log files (SIGUSR1)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from fastgate.config import LogSettings
from fastgate.errors import ConfigError

error_logger = logging.getLogger("fastgate.error")
access_logger = logging.getLogger("fastgate.access")

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

# Control characters and DEL become \xNN so a request cannot forge log lines.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_ESCAPES[ord("\\")] = "\\\\"
_ESCAPES[ord('"')] = '\\"'


def escape(text: str) -> str:
    """Make peer-controlled text safe for one log line."""
    return text.translate(_ESCAPES).encode("ascii", "backslashreplace").decode("ascii")


DEFAULT_ACCESS_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with named fields a log shipper can index.

    Every record has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
    ``message`` and ``pid``; access records add the fields of ``AccessFormatter.fields``.
    ``ensure_ascii`` keeps each line ASCII whatever the request held: a line is always
    valid JSON, and valid UTF-8 for any reader.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        access = getattr(record, "access", None)
        if access is not None:
            out.update(access)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(process)d] %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")


_handler: logging.Handler | None = None


def configure(settings: LogSettings) -> None:
    """Install fastgate's handler on the ``fastgate`` logger (idempotent), or apply the
    user's ``--log-config`` instead.

    Raises:
        ConfigError: the ``--log-config`` file cannot be read or applied.
    """
    global _handler
    if settings.log_config:
        if _handler is not None:
            logging.getLogger("fastgate").removeHandler(_handler)
            _handler.close()
            _handler = None
        apply_log_config(settings.log_config)
        access_logger.disabled = not settings.access_log
        return
    level_name = settings.log_level.upper()
    level = TRACE if level_name == "TRACE" else getattr(logging, level_name)
    root = logging.getLogger("fastgate")
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler: logging.Handler
    if settings.log_file:
        handler = logging.FileHandler(settings.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    access_logger.disabled = not settings.access_log
    _handler = handler


def apply_log_config(path: str) -> None:
    """``--log-config``: a logging dictConfig in JSON or YAML, or a fileConfig INI file, by
    extension (``.json``, ``.yaml``/``.yml``, anything else INI), as uvicorn reads it.

    Raises:
        ConfigError: one line naming the file and what is wrong.
    """
    import logging.config

    try:
        if path.endswith(".json"):
            with open(path) as f:
                logging.config.dictConfig(json.load(f))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                raise ConfigError(f"--log-config: {path!r} is YAML, which needs PyYAML: pip install PyYAML") from None
            with open(path) as f:
                logging.config.dictConfig(yaml.safe_load(f))
        else:
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"--log-config: cannot read {path!r}: {exc.strerror or exc}") from None
    except Exception as exc:  # json/yaml/configparser/dictConfig errors: the message says what
        raise ConfigError(f"--log-config: {path!r} is not a valid logging configuration: {exc}") from None


def reopen_files() -> None:
    """Reopen the log file (after logrotate moved it). Called outside signal context."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


class AccessFormatter:
    """Render gunicorn-style access-log atoms.

    Atoms: ``h`` client, ``r`` request line, ``m`` method, ``U`` path, ``q`` query,
    ``H`` protocol, ``s`` status, ``b`` body bytes, ``B`` same, ``M`` duration in ms,
    ``D`` in microseconds, ``L`` in seconds, ``a`` user agent, ``f`` referer,
    ``t`` time, ``p`` pid, ``{name}i`` request header.
    """

    def __init__(self, fmt: str | None, json_mode: bool) -> None:
        self.fmt = fmt or DEFAULT_ACCESS_FORMAT
        self.json_mode = json_mode

    def atoms(
        self,
        *,
        client: tuple[str, int] | None,
        method: str,
        raw_path: bytes,
        query: bytes,
        http_version: str,
        status: int,
        length: int,
        duration: float,
        headers: list[tuple[bytes, bytes]],
    ) -> dict[str, Any]:
        path = escape(raw_path.decode("latin-1"))
        qs = escape(query.decode("latin-1"))
        target = path + ("?" + qs if qs else "")
        atoms: dict[str, Any] = {
            "h": f"{client[0]}:{client[1]}" if client else "-",
            "m": method,
            "U": path,
            "q": qs,
            "H": f"HTTP/{http_version}",
            "r": f"{method} {target} HTTP/{http_version}",
            "s": status,
            "b": length,
            "B": length,
            "M": round(duration * 1000, 2),
            "D": int(duration * 1_000_000),
            "L": f"{duration:.6f}",
            "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            "p": f"<{os.getpid()}>",
        }
        if "(a)" in self.fmt or "(f)" in self.fmt or "}i)" in self.fmt:
            for name, value in headers:
                text = escape(value.decode("latin-1"))
                atoms["{" + name.decode("latin-1") + "}i"] = text
                if name == b"user-agent":
                    atoms["a"] = text
                elif name == b"referer":
                    atoms["f"] = text
            atoms.setdefault("a", "-")
            atoms.setdefault("f", "-")
        return atoms

    def line(self, atoms: dict[str, Any]) -> str:
        return self.fmt % _Atoms(atoms)

    def fields(
        self,
        *,
        client: tuple[str, int] | None,
        method: str,
        raw_path: bytes,
        query: bytes,
        http_version: str,
        status: int,
        length: int,
        duration: float,
        headers: list[tuple[bytes, bytes]],
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """The named fields of a JSON access record (``--log-format json``)."""
        user_agent = referer = None
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"referer":
                referer = value.decode("latin-1")
        return {
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": method,
            # As sent (percent-encoded); bytes that are not UTF-8 become \xNN escapes.
            "path": raw_path.decode("utf-8", "backslashreplace"),
            "query": query.decode("utf-8", "backslashreplace"),
            "http_version": http_version,
            "status": status,
            "bytes_sent": length,
            "duration_ms": round(duration * 1000, 3),
            "user_agent": user_agent,
            "referer": referer,
            "request_id": request_id,
        }

    def log(
        self,
        *,
        client: tuple[str, int] | None,
        method: str,
        raw_path: bytes,
        query: bytes,
        http_version: str,
        status: int,
        length: int,
        duration: float,
        headers: list[tuple[bytes, bytes]],
        request_id: str | None = None,
    ) -> None:
        """Write one access record: a text line in ``--access-log-format``, or named JSON fields."""
        if self.json_mode:
            fields = self.fields(client=client, method=method, raw_path=raw_path, query=query,
                                 http_version=http_version, status=status, length=length, duration=duration,
                                 headers=headers, request_id=request_id)
            access_logger.info("%s %s %s", method, fields["path"], status, extra={"access": fields})
        else:
            atoms = self.atoms(client=client, method=method, raw_path=raw_path, query=query,
                               http_version=http_version, status=status, length=length, duration=duration,
                               headers=headers)
            access_logger.info("%s", self.line(atoms))


class _Atoms(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "-"


class RateLimitedLog:
    """Log at most ``burst`` messages per second; count what was dropped."""

    def __init__(self, logger: logging.Logger, burst: int = 10) -> None:
        self.logger = logger
        self.burst = burst
        self._window = 0
        self._count = 0
        self._dropped = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = int(time.monotonic())
        if now != self._window:
            if self._dropped:
                self.logger.warning("(%d similar messages suppressed)", self._dropped)
            self._window, self._count, self._dropped = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(msg, *args)
        else:
            self._dropped += 1
