"""End to end: --preload, and the master re-executing itself in place (SIGHUP / --reload with
--preload, SIGUSR2 to upgrade fastgate) under load: same pid, same sockets, no failed request."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from tests.server import LISTEN_RE, ROOT, wait_for
from tests.supervisor.util import LoadClient, alive, children, get, listening_inodes, socket_inodes
from tests.test_e2e_reload import WATCHING, app_source, parse, start_reload, wait_served, write
from tests.test_e2e_reload import get as get_text
from tests.test_e2e_supervisor_reload import generation_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# The tests rewrite an app file within the same second and size: a .pyc would look fresh.
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}

APP = """
    import os
    {top}
    IMPORT_PID = os.getpid()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    scope["state"]["lifespan_pid"] = os.getpid()
                    await send({{"type": "lifespan.startup.complete"}})
                else:
                    await send({{"type": "lifespan.shutdown.complete"}})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/pid":
            body = str(os.getpid())
        else:
            body = "{version} imported=%d lifespan=%d pid=%d" % (
                IMPORT_PID, scope["state"]["lifespan_pid"], os.getpid())
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": body.encode()}})
"""


def write_app(path: Path, version: str, top: str = "") -> None:
    path.write_text(textwrap.dedent(APP).format(version=version, top=top))


def served(server, path: str = "/") -> tuple[str, int, int, int]:
    """(version, pid that imported the app, pid that ran the lifespan, pid that answered)."""
    status, body = get(server, path)
    assert status == 200, body
    version, imported, lifespan, pid = body.decode().split()
    return version, int(imported.split("=")[1]), int(lifespan.split("=")[1]), int(pid.split("=")[1])


def test_preload_imports_once_in_the_master_and_each_worker_runs_the_lifespan(serve, tmp_path):
    write_app(tmp_path / "myapp.py", "v1")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2", "--preload")
    workers = generation_ready(server, 1, 2)
    seen = set()
    for _ in range(40):
        version, imported, lifespan, pid = served(server)
        assert (version, imported) == ("v1", server.pid)  # imported before the fork, by the master
        assert lifespan == pid  # the lifespan ran in the worker, after the fork
        seen.add(pid)
    assert seen == workers
    # Without --preload each worker imports the app itself.
    plain = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "1")
    (worker,) = generation_ready(plain, 1, 1)
    assert served(plain)[1:] == (worker, worker, worker)


@pytest.mark.parametrize(
    ("target", "line", "code"),
    [
        ("tests.broken_app:app", "fastgate: error: error while importing 'tests.broken_app': RuntimeError: "
                                 "this module is broken on purpose", 4),
        ("no_such_module:app", "fastgate: error: could not import module 'no_such_module': not found", 4),
        ("tests.apps:not_callable", "fastgate: error: 'tests.apps:not_callable' is not callable (got int)", 4),
    ],
)
def test_preload_of_a_broken_app_fails_the_master_like_a_worker(serve, target, line, code):
    server = serve(target, "--workers", "3", "--preload", wait_listening=False)
    assert server.wait(30) == code
    (error,) = [x for x in server.output.splitlines() if x.startswith("fastgate: error:")]
    assert error.startswith(line)
    assert "Starting" not in server.output  # nothing was forked
    # The same line as a worker prints without --preload.
    plain = serve(target, "--workers", "1", wait_listening=False)
    assert plain.wait(30) == code
    assert error in plain.output.splitlines()


def test_preload_with_a_failing_lifespan_exits_3(serve):
    server = serve("tests.apps:failing_startup", "--workers", "2", "--preload", wait_listening=False)
    assert server.wait(30) == 3
    assert "database unreachable" in server.output


def test_preload_warns_about_threads_started_at_import(serve, tmp_path):
    write_app(tmp_path / "threaded.py", "v1", top="import threading, time\nthreading.Thread(target=time.sleep, "
                                                   "args=(300,), daemon=True).start()")
    server = serve("threaded:app", "--app-dir", str(tmp_path), "--preload")
    server.wait_line(r"--preload: importing the app started 1 thread\(s\) in the master", 10)
    assert served(server)[0] == "v1"


def test_preload_needs_the_master(serve):
    server = serve("tests.apps:app", "--workers", "0", "--preload", wait_listening=False)
    assert server.wait(15) == 2
    assert "fastgate: error: --preload: imports the app in the master" in server.output


def test_sighups_with_preload_re_execute_in_place_under_load_with_no_failed_request(serve, tmp_path):
    write_app(tmp_path / "myapp.py", "v1")
    pid_file = tmp_path / "fastgate.pid"
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2", "--preload", "--pid", str(pid_file),
                   env=NO_PYC)
    first = generation_ready(server, 1, 2)
    inodes = listening_inodes(server.port)
    assert inodes and inodes <= socket_inodes(server.pid)
    with LoadClient(server, threads=4) as load:
        load.wait_requests(100)
        for generation, version in ((2, "v2"), (3, "v3"), (4, "v4")):
            write_app(tmp_path / "myapp.py", version)
            mark = len(server.lines)
            server.signal(signal.SIGHUP)
            server.wait_line(rf"re-executed in place \(pid {server.pid}, reload with --preload", 30, start=mark)
            server.wait_line(f"Reload complete: generation {generation} serving", 30, start=mark)
            # New code, imported by the same pid (an old worker may take a connection or two
            # until its SIGTERM is handled).
            wait_for(lambda v=version: served(server)[:2] == (v, server.pid), 10, what=f"{version} served")
            load.wait_requests(100)
        last = generation_ready(server, 4, 2)
        wait_for(lambda: children(server.pid) == last, 30, what="the old generations gone")
        load.wait_requests(100)
    print(f"SIGHUP x3 with --preload under load: sent {load.sent}, failed {len(load.failures)}")
    assert load.failures == []
    assert load.sent >= 400
    assert alive(server.pid) and server.proc is not None and server.proc.poll() is None
    assert not first & last
    assert listening_inodes(server.port) == inodes  # the very same sockets, never rebound
    assert pid_file.read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not pid_file.exists()


def test_a_preload_reload_whose_code_does_not_import_rolls_back(serve, tmp_path):
    write_app(tmp_path / "myapp.py", "v1")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2", "--preload", env=NO_PYC)
    old = generation_ready(server, 1, 2)
    with LoadClient(server, threads=3) as load:
        load.wait_requests(50)
        (tmp_path / "myapp.py").write_text("raise ImportError('syntax is fine, import is not')\n")
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_line("Reload aborted: the new code could not be loaded", 30, start=mark)
        load.wait_requests(50)
        assert children(server.pid) == old
        assert served(server)[:2] == ("v1", server.pid)  # the old app, in the old workers
        write_app(tmp_path / "myapp.py", "v2")
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_line("Reload complete: generation 2 serving", 30, start=mark)
        load.wait_requests(50)
    assert load.failures == []
    wait_for(lambda: served(server)[:2] == ("v2", server.pid), 10, what="v2 served")
    wait_for(lambda: not any(alive(p) for p in old), 30, what="the old workers gone")


def test_a_preload_reload_whose_new_workers_fail_the_lifespan_rolls_back(serve, tmp_path):
    write_app(tmp_path / "myapp.py", "v1")
    server = serve("myapp:app", "--app-dir", str(tmp_path), "--workers", "2", "--preload", env=NO_PYC)
    old = generation_ready(server, 1, 2)
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            assert scope["type"] == "lifespan"
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
    """))
    server.signal(signal.SIGHUP)
    server.wait_line("Reload aborted: a new worker exited before it was ready", 30)
    wait_for(lambda: children(server.pid) == old, 30, what="only the old workers")
    assert served(server)[:2] == ("v1", server.pid)


