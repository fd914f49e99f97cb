"""--control-socket against a real master: fastgate status (table and JSON) and fastgate ctl
reload (replaced, rolled back with the reason), scale, stop."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server import ROOT, ServerProcess, read_response, wait_for

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
GOOD_APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def fastgate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "fastgate", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def status(path: str) -> dict[str, object]:
    result = fastgate("status", "--json", "--control-socket", path)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


def test_status_reload_scale_stop(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(GOOD_APP))
    path = str(tmp_path / "ctl.sock")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2", "--control-socket", path,
                   "--timeout-worker-healthcheck", "1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    server.wait_line("All 2 worker")
    for _ in range(5):
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
    wait_for(lambda: sum(w["requests"] or 0 for w in status(path)["workers"]) == 5,  # type: ignore[attr-defined]
             what="5 requests in the status")
    reply = status(path)
    workers = reply["workers"]
    assert isinstance(workers, list) and len(workers) == 2
    assert reply["master"] == server.pid and reply["generation"] == 1 and reply["phase"] == "running"
    assert {w["slot"] for w in workers} == {0, 1} and all(w["state"] == "ready" for w in workers)
    assert all(w["rss"] > 1024 * 1024 and w["heartbeat_age"] < 5 and w["uptime"] > 0 for w in workers)
    assert all(w["connections"] == 0 for w in workers)  # the test's connections are closed

    table = fastgate("status", "--control-socket", path)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"master {server.pid}  running  generation 1  workers 2/2")
    assert lines[1].split() == ["PID", "SLOT", "GEN", "STATE", "UPTIME", "REQUESTS", "CONNS", "RSS", "BEAT"]
    assert sorted(int(line.split()[0]) for line in lines[2:]) == sorted(w["pid"] for w in workers)

    result = fastgate("ctl", "reload", "--control-socket", path)
    assert (result.returncode, result.stdout.strip()) == (0, "reload: replaced"), result.stderr
    after = status(path)
    assert after["generation"] == 2
    assert {w["pid"] for w in after["workers"]}.isdisjoint({w["pid"] for w in workers})  # type: ignore[union-attr]

    # A broken app: the reload is rolled back and says why.
    (tmp_path / "myapp.py").write_text("raise ImportError('broken on purpose')\n")
    result = fastgate("ctl", "reload", "--control-socket", path)
    assert result.returncode == 1
    assert result.stderr.startswith("reload: rolled back: a new worker exited before it was ready"), result.stderr
    assert [w["generation"] for w in status(path)["workers"]] == [2, 2]  # type: ignore[index]
    (tmp_path / "myapp.py").write_text(textwrap.dedent(GOOD_APP))

    result = fastgate("ctl", "scale", "3", "--control-socket", path)
    assert (result.returncode, result.stdout.strip()) == (0, "scale: 3 worker(s) ready"), result.stderr
    assert [w["slot"] for w in status(path)["workers"]] == [0, 1, 2]  # type: ignore[index]
    result = fastgate("ctl", "scale", "1", "--control-socket", path)
    assert result.returncode == 0, result.stderr
    assert len(status(path)["workers"]) == 1  # type: ignore[arg-type]
    assert fastgate("ctl", "scale", "0", "--control-socket", path).returncode == 1

    result = fastgate("ctl", "stop", "--control-socket", path)
    assert (result.returncode, result.stdout.strip()) == (0, "stop: stopped"), result.stderr
    assert server.wait(30) == 0
    assert not os.path.exists(path)


def test_ctl_without_a_master_fails_clearly(tmp_path: Path) -> None:
    result = fastgate("status", "--control-socket", str(tmp_path / "none.sock"), timeout=30)
    assert result.returncode == 2 and "none.sock" in result.stderr
    result = fastgate("ctl", "scale", timeout=30)
    assert result.returncode == 2 and "control-socket" in result.stderr
