"""deploy/systemd/: the unit files parse (systemd-analyze verify) and say what they must."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, NGINX_DIR, fastgate_config, render

SYSTEMD_DIR = DEPLOY / "systemd"
SHIPPED_BINARY = "/srv/myapp/.venv/bin/fastgate"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``; keys may repeat (ListenStream=, Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = parse_unit((SYSTEMD_DIR / "fastgate.service").read_text())
SOCKET = parse_unit((SYSTEMD_DIR / "fastgate.socket").read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set exactly once, found {values}"
    return values[0]


def exec_start_args() -> list[str]:
    argv = shlex.split(one(SERVICE, "Service", "ExecStart"))
    assert argv[0] == SHIPPED_BINARY
    return argv[1:]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_service_is_notify_reloads_with_sighup_and_kills_the_master_first() -> None:
    assert one(SERVICE, "Service", "Type") == "notify"
    assert one(SERVICE, "Service", "NotifyAccess") == "main"
    reload = shlex.split(one(SERVICE, "Service", "ExecReload"))
    assert Path(reload[0]).name == "kill" and reload[1:] == ["-HUP", "$MAINPID"]
    assert one(SERVICE, "Service", "KillMode") == "mixed"
    assert one(SERVICE, "Service", "KillSignal") == "SIGTERM"


def test_stop_and_start_timeouts_cover_fastgates_own() -> None:
    config = fastgate_config(exec_start_args())
    stop = seconds(one(SERVICE, "Service", "TimeoutStopSec"))
    assert stop > config.process.timeout_graceful_shutdown + config.process.shutdown_delay
    assert seconds(one(SERVICE, "Service", "TimeoutStartSec")) > config.process.timeout_worker_boot


def test_exec_start_is_a_valid_fastgate_command_line_that_takes_the_socket_from_systemd() -> None:
    args = exec_start_args()
    config = fastgate_config(args)
    assert config.app.app
    assert config.process.workers >= 1, "Type=notify needs the master (READY=1 comes from it)"
    # The socket comes from fastgate.socket: binding one itself would fight over it.
    assert not any(a.startswith(("--bind", "--uds", "--port", "--host", "--fd")) for a in args)
    assert config.http.health_path and config.http.ready_path


def test_no_restart_loop_on_configuration_or_app_errors() -> None:
    assert one(SERVICE, "Service", "Restart") == "on-failure"
    codes = set(one(SERVICE, "Service", "RestartPreventExitStatus").split())
    assert {"2", "3", "4"} <= codes  # EXIT_USAGE, EXIT_BOOT_FAILED, EXIT_APP_LOAD_FAILED


def test_service_is_hardened() -> None:
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "", "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert one(SERVICE, "Service", key) == value, key
    assert one(SERVICE, "Service", "User") not in ("", "root")
    # The master needs AF_UNIX (socketpair, NOTIFY_SOCKET, the UNIX listener).
    assert "AF_UNIX" in one(SERVICE, "Service", "RestrictAddressFamilies").split()


def test_socket_unit_matches_the_service_and_nginx() -> None:
    assert one(SERVICE, "Unit", "Requires") == "fastgate.socket"
    assert one(SOCKET, "Socket", "Accept") == "no"
    listen = one(SOCKET, "Socket", "ListenStream")
    # nginx's upstream points at the very socket systemd creates.
    assert f"server unix:{listen};" in (NGINX_DIR / "fastgate.conf").read_text()
    assert one(SOCKET, "Socket", "SocketMode") == "0660"
    assert one(SOCKET, "Socket", "SocketGroup") == "www-data"
    config = fastgate_config(exec_start_args())
    assert int(one(SOCKET, "Socket", "Backlog")) == config.bind.backlog


@pytest.mark.timeout(60)
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "Debian's systemd package is required (installed by .ci/run)"
    # verify checks that ExecStart's binary exists: point it at this interpreter.
    service = render((SYSTEMD_DIR / "fastgate.service").read_text(),
                     {f"ExecStart={SHIPPED_BINARY} ": f"ExecStart={sys.executable} "})
    (tmp_path / "fastgate.service").write_text(service)
    shutil.copy(SYSTEMD_DIR / "fastgate.socket", tmp_path / "fastgate.socket")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "fastgate.socket", "fastgate.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=50,
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "fastgate." in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # The check above is not vacuous: systemd-analyze names an unknown key.
    (tmp_path / "fastgate.service").write_text("[Service]\nType=notify\nExecStart=/bin/true\nKilMode=mixed\n")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "fastgate.service"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=50)
    assert "KilMode" in result.stdout + result.stderr