def copy_fastgate(site: Path) -> Path:
    """A private copy of the fastgate package that a test may edit (it is first on the path)."""
    shutil.copytree(ROOT / "fastgate", site / "fastgate", ignore=shutil.ignore_patterns("__pycache__"))
    return site / "fastgate"


def test_sigusr2_upgrades_fastgate_itself_in_place_under_load(serve, tmp_path):
    site = tmp_path / "site"
    package = copy_fastgate(site)
    uds = str(tmp_path / "fg.sock")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", **NO_PYC}
    # cwd=site: ``-m fastgate`` puts the cwd first on sys.path, so the copy is what runs.
    server = serve("tests.supervisor.sup_apps:app", "--workers", "2", "--uds", uds, env=env, cwd=str(site))
    first = generation_ready(server, 1, 2)
    init = package / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+upgraded-from-'))
    with LoadClient(server, threads=4) as load:
        load.wait_requests(100)
        server.signal(signal.SIGUSR2)
        server.wait_line(rf"fastgate 9\.9\.9\+upgraded-from-\S+ re-executed in place \(pid {server.pid}, SIGUSR2", 30)
        server.wait_line("Reload complete: generation 2 serving", 30)
        new = generation_ready(server, 2, 2)
        wait_for(lambda: children(server.pid) == new, 30, what="the old workers gone")
        load.wait_requests(100)
    print(f"SIGUSR2 under load: sent {load.sent}, failed {len(load.failures)}")
    assert load.failures == []
    assert not first & new
    assert os.path.exists(uds)  # the UNIX socket was handed over, never removed
    assert get(server, "/env?name=FASTGATE_HANDOVER") == (200, b"-")  # not passed on to the app
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not os.path.exists(uds)


