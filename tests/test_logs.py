"""Logging: escaping, access-log atoms, JSON lines, rate limiting, configure/reopen."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgate import logs
from fastgate.config import LogSettings


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("fastgate")
    saved = (root.level, list(root.handlers), root.propagate, logs.access_logger.disabled, logs._handler)
    yield
    if logs._handler is not None and logs._handler not in saved[1]:
        root.removeHandler(logs._handler)
        logs._handler.close()
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    root.propagate = saved[2]
    logs.access_logger.disabled = saved[3]
    logs._handler = saved[4]


def test_escape() -> None:
    assert logs.escape("plain /path?x=1") == "plain /path?x=1"
    assert logs.escape('a"b\\c') == 'a\\"b\\\\c'
    assert logs.escape("line\r\nforged 200") == "line\\x0d\\x0aforged 200"
    assert logs.escape("\x00\x1b[31m\x7f") == "\\x00\\x1b[31m\\x7f"
    assert logs.escape("caf\xe9 \u2028") == "caf\\xe9 \\u2028"


def atoms(fmt: str | None = None, json_mode: bool = False, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "client": ("10.0.0.1", 5555), "method": "GET", "raw_path": b"/a\xffb", "query": b"q=\x01",
        "http_version": "1.1", "status": 201, "length": 42, "duration": 0.0123456,
        "headers": [(b"user-agent", b"curl\r\n"), (b"referer", b"http://r/"), (b"x-id", b"7")],
    }
    args.update(kw)
    return logs.AccessFormatter(fmt, json_mode).atoms(**args)


def test_access_atoms() -> None:
    a = atoms("%(a)s")
    assert a["h"] == "10.0.0.1:5555" and a["m"] == "GET" and a["U"] == "/a\\xffb" and a["q"] == "q=\\x01"
    assert a["r"] == "GET /a\\xffb?q=\\x01 HTTP/1.1" and a["H"] == "HTTP/1.1"
    assert (a["s"], a["b"], a["B"], a["M"], a["D"], a["L"]) == (201, 42, 42, 12.35, 12345, "0.012346")
    assert a["a"] == "curl\\x0d\\x0a" and a["f"] == "http://r/" and a["{x-id}i"] == "7"
    assert a["p"] == f"<{os.getpid()}>"
    assert atoms(client=None)["h"] == "-"
    # Header atoms are only computed when the format (or JSON) uses them: hot path.
    assert "a" not in atoms() and "a" in atoms("%({x-id}i)s")
    assert atoms("%(f)s", headers=[])["f"] == "-"


def test_access_line_default_and_missing_atoms() -> None:
    fmt = logs.AccessFormatter(None, False)
    line = fmt.line(atoms())
    assert line == '10.0.0.1:5555 "GET /a\\xffb?q=\\x01 HTTP/1.1" 201 42 12.35ms'
    assert logs.AccessFormatter("%(nope)s %(s)s", False).line(atoms()) == "- 201"


def test_json_formatter() -> None:
    record = logging.LogRecord("fastgate.access", logging.INFO, __file__, 1, "%s %s", ("GET", "/"), None)
    record.access = {"s": 200, "U": "/"}
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["message"] == "GET /" and out["s"] == 200 and out["level"] == "info"
    assert out["logger"] == "fastgate.access" and out["time"].endswith("Z")
    try:
        raise ValueError("x")
    except ValueError:
        import sys

        err = logging.LogRecord("fastgate.error", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert "ValueError: x" in json.loads(logs.JsonFormatter().format(err))["exc_info"]


def test_rate_limited_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    log = logs.RateLimitedLog(logging.getLogger("fastgate.test"), burst=3)
    with caplog.at_level(logging.WARNING, "fastgate.test"):
        for i in range(10):
            log.warning("rejected %d", i)
        assert [r.getMessage() for r in caplog.records] == ["rejected 0", "rejected 1", "rejected 2"]
        now[0] = 101.5
        log.warning("later")
    assert [r.getMessage() for r in caplog.records][3:] == ["(7 similar messages suppressed)", "later"]


def test_configure_file_json_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "fastgate.log"
    logs.configure(LogSettings(log_file=str(path), log_format="json", log_level="debug", access_log=False))
    assert logs.access_logger.disabled
    logs.error_logger.debug("first")
    rotated = tmp_path / "fastgate.log.1"
    path.rename(rotated)
    logs.reopen_files()
    logs.error_logger.warning("second")
    assert json.loads(rotated.read_text())["message"] == "first"
    assert json.loads(path.read_text())["message"] == "second"
    logs.configure(LogSettings(log_level="trace"))  # replaces the handler: idempotent
    assert logging.getLogger("fastgate").level == logs.TRACE
    assert sum(isinstance(h, logging.FileHandler) for h in logging.getLogger("fastgate").handlers) == 0
    logs.reopen_files()  # not a file: nothing to do


def access_fields(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "client": ("10.0.0.1", 5555), "method": "GET", "raw_path": b"/a%20b\xff\"\n", "query": b"q=\x01&r=\xe9",
        "http_version": "1.1", "status": 201, "length": 42, "duration": 0.0123456,
        "headers": [(b"user-agent", b"curl\r\n\x00"), (b"referer", b"http://r/\xff"), (b"x-id", b"7")],
    }
    args.update(kw)
    return logs.AccessFormatter(None, True).fields(**args)


def test_json_access_fields_are_named() -> None:
    fields = access_fields()
    assert fields == {
        "client": "10.0.0.1:5555", "method": "GET", "path": '/a%20b\\xff"\n', "query": "q=\x01&r=\\xe9",
        "http_version": "1.1", "status": 201, "bytes_sent": 42, "duration_ms": 12.346,
        "user_agent": "curl\r\n\x00", "referer": "http://r/\xff", "request_id": None,
    }
    assert access_fields(client=None, headers=[])["client"] is None


def test_json_access_record_is_one_valid_ascii_line(caplog: pytest.LogCaptureFixture) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logs.JsonFormatter())
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logs.access_logger.addHandler(handler)
    try:
        logs.access_logger.disabled = False
        logs.access_logger.setLevel(logging.INFO)
        logs.AccessFormatter(None, True).log(
            client=("::1", 1), method="POST", raw_path=b"/\xff\xfe\r\n{\"a\":1}", query=b"", http_version="1.0",
            status=500, length=0, duration=1.0, headers=[(b"user-agent", "é".encode())],
        )
    finally:
        logs.access_logger.removeHandler(handler)
    assert len(records) == 1 and "\n" not in records[0] and records[0].isascii()
    out = json.loads(records[0])
    assert out["logger"] == "fastgate.access" and out["status"] == 500 and out["method"] == "POST"
    assert out["path"] == '/\\xff\\xfe\r\n{"a":1}' and out["user_agent"] == "Ã©" and out["message"].startswith("POST /")
    assert set(out) >= {"time", "level", "logger", "message", "pid", "client", "method", "path", "query",
                        "http_version", "status", "bytes_sent", "duration_ms", "user_agent", "referer", "request_id"}


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_file(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out.log"
    if kind == "json":
        path = tmp_path / "log.json"
        path.write_text(json.dumps({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"f": {"format": "CUSTOM %(name)s %(message)s"}},
            "handlers": {"h": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}},
            "loggers": {"fastgate": {"handlers": ["h"], "level": "INFO", "propagate": False}},
        }))
    elif kind == "yaml":
        path = tmp_path / "log.yaml"
        path.write_text(f"""
