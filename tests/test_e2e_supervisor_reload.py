"""SIGHUP: readiness-gated rolling reload under load, rollback, config re-read, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from tests.server import wait_for
from tests.supervisor.util import READY_RE, LoadClient, alive, children, get, serving_pids

pytestmark = pytest.mark.e2e


def generation_ready(server, generation: int, count: int, timeout: float = 30.0) -> set[int]:
    """Wait until ``count`` workers of ``generation`` reported READY; their pids."""

    def ready() -> set[int] | None:
        pids = {int(m.group(1)) for line in server.output.splitlines()
                if (m := READY_RE.search(line)) and int(m.group(3)) == generation}
        return pids if len(pids) >= count else None

    return wait_for(ready, timeout, what=f"generation {generation} ready")  # type: ignore[return-value]


def test_five_sighups_under_load_fail_no_request_and_replace_every_worker(serve):
    server = serve("tests.apps:app", "--workers", "2")
    first = generation_ready(server, 1, 2)
    with LoadClient(server, threads=4) as load:
        load.wait_requests(100)
        for generation in range(2, 7):
            mark = len(server.lines)
            server.signal(signal.SIGHUP)
            server.wait_line(f"Reload complete: generation {generation} serving", 30, start=mark)
            load.wait_requests(100)
        last = generation_ready(server, 6, 2)
        wait_for(lambda: children(server.pid) == last, 30, what="old generations gone")
        load.wait_requests(100)
    print(f"reload x5 under load: sent {load.sent}, failed {len(load.failures)}")
    assert load.failures == []
    assert load.sent >= 600
    assert not first & last
    assert {pid for pid, n in load.pids.items()} >= last


def write_app(path: Path, body: str) -> None:
    path.write_text(textwrap.dedent(body))


GOOD_APP = """
    import os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%s " + str(os.getpid()).encode()})
"""


def test_sighup_with_a_broken_app_keeps_the_old_workers_serving(serve, tmp_path):
    write_app(tmp_path / "myapp.py", GOOD_APP % "v1")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2")
    old = generation_ready(server, 1, 2)
    (tmp_path / "myapp.py").write_text("raise ImportError('syntax is fine, import is not')\n")
    server.signal(signal.SIGHUP)
    server.wait_line("Reload aborted", 30)
    for _ in range(20):
        status, body = get(server, "/")
        assert status == 200 and body.startswith(b"v1 ")
    # The failed new workers were killed; once reaped only the old ones are left.
    wait_for(lambda: children(server.pid) == old, 20, what="only the old workers")
    # The app is fixed: the next SIGHUP imports the new code in fresh workers.
    write_app(tmp_path / "myapp.py", GOOD_APP % "v2")
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_line("Reload complete", 30, start=mark)
    wait_for(lambda: get(server, "/")[1].startswith(b"v2 "), 20)
    wait_for(lambda: not any(alive(p) for p in old), 30)


def test_sighup_rereads_the_config_file_and_ignores_an_invalid_one(serve, tmp_path):
    conf = tmp_path / "fastgate.toml"
    conf.write_text("workers = 1\n")
    server = serve("tests.apps:app", "--config", str(conf))
    generation_ready(server, 1, 1)
    conf.write_text("workers = 3\n")
    server.signal(signal.SIGHUP)
    new = generation_ready(server, 2, 3)
    wait_for(lambda: children(server.pid) == new, 30)
    conf.write_text("workers = 'many'\n")
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_line("invalid configuration ignored", 30, start=mark)
    server.wait_line("Reload complete", 30, start=mark)
    assert len(generation_ready(server, 3, 3)) == 3  # still 3: the bad file changed nothing


def test_sighup_keeps_command_line_options(serve, tmp_path):
    conf = tmp_path / "fastgate.toml"
    conf.write_text("workers = 1\n")
    # The command line says 2 and wins over the file, before and after the reload.
    server = serve("tests.apps:app", "--config", str(conf), "--workers", "2")
    generation_ready(server, 1, 2)
    conf.write_text("workers = 3\nhealth_path = '/healthz'\n")
    server.signal(signal.SIGHUP)
    new = generation_ready(server, 2, 2)
    wait_for(lambda: children(server.pid) == new, 30)
    assert get(server, "/healthz") == (200, b"OK\n")  # the file's new option applies


def test_reload_stops_the_old_workers_process_group(serve):
    server = serve("tests.supervisor.sup_apps:app", "--workers", "1")
    generation_ready(server, 1, 1)
    status, body = get(server, "/child")
    child = int(body)
    assert alive(child)
    server.signal(signal.SIGHUP)
    server.wait_line("Reload complete", 30)
    wait_for(lambda: not alive(child), 30, what="the app's child stopped with its worker")


def test_sd_notify_ready_reloading_stopping(serve, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        server = serve("tests.apps:app", "--workers", "2", env={"NOTIFY_SOCKET": path})
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1")
        assert f"MAINPID={server.pid}" in first
        server.wait_line(r"All 2 worker\(s\) ready", 10)  # sent when the workers are ready
        server.signal(signal.SIGHUP)
        reloading = sock.recv(4096).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode().startswith("READY=1")
        server.signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert server.wait(30) == 0
        # Workers never talk to systemd themselves.
        assert "NOTIFY_SOCKET" not in server.output


def test_reload_keeps_a_worker_count_changed_by_sigttin(serve):
    server = serve("tests.apps:app", "--workers", "1")
    generation_ready(server, 1, 1)
    with LoadClient(server, threads=3) as load:
        load.wait_requests(50)
        server.signal(signal.SIGTTIN)
        generation_ready(server, 1, 2)
        server.signal(signal.SIGHUP)
        generation_ready(server, 2, 2)
        server.wait_line("Reload complete", 30)
        load.wait_requests(50)
    assert load.failures == []
    assert len(serving_pids(server, 2)) == 2


def test_sighup_moves_to_new_listen_addresses_and_rolls_them_back_with_a_failed_reload(serve, tmp_path):
    write_app(tmp_path / "myapp.py", GOOD_APP % "v1")
    conf = tmp_path / "fastgate.toml"
    a, b, c = (str(tmp_path / f"{name}.sock") for name in "abc")
    conf.write_text(f"uds = '{a}'\n")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--config", str(conf), "--workers", "2")
    assert server.unix_path == a
    generation_ready(server, 1, 2)
    conf.write_text(f"uds = '{b}'\n")
    server.signal(signal.SIGHUP)
    server.wait_line(f"Listening on unix:{b}", 30)
    server.wait_line("Reload complete", 30)
    server.unix_path = b
    assert get(server, "/")[1].startswith(b"v1 ")
    wait_for(lambda: not os.path.exists(a), 10, what="the old socket closed and removed")
    # New address and a broken app: the reload fails, the new socket goes, b keeps serving.
    conf.write_text(f"uds = '{c}'\n")
    (tmp_path / "myapp.py").write_text("raise ImportError('broken')\n")
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_line("Reload aborted", 30, start=mark)
    wait_for(lambda: not os.path.exists(c), 10, what="the new socket closed")
    assert get(server, "/")[1].startswith(b"v1 ")