def test_sigusr2_with_a_broken_installed_fastgate_keeps_the_running_master(serve, tmp_path):
    site = tmp_path / "site"
    package = copy_fastgate(site)
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", **NO_PYC}
    server = serve("tests.apps:app", "--workers", "2", env=env, cwd=str(site))
    old = generation_ready(server, 1, 2)
    master_py = package / "supervisor" / "master.py"
    good = master_py.read_text()
    master_py.write_text(good + "\ndef broken(:\n")
    with LoadClient(server, threads=3) as load:
        load.wait_requests(50)
        server.signal(signal.SIGUSR2)
        server.wait_line("SyntaxError", 30)  # the check's own traceback explains why
        server.wait_line("Upgrade aborted: the new code does not start: the check process exited with code 1", 30)
        load.wait_requests(50)
        assert children(server.pid) == old
        master_py.write_text(good)
        mark = len(server.lines)
        server.signal(signal.SIGUSR2)
        server.wait_line("Reload complete: generation 2 serving", 30, start=mark)
        load.wait_requests(50)
    assert load.failures == []
    assert "re-executed in place" in server.output


def test_a_config_made_invalid_meanwhile_keeps_the_running_one_across_exec(serve, tmp_path):
    conf = tmp_path / "fastgate.toml"
    conf.write_text("workers = 2\n")
    server = serve("tests.apps:app", "--config", str(conf), "--preload")
    generation_ready(server, 1, 2)
    conf.write_text("workers = 'many'\n")
    server.signal(signal.SIGHUP)
    server.wait_line("invalid configuration ignored, keeping the current one", 30)  # the old image's re-read
    # ... and the new image's own parse, which falls back to the configuration handed over.
    server.wait_line("^fastgate: error: Reload: invalid configuration ignored, keeping the current one: "
                     "--workers: expected an integer", 30)
    server.wait_line("Reload complete: generation 2 serving", 30)
    assert len(generation_ready(server, 2, 2)) == 2
    conf.write_text("workers = 3\n")
    server.signal(signal.SIGHUP)
    new = generation_ready(server, 3, 3)
    wait_for(lambda: children(server.pid) == new, 30, what="3 workers of generation 3")


def test_reload_with_preload_re_executes_the_master_on_each_save_under_load(serve, tmp_path):
    app_dir = tmp_path / "proj"
    app_dir.mkdir()
    write(app_dir / "app.py", app_source("version 0"))
    server = start_reload(serve, app_dir, "--preload", "--workers", "2")
    watcher = children(server.pid) - generation_ready(server, 1, 2)
    with LoadClient(server, threads=3, path="/") as load:
        load.wait_requests(50)
        for message in ("one", "two"):
            write(app_dir / "app.py", app_source(message))
            wait_served(server, message)
            load.wait_requests(50)
        mark = len(server.lines)
        write(app_dir / "app.py", app_source("never", top="raise RuntimeError('broken on purpose')"))
        server.wait_line("Reload aborted: the new code could not be loaded", 30, start=mark)
        assert parse(get_text(server))[0] == "two"
        write(app_dir / "app.py", app_source("three"))
        wait_served(server, "three")
        load.wait_requests(50)
    print(f"--reload --preload, 4 saves under load: sent {load.sent}, failed {len(load.failures)}")
    assert load.failures == []
    assert server.output.count(f"re-executed in place (pid {server.pid}") == 4
    assert watcher <= children(server.pid)  # the same watcher process, adopted by each image
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    wait_for(lambda: not any(alive(p) for p in watcher), 15, what="the watcher gone")


def test_reload_with_preload_and_an_app_broken_at_startup_waits_on_the_same_socket(serve, tmp_path):
    app_dir = tmp_path / "proj"
    app_dir.mkdir()
    write(app_dir / "app.py", app_source("never", top="raise RuntimeError('broken at startup')"))
    server = serve("app:app", "--app-dir", str(app_dir), "--reload", "--preload", cwd=str(app_dir))
    server.wait_line(r"^fastgate: error: error while importing 'app': RuntimeError: broken at startup", 30)
    server.wait_line("waiting for a change", 30)
    server.wait_line(WATCHING, 30)
    write(app_dir / "app.py", app_source("fixed"))
    wait_served(server, "fixed")  # on the port of the first "Listening" line: never closed
    assert sum(1 for x in server.lines if LISTEN_RE.search(x)) == 1
