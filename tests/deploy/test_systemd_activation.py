"""The shipped systemd units, run for real without systemd as PID 1.

``systemd-socket-activate`` (Debian's systemd package) plays ``fastgate.socket``: it
listens on the unit's socket (rendered into a temporary directory), waits for the first
connection, then execs the unit's ``ExecStart`` with ``LISTEN_FDS``/``LISTEN_PID`` set. A
datagram socket bound by the test plays systemd's ``NOTIFY_SOCKET``. ``systemctl reload``
and ``systemctl stop`` are played by the unit's own ``ExecReload`` line and ``KillSignal``
sent to the main pid only (``KillMode=mixed``).

The last test is the whole stack: the shipped nginx config in front of the activated
socket, SIGHUP reloads under load, and no 5xx at nginx.
"""

from __future__ import annotations

import collections
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.helpers import DEPLOY, Load, Nginx, NotifySocket, render, render_site
from tests.deploy.helpers import free_port as _free_port
from tests.server import ROOT, CommandProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SYSTEMD_DIR = DEPLOY / "systemd"
SHIPPED_SOCKET = "/run/fastgate/fastgate.sock"


def _unit_value(unit: str, key: str) -> str:
    values = [line.split("=", 1)[1].strip() for line in (SYSTEMD_DIR / unit).read_text().splitlines()
              if line.startswith(key + "=")]
    assert len(values) == 1, (unit, key, values)
    return values[0]


def exec_start(app: str) -> list[str]:
    """The service's ExecStart, with the test app and this interpreter."""
    argv = shlex.split(render(_unit_value("fastgate.service", "ExecStart"), {"myapp.main:app": app}))
    return [sys.executable, "-m", "fastgate", *argv[1:]]


def exec_reload(mainpid: int) -> list[str]:
    """The service's ExecReload, with $MAINPID expanded as systemd does."""
    return [mainpid_arg if mainpid_arg != "$MAINPID" else str(mainpid)
            for mainpid_arg in shlex.split(_unit_value("fastgate.service", "ExecReload"))]


class Activated:
    def __init__(self, server: CommandProcess, notify: NotifySocket, sock: Path) -> None:
        self.server, self.notify, self.sock = server, notify, sock

    def get(self, path: str) -> httpx.Response:
        """One request on a fresh connection (a fresh connection may reach any worker)."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), timeout=30) as client:
            return client.get("http://fastgate" + path)

    def worker_pids(self, tries: int = 40) -> set[int]:
        # One client without keep-alive: each request still gets a fresh connection, without
        # the TLS context (tens of ms of CPU) a new client builds.
        transport = httpx.HTTPTransport(uds=str(self.sock), limits=httpx.Limits(max_keepalive_connections=0))
        with httpx.Client(transport=transport, timeout=30) as client:
            return {client.get("http://fastgate/pid").json()["pid"] for _ in range(tries)}


@pytest.fixture
def activated(short_tmp: Path) -> Iterator[Callable[[], Activated]]:
    assert shutil.which("systemd-socket-activate"), "Debian's systemd package is required (installed by .ci/run)"
    started: list[tuple[CommandProcess, NotifySocket]] = []

    def start() -> Activated:
        sock = Path(render(_unit_value("fastgate.socket", "ListenStream"),
                           {SHIPPED_SOCKET: str(short_tmp / "fastgate.sock")}))
        notify = NotifySocket(short_tmp / "notify.sock")
        command = [
            "systemd-socket-activate", "-l", str(sock),
            # systemd-socket-activate gives the service only these variables, as a unit's
            # Environment= lines would.
            "-E", f"PYTHONPATH={ROOT}", "-E", "PYTHONUNBUFFERED=1", "-E", f"NOTIFY_SOCKET={notify.path}",
            *exec_start("tests.deploy.apps:app"),
        ]
        server = CommandProcess(command, wait_listening=False, timeout=30)
        started.append((server, notify))
        server.start()
        server.wait_line(f"Listening on {sock}", timeout=20)  # systemd-socket-activate's own line
        return Activated(server, notify, sock)

    yield start
    for server, notify in started:
        server.stop(timeout=60)
        notify.close()


def test_socket_activation_serves_the_first_connection_and_reports_to_systemd(
    activated: Callable[[], Activated],
) -> None:
    stack = activated()
    stack.notify.drain()
    assert stack.notify.messages == [], "nothing runs before the first connection"
    # The first connection waits in the socket's queue while fastgate starts on it.
    assert stack.get("/").text == "Hello, world!"
    stack.server.wait_line(r"Listening on fd://3", timeout=20)
    ready = stack.notify.wait_for("READY")
    # LISTEN_PID matched: systemd-socket-activate exec'd fastgate in place, so the pid that
    # reports READY=1 is the main pid systemd would track.
    assert int(stack.notify.messages[ready]["MAINPID"]) == stack.server.pid
    old = stack.worker_pids()

    # systemctl reload: the unit's ExecReload.
    subprocess.run(exec_reload(stack.server.pid), check=True, timeout=10)
    reloading = stack.notify.wait_for("RELOADING", start=ready + 1)
    stack.notify.wait_for("READY", start=reloading + 1, timeout=90)
    wait_for(lambda: not (stack.worker_pids(10) & old), timeout=30, what="only new workers answering")

    # systemctl stop: KillSignal to the main pid only (KillMode=mixed).
    stack.server.signal(signal.SIGTERM)
    stack.notify.wait_for("STOPPING", timeout=30)
    assert stack.server.wait(45) == 0, stack.server.output
    assert stack.notify.states() == ["READY", "RELOADING", "READY", "STOPPING"]


def test_reload_under_load_through_nginx_has_no_5xx(activated: Callable[[], Activated], short_tmp: Path) -> None:
    stack = activated()
    assert stack.get("/").status_code == 200  # activates fastgate
    ready = stack.notify.wait_for("READY")
    port = _free_port()
    nginx = Nginx(short_tmp / "nginx", render_site("fastgate.conf", short_tmp / "nginx", port=port,
                                                   upstream=f"unix:{stack.sock}"), port)
    reloads = 5
    # POST: nginx retries a GET on an upstream connection closed under it, never a POST, so
    # only a POST load shows a draining worker closing pooled connections (as 502s).
    with nginx, Load(nginx.url + "/whoami", body=b"payload") as load:
        old = stack.worker_pids()
        start = ready + 1
        for _ in range(reloads):
            load.wait_more(200)
            subprocess.run(exec_reload(stack.server.pid), check=True, timeout=10)
            reloading = stack.notify.wait_for("RELOADING", start=start)
            start = stack.notify.wait_for("READY", start=reloading + 1, timeout=90) + 1
        load.wait_more(200)
        new = stack.worker_pids()
    statuses, errors = load.statuses, load.errors
    at_nginx = collections.Counter(nginx.access_statuses())
    # nginx does not retry a POST: an upstream error it met is a failed request (a 502) below.
    print(f"\nreload under POST load through nginx: {reloads} SIGHUPs, {sum(statuses.values())} requests, "
          f"client statuses {dict(statuses)}, nginx statuses {dict(at_nginx)}, client errors {len(errors)}, "
          f"upstream errors nginx recovered from {len(nginx.upstream_errors()) - len(nginx.failed_requests())}")
    assert not errors, errors[:5]
    assert set(statuses) == {200}, statuses
    assert not nginx.failed_requests(), (nginx.failed_requests(), nginx.upstream_errors())
    assert not (new & old), "every worker was replaced"
