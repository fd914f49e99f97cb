"""The command line: flags generated from config, precedence, --print-config / --check-config, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastgate import cli
from fastgate.config import OPTIONS
from tests.server import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FASTGATE_") or name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
            monkeypatch.delenv(name)


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert cli.main(["--print-config", *argv]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_every_option_has_a_flag() -> None:
    parser = cli.build_parser()
    known = {a for action in parser._actions for a in action.option_strings}
    for spec in OPTIONS.values():
        if spec.name != "app":
            assert spec.flag in known
    assert "--no-access-log" in known and "--no-server-header" in known and "--no-date-header" in known


def test_print_config_shows_the_merge(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[tool.fastgate]\nport = 1\nhost = "0.0.0.0"\nbacklog = 10\n')
    monkeypatch.setenv("FASTGATE_PORT", "2")
    monkeypatch.setenv("FASTGATE_BACKLOG", "20")
    out = printed(capsys, "main:app", "--config", str(toml), "--port", "3", "--no-access-log",
                  "--header", "X-A: 1, 2", "--header", "X-B: 3", "--bind", "127.0.0.1:0", "--bind", "unix:/tmp/s",
                  "--limit-concurrency", "10", "--fd", "none", "--workers", "0")
    assert out["app"] == "main:app"
    assert (out["port"], out["backlog"], out["host"]) == (3, 20, "0.0.0.0")
    assert out["access_log"] is False
    assert out["headers"] == ["X-A: 1, 2", "X-B: 3"]
    assert out["bind"] == ["127.0.0.1:0", "unix:/tmp/s"]
    assert out["limit_concurrency"] == 10 and out["fd"] is None and out["workers"] == 0


def test_print_config_shows_tls_options_but_not_the_key_password(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTGATE_SSL_KEYFILE_PASSWORD", "s3cret")
    out = printed(capsys, "main:app", "--ssl-certfile", "/c.pem", "--ssl-keyfile", "/k.pem", "--ssl-cert-reqs", "2",
                  "--ssl-ca-certs", "/ca.pem", "--bind", "tls:0.0.0.0:8443", "--bind", "0.0.0.0:8080")
    assert (out["ssl_certfile"], out["ssl_keyfile"], out["ssl_cert_reqs"]) == ("/c.pem", "/k.pem", 2)
    assert out["bind"] == ["tls:0.0.0.0:8443", "0.0.0.0:8080"]
    assert out["ssl_keyfile_password"] == "********"
    monkeypatch.delenv("FASTGATE_SSL_KEYFILE_PASSWORD")
    assert printed(capsys, "main:app")["ssl_keyfile_password"] is None


def test_flag_given_as_default_still_beats_env(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTGATE_ACCESS_LOG", "false")
    monkeypatch.setenv("FASTGATE_PORT", "9")
    out = printed(capsys, "--access-log", "--port", "8000")
    assert out["access_log"] is True and out["port"] == 8000


def test_web_concurrency(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert printed(capsys)["workers"] == 4


def test_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["main:app", "--check-config"]) == 0
    assert capsys.readouterr().out.strip() == "fastgate: configuration OK"
    assert cli.main(["--check-config"]) == 2
    assert "no application given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x:y", "--port", "abc"],
         "fastgate: error: --port: expected an integer, got 'abc' (from command line --port)"),
        (["x:y", "--lifespan", "maybe"], "fastgate: error: --lifespan: expected one of auto, on, off"),
        (["x:y", "--timeout-keep-alive", "-3"], "fastgate: error: --timeout-keep-alive: must be >= 0"),
        (["x:y", "--header", "broken"], "fastgate: error: --header: expected NAME:VALUE"),
        (["x:y", "--forwarded-allow-ips", "nope"], "fastgate: error: --forwarded-allow-ips: 'nope' is not an IP"),
        (["x:y", "--no-such-flag"], "fastgate: error: unknown option --no-such-flag (see 'fastgate --help')"),
        (["x:y", "--port"], "fastgate: error: argument --port: expected one argument"),
        (["x:y", "--config", "/nonexistent/fastgate.toml"], "fastgate: error: --config: cannot read"),
        ([], "fastgate: error: no application given"),
    ],
)
def test_errors_are_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(message), lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_env_error_names_flag_and_variable(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTGATE_WORKERS", "many")
    assert cli.main(["x:y"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastgate: error: --workers: expected an integer, got 'many' (from environment variable FASTGATE_WORKERS)"
    )


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as info:
            cli.main([flag])
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--timeout-request-header" in out and "[default: 10.0]" in out and "fastgate 0." in out


def test_python_dash_m_runs_the_cli() -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "fastgate", "x:y", "--port", "nope"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fastgate: error: --port: expected an integer, got 'nope' (from command line --port)"


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGATE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastgate", *argv], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env=full_env)


@pytest.mark.parametrize(
    ("argv", "env", "expect"),
    [
        # argparse would take each of these as a prefix of a longer flag and set that one.
        (["--timeout-request-head", "1"], {}, "unknown option --timeout-request-head; did you mean "
                                              "--timeout-request-header?"),
        (["--timeout-request-head=1"], {}, "unknown option --timeout-request-head; did you mean "
                                           "--timeout-request-header?"),
        (["--timeout-keep", "1"], {}, "unknown option --timeout-keep; did you mean --timeout-keep-alive?"),
        (["--wor", "2"], {}, "unknown option --wor; did you mean --workers?"),
        (["--no-access"], {}, "unknown option --no-access; did you mean --no-access-log?"),
        (["--workrs", "2"], {}, "unknown option --workrs; did you mean --workers?"),
        (["--zzzzzz"], {}, "unknown option --zzzzzz"),
        ([], {"FASTGATE_WORKRS": "2"}, "environment variable FASTGATE_WORKRS: no such option; did you mean "
                                       "FASTGATE_WORKERS?"),
        ([], {"FASTGATE_TIMEOUT_REQUEST_HEAD": "1"}, "did you mean FASTGATE_TIMEOUT_REQUEST_HEADER?"),
        (["--header", "X-A: 1\x01"], {}, "--header: expected NAME:VALUE"),
        (["--header", "X A: 1"], {}, "--header: expected NAME:VALUE"),
    ],
)
def test_options_must_match_exactly(argv: list[str], env: dict[str, str], expect: str) -> None:
    result = run_cli("tests.apps:app", "--check-config", *argv, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_keys_must_match_exactly(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("timeout-request-head = 1\n")
    result = run_cli("tests.apps:app", "--check-config", "--config", str(toml))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fastgate: error: --config: unknown option 'timeout-request-head' in "
                                     f"{str(toml)!r}; did you mean 'timeout-request-header'?")


def test_the_full_flag_still_works() -> None:
    result = run_cli("tests.apps:app", "--print-config", "--timeout-request-header", "3", "--workers", "2")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["timeout_request_header"] == 3.0 and out["workers"] == 2


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["tests.apps:app", "--workers", "many"], ": --workers: expected an integer"),
        (["tests.apps:app", "--no-such-flag"], ""),  # argparse's own exit
        (["tests.apps:app", "--log-config", "/nonexistent/logging.json"], ": --log-config"),
    ],
)
def test_a_master_re_executed_in_place_keeps_its_running_config_when_the_new_one_is_invalid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], detail: str
) -> None:
    from fastgate import config, handover, runner

    running = config.build({"app": "tests.apps:app", "workers": 3})
    monkeypatch.setenv(handover.ENV, handover.encode({"config": running.flat()}))
    ran: list[config.Config] = []
    monkeypatch.setattr(runner, "run", lambda c, reread=None: ran.append(c) or 0)
    assert cli.main(argv) == 0
    assert ran == [running]
    assert f"fastgate: error: Reload: invalid configuration ignored, keeping the current one{detail}" in (
        capsys.readouterr().err)


def test_without_a_handover_an_invalid_config_still_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tests.apps:app", "--workers", "many"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["tests.apps:app", "--no-such-flag"])
    assert info.value.code == 2
