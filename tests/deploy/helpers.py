"""Shared helpers for the deployment tests: real nginx, rendered shipped files, processes.

The tests run what ``deploy/`` ships. Shipped files are rendered by replacing a few exact
strings (socket path, listen port, include path); ``render`` insists that each one occurs
exactly once, so a change to a shipped file that the test no longer matches fails loudly
instead of silently testing something else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from fastgate.config import Config
from tests.server import ROOT, wait_for

DEPLOY = ROOT / "deploy"
NGINX_DIR = DEPLOY / "nginx"
# Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin") or ""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def render(text: str, replacements: Mapping[str, str]) -> str:
    """Replace each key of ``replacements`` in ``text``; each must occur exactly once."""
    for old, new in replacements.items():
        count = text.count(old)
        assert count == 1, f"expected {old!r} exactly once in the shipped file, found it {count} times"
        text = text.replace(old, new)
    return text



# ----------------------------------------------------------------------------- nginx

NGINX_MAIN = """\
daemon off;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format fastgate_test '$remote_addr "$request" $status upstream=$upstream_status c=$connection';
    access_log {tmp}/access.log fastgate_test;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


def render_site(
    variant: str,
    tmp: Path,
    *,
    port: int,
    upstream: str,
    tls: tuple[Path, Path, int] | None = None,
) -> str:
    """The shipped site file ``deploy/nginx/<variant>`` made runnable in ``tmp``.

    Args:
        variant: ``fastgate.conf`` (UNIX socket) or ``fastgate-tcp.conf``.
        port: loopback port nginx listens on instead of 80.
        upstream: what replaces the shipped upstream address (a socket path or HOST:PORT).
        tls: (certificate, key, port) to enable the shipped, commented-out TLS lines.
    """
    text = (NGINX_DIR / variant).read_text()
    shipped_upstream = "unix:/run/fastgate/fastgate.sock" if variant == "fastgate.conf" else "127.0.0.1:8000"
    tmp.mkdir(parents=True, exist_ok=True)
    snippet = tmp / "fastgate-proxy.conf"
    snippet.write_text((NGINX_DIR / "fastgate-proxy.conf").read_text())
    replacements = {
        f"server {shipped_upstream};": f"server {upstream};",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "include /etc/nginx/snippets/fastgate-proxy.conf;": f"include {snippet};",
    }
    if tls is not None:
        cert, key, tls_port = tls
        replacements.update({
            "# listen 443 ssl;": f"listen 127.0.0.1:{tls_port} ssl;",
            "# ssl_certificate     /etc/letsencrypt/live/example.com/fullchain.pem;": f"ssl_certificate {cert};",
            "# ssl_certificate_key /etc/letsencrypt/live/example.com/privkey.pem;": f"ssl_certificate_key {key};",
        })
    return render(text, replacements)


class Nginx:
    """A real nginx (Debian's binary) on loopback with a config and prefix under ``tmp``."""

    def __init__(self, tmp: Path, site: str, port: int, tls_port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port
        self.tls_port = tls_port
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "site.conf").write_text(site)
        # As root, nginx workers would switch to "nobody", who cannot enter pytest's
        # private tmp directory or connect to fastgate's 0660 socket.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(NGINX_MAIN.format(tmp=tmp, user=user))
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.tmp), "-c", str(self.conf), "-e", str(self.tmp / "error.log"), *extra]

    def check(self) -> None:
        """``nginx -t``: the configuration parses and every referenced file exists."""
        result = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr + self.error_log()

    def start(self) -> Nginx:
        with open(self.tmp / "stderr.log", "wb") as stderr:  # the child keeps its own copy
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, timeout=20, interval=0.05, what="nginx to listen")
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def upstream_errors(self) -> list[str]:
        """nginx's error-log lines about the upstream (each is a failed attempt, retried or not)."""
        return [line for line in self.error_log().splitlines() if "[error]" in line and "upstream" in line]

    def failed_requests(self) -> list[str]:
        """Access-log lines of requests that ended with a 5xx."""
        path = self.tmp / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line for line in lines if line.split('" ', 1)[1].startswith("5")]

    def access_statuses(self) -> list[int]:
        """The status of every request nginx logged (a request is logged when it ends)."""
        path = self.tmp / "access.log"
        if not path.exists():
            return []
        statuses = []
        for line in path.read_text().splitlines():
            statuses.append(int(line.split('" ', 1)[1].split()[0]))
        return statuses


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), for the TLS listener."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


# ----------------------------------------------------------------------------- shipped files

def fastgate_config(args: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    """Parse ``args`` with fastgate's own command line, in an environment of only ``env``.

    A flag that fastgate does not know, or a value it rejects, fails here.
    """
    from unittest import mock

    from fastgate.cli import parse_args

    with mock.patch.dict(os.environ, dict(env or {}), clear=True):
        config, _ = parse_args(list(args))
    return config


class Instruction(NamedTuple):
    keyword: str  # upper-cased: FROM, RUN, CMD, ...
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    stage = -1
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
        current = ""
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None (shell form)."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    return None


# ----------------------------------------------------------------------------- systemd

class NotifySocket:
    """A stand-in for systemd's notification socket: a bound AF_UNIX datagram socket.

    Messages are kept in arrival order, each as ``{KEY: VALUE}`` of its lines.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return False
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return True

    def wait_for(self, key: str, value: str = "1", timeout: float = 30.0, start: int = 0) -> int:
        """Index of the first message from ``start`` on with ``key=value``; waits for it."""
        import time

        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.messages):
                if self.messages[index].get(key) == value:
                    return index
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} from fastgate within {timeout}s; got {self.messages}")
            self._receive(remaining)

    def states(self) -> list[str]:
        """The state keys received so far (READY, RELOADING, STOPPING), in order."""
        return [k for m in self.messages for k in ("READY", "RELOADING", "STOPPING") if m.get(k) == "1"]

    def drain(self) -> None:
        """Take whatever has arrived, without waiting."""
        while self._receive(0.001):
            pass


# ----------------------------------------------------------------------------- load

class Load:
    """Keep-alive GET (or POST, when ``body`` is given) load from a few threads, bounded in
    count and time; counts statuses."""

    def __init__(self, url: str, *, threads: int = 4, max_requests: int = 40_000, max_seconds: float = 120.0,
                 body: bytes | None = None) -> None:
        import collections

        self.url = url
        self.body = body
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        import time

        import httpx

        deadline = time.monotonic() + self._max_seconds
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    if self.body is None:
                        status = client.get(self.url).status_code
                    else:
                        status = client.post(self.url, content=self.body).status_code
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.statuses[status] += 1
                    if sum(self.statuses.values()) >= self._max_requests:
                        self._stop.set()

    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def wait_more(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` more requests have completed (the load is flowing)."""
        target = self.total() + count
        wait_for(lambda: self.total() >= target, timeout=timeout, what=f"{count} more requests")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