version: 1
disable_existing_loggers: false
formatters: {{f: {{format: "CUSTOM %(name)s %(message)s"}}}}
handlers: {{h: {{class: logging.FileHandler, filename: "{out}", formatter: f}}}}
loggers: {{fastgate: {{handlers: [h], level: INFO, propagate: false}}}}
""")
    else:
        path = tmp_path / "log.ini"
        path.write_text(f"""[loggers]
keys=root,fastgate
[handlers]
keys=h
[formatters]
keys=f
[logger_root]
handlers=
[logger_fastgate]
handlers=h
level=INFO
qualname=fastgate
propagate=0
[handler_h]
class=FileHandler
args=({str(out)!r},)
formatter=f
[formatter_f]
format=CUSTOM %(name)s %(message)s
""")
    logs.configure(LogSettings(log_config=str(path)))
    logs.error_logger.info("hello")
    for handler in logging.getLogger("fastgate").handlers:
        handler.flush()
    assert "CUSTOM fastgate.error hello" in out.read_text()
    for handler in list(logging.getLogger("fastgate").handlers):
        logging.getLogger("fastgate").removeHandler(handler)
        handler.close()


@pytest.mark.parametrize(("name", "content", "expect"), [
    ("missing.json", None, "cannot read"),
    ("bad.json", "{", "not a valid logging configuration"),
    ("bad.yaml", "version: 2", "not a valid logging configuration"),
    ("bad.ini", "[nothing]", "not a valid logging configuration"),
])
def test_log_config_errors_are_one_line(tmp_path: Path, name: str, content: str | None, expect: str) -> None:
    import subprocess
    import sys

    from tests.server import ROOT

    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "fastgate", "tests.apps:app", "--check-config", "--log-config",
                             str(path)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgate: error: --log-config: ") and expect in lines[0], lines
