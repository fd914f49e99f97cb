"""End-to-end process behaviour: app loading, lifespan, graceful shutdown, logging, UNIX sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.server import ServerProcess, read_response, recv_until_closed, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.apps:http_app"
Serve = Callable[..., ServerProcess]


# ------------------------------------------------------------------ app loading: exit 4


@pytest.mark.parametrize(
    ("target", "message", "traceback"),
    [
        ("no_such_module:app", "fastgate: error: could not import module 'no_such_module': not found", False),
        ("tests.apps:nope", "fastgate: error: module 'tests.apps' has no attribute 'nope'", False),
        ("tests.apps:not_callable", "fastgate: error: 'tests.apps:not_callable' is not callable (got int)", False),
        ("tests.apps:not_callable_instance", "fastgate: error: 'tests.apps:not_callable_instance' is not callable",
         False),
        ("tests.broken_app:app", "fastgate: error: error while importing 'tests.broken_app': RuntimeError: "
                                 "this module is broken on purpose", True),
        ("tests.apps", "fastgate: error: app must be given as MODULE:ATTRIBUTE", False),
    ],
)
def test_app_load_errors_exit_4_with_one_line(serve: Serve, target: str, message: str, traceback: bool) -> None:
    server = serve(target, "--workers", "0", wait_listening=False)
    assert server.wait(30) == 4
    lines = server.output.strip().splitlines()
    assert lines[-1].startswith(message), server.output
    # The app's own traceback helps when its import crashed; otherwise one line only.
    assert ("Traceback" in server.output) is traceback
    if not traceback:
        assert len(lines) == 1, server.output


def test_factory_flag(serve: Serve) -> None:
    server = serve("tests.apps:factory", "--workers", "0", "--factory")
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"
    bad = serve("tests.apps:not_callable", "--workers", "0", "--factory", wait_listening=False)
    assert bad.wait(30) == 4
    assert "fastgate: error: --factory: 'tests.apps:not_callable' is not callable" in bad.output


def test_app_dir(serve: Serve, tmp_path: Path) -> None:
    (tmp_path / "mymain.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'from app-dir'})\n"
    )
    server = serve("mymain:app", "--workers", "0", "--app-dir", str(tmp_path), "--lifespan", "off")
    assert httpx.get(server.url + "/", timeout=5).text == "from app-dir"


# ------------------------------------------------------------------ lifespan: exit 3


def test_lifespan_state_reaches_requests(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--lifespan", "on")
    info = httpx.get(server.url + "/echo", timeout=5).json()
    assert info["state"]["started_pid"] == server.pid


def test_lifespan_startup_failure_exits_3(serve: Serve) -> None:
    server = serve("tests.apps:failing_startup", "--workers", "0", wait_listening=False)
    assert server.wait(30) == 3
    assert "lifespan startup failed: database unreachable" in server.output
    assert "Listening on" not in server.output


def test_lifespan_on_requires_support_auto_tolerates(serve: Serve) -> None:
    server = serve("tests.apps:no_lifespan", "--workers", "0", "--lifespan", "on", wait_listening=False)
    assert server.wait(30) == 3
    assert "lifespan startup failed: AssertionError: only http" in server.output
    server = serve("tests.apps:no_lifespan", "--workers", "0")
    assert httpx.get(server.url + "/", timeout=5).text == "no lifespan here"
    assert "ERROR" not in server.output


# ------------------------------------------------------------------ graceful shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_finishes_in_flight_and_closes_idle(serve: Serve, sig: int) -> None:
    server = serve(APP, "--workers", "0", "--timeout-keep-alive", "4")
    idle, reused, busy = (server.connect(timeout=15) for _ in range(3))
    try:
        for sock in (idle, reused):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        busy.sendall(b"GET /announce-slow?delay=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.wait_line("slow request started")
        server.signal(sig)
        server.wait_line("Shutting down")
        # New connections are refused once the listener closed ...
        wait_for(lambda: _refused(server), timeout=10, what="listener closed")
        # ... a request arriving on a kept-alive connection during the drain (a proxy's
        # pool does this) is answered and told to close, never reset ...
        reused.sendall(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        status, headers, body, _ = read_response(reused)
        assert (status, body, headers[b"connection"]) == (200, b"hi", b"close")
        # ... an idle keep-alive connection is closed (at its keep-alive deadline) ...
        assert closed_by_server(idle)
        # ... and the in-flight request completes, told to close.
        status, headers, body, _ = read_response(busy)
        assert (status, body) == (200, b"slow done") and headers[b"connection"] == b"close"
        assert server.wait(30) == 0
        assert "lifespan shutdown complete" in server.output
    finally:
        for sock in (idle, reused, busy):
            sock.close()


def test_a_drain_keeps_the_keep_alive_promise_of_a_response_already_under_way(serve: Serve) -> None:
    # A proxy pools a connection as soon as a response that promised keep-alive is in, and may
    # send the next request on it at once: closing right after that response would reset the
    # request (nginx answers 502 to a POST, which it never retries). So the connection serves
    # one more request, told to close.
    server = serve(APP, "--workers", "0", "--timeout-keep-alive", "4")
    sock = server.connect(timeout=15)
    try:
        sock.sendall(b"GET /announce-slow-stream?delay=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        server.wait_line("slow stream started")
        server.signal(signal.SIGTERM)
        server.wait_line("Shutting down")
        status, headers, body, _ = read_response(sock)
        assert (status, body) == (200, b"slow stream done") and b"connection" not in headers
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        status, headers, body, _ = read_response(sock)
        assert (status, body, headers[b"connection"]) == (200, b"hi", b"close")
        assert closed_by_server(sock)
        assert server.wait(30) == 0
    finally:
        sock.close()


def closed_by_server(sock: socket.socket, timeout: float = 15.0) -> bool:
    """True when the server closed the connection (EOF or reset), False on a timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _refused(server: ServerProcess) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            return s.recv(100) == b""
    except OSError:
        return True


def test_graceful_timeout_cancels_what_remains(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--timeout-graceful-shutdown", "0.5")
    busy = server.connect(timeout=30)
    busy.sendall(b"GET /announce-slow?delay=60 HTTP/1.1\r\nHost: t\r\n\r\n")
    server.wait_line("slow request started")
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert closed_by_server(busy)  # dropped, never a partial response
    assert "still open after --timeout-graceful-shutdown 0.5s" in server.output
    assert "lifespan shutdown complete" in server.output
    busy.close()


# ------------------------------------------------------------------ logging


def _access_lines(server: ServerProcess, needle: str) -> list[str]:
    return [line for line in server.output.splitlines() if needle in line]


def test_access_log_default_line(serve: Serve) -> None:
    server = serve(APP, "--workers", "0")
    httpx.get(server.url + "/echo?q=1", timeout=5)
    with server.connect() as sock:
        sock.sendall(b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(sock)
    line = server.wait_line(r'127\.0\.0\.1:\d+ "GET /echo\?q=1 HTTP/1\.1" 200 \d+ [\d.]+ms').group(0)
    length = int(line.split()[-2])
    assert length > 100
    server.wait_line(r'"GET /raise HTTP/1\.1" 500 ')


def test_access_log_escapes_and_format_atoms(serve: Serve) -> None:
    fmt = '%(h)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(b)s|%(a)s|%({x-id}i)s|%(f)s|%(D)s|%(L)s|%(p)s|%(t)s|%(zz)s'
    server = serve(APP, "--workers", "0", "--access-log-format", fmt)
    with server.connect() as sock:
        sock.sendall(b'GET /p?a=b HTTP/1.1\r\nHost: t\r\nUser-Agent: evil" \xff\x80\tUA\r\nX-Id: 42\r\n\r\n')
        read_response(sock)
    line = server.wait_line(r"\|GET\|/p\|").string
    fields = line.split("|")
    assert fields[1:7] == ["GET", "/p", "a=b", "HTTP/1.1", "200", "13"]
    assert fields[7] == 'evil\\" \\xff\\x80\\x09UA'  # escaped: one line, no forged quotes
    assert fields[8] == "42" and fields[9] == "-" and int(fields[10]) >= 0 and float(fields[11]) >= 0
    assert fields[12] == f"<{server.pid}>" and fields[13].startswith("[") and fields[14] == "-"


def test_access_log_can_be_switched_off(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--no-access-log")
    httpx.get(server.url + "/marker-path", timeout=5)
    with server.connect() as sock:  # a rejection is still logged
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        recv_until_closed(sock)
    server.wait_line("rejected request")
    assert "/marker-path" not in server.output


@pytest.mark.parametrize("workers", ["0", "2"])
def test_json_log_format(serve: Serve, workers: str) -> None:
    server = serve(APP, "--workers", workers, "--log-format", "json")
    with server.connect() as sock:
        sock.sendall(b"GET /json-line%20x?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: t\xff\"\r\nReferer: r\r\n\r\n")
        read_response(sock)
    with server.connect() as sock:  # a rejection is logged as JSON too
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        recv_until_closed(sock)
    server.wait_line("json-line")
    server.wait_line("rejected request")
    server.stop()
    # Every line, from the master, the workers and the access log alike, is one JSON object
    # (but the one the test app prints itself).
    records = [json.loads(line) for line in server.output.splitlines()
               if line.strip() and "lifespan shutdown complete" not in line]  # two workers' prints may share a line
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    assert any("Listening on" in r["message"] for r in records)
    assert any("rejected request" in r["message"] and r["level"] == "warning" for r in records)
    access = next(r for r in records if r["logger"] == "fastgate.access")
    assert access["method"] == "GET" and access["path"] == "/json-line%20x" and access["query"] == "x=1"
    assert access["status"] == 200 and access["bytes_sent"] == 13 and access["client"].startswith("127.0.0.1:")
    assert access["http_version"] == "1.1" and access["user_agent"] == 't\xff"' and access["referer"] == "r"
    assert isinstance(access["duration_ms"], float)
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", access["request_id"])  # generated: JSON logs use it


def test_request_id_header_echoed_and_logged_across_workers(serve: Serve) -> None:
    server = serve(APP, "--workers", "2", "--log-format", "json", "--request-id-header", "X-Request-ID")
    echoed: list[str] = []
    for i in range(20):  # new connections: both workers answer some
        headers = {"x-request-id": f"from-proxy-{i}"} if i % 2 else {}
        response = httpx.get(server.url + f"/rid-{i}", headers=headers, timeout=5)
        echoed.append(response.headers["x-request-id"])
    assert echoed[1::2] == [f"from-proxy-{i}" for i in range(1, 20, 2)]  # 127.0.0.1 is a trusted proxy
    assert len(set(echoed)) == 20 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", e) for e in echoed[0::2])
    with server.connect() as sock:  # a value the parser takes but our id check refuses (quote, space, obs-text)
        sock.sendall(b"GET /rid-evil HTTP/1.1\r\nHost: t\r\nX-Request-ID: a\"} set-cookie:\xff\r\n\r\n")
        status, head, _, _ = read_response(sock)
    assert status == 200 and b"set-cookie" not in head
    assert re.fullmatch(rb"[0-9a-f]{12}-[0-9a-f]+", head[b"x-request-id"])
    wait_for(lambda: server.output.count('"request_id"') >= 21, what="21 access records")
    server.stop()
    records = [json.loads(line) for line in server.output.splitlines()
               if line.strip() and "lifespan shutdown complete" not in line]
    logged = {r["path"]: r["request_id"] for r in records if r["logger"] == "fastgate.access"}
    assert [logged[f"/rid-{i}"] for i in range(20)] == echoed
    assert len({r["pid"] for r in records if r["logger"] == "fastgate.access"}) == 2


def test_request_id_header_on_the_last_responses_of_a_draining_worker(serve: Serve) -> None:
    # The responses a drain ends with (the one in flight, one on a kept-alive connection
    # that arrives after SIGTERM) are told to close and still carry the request id.
    server = serve(APP, "--workers", "0", "--request-id-header", "X-Request-ID")
    busy, reused = server.connect(timeout=30), server.connect(timeout=30)
    try:
        reused.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(reused)[0] == 200
        busy.sendall(b"GET /announce-slow?delay=1 HTTP/1.1\r\nHost: t\r\nX-Request-ID: in-flight-1\r\n\r\n")
        server.wait_line("slow request started")
        server.signal(signal.SIGTERM)
        server.wait_line("Shutting down")
        # The log line comes first; the connections are told once the listener is closed.
        wait_for(lambda: _refused(server), timeout=10, what="listener closed")
        reused.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _, _ = read_response(reused)
        assert status == 200 and headers[b"connection"] == b"close"
        assert re.fullmatch(rb"[0-9a-f]{12}-[0-9a-f]+", headers[b"x-request-id"])
        status, headers, body, _ = read_response(busy)
        assert (status, body, headers[b"connection"]) == (200, b"slow done", b"close")
        assert headers[b"x-request-id"] == b"in-flight-1"  # 127.0.0.1 is a trusted proxy
        assert server.wait(30) == 0
    finally:
        busy.close()
        reused.close()


# ------------------------------------------------------------------ UNIX sockets


def test_unix_socket_mode_scope_and_cleanup(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "fg.sock")
    server = serve(APP, "--workers", "0", "--uds", path)
    assert server.unix_path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    with server.connect() as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        info = json.loads(read_response(sock)[2])
    assert info["server"] == [path, None] and info["client"] is None
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not os.path.exists(path)


def test_unix_socket_custom_mode_and_stale_file(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # a socket file nobody listens on: what a killed server leaves behind
    dead.close()
    assert os.path.exists(path)
    server = serve(APP, "--workers", "0", "--uds", path, "--uds-mode", "600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[2] == b"Hello, world!"
    # A second server must not steal a live socket.
    second = serve(APP, "--workers", "0", "--uds", path, wait_listening=False)
    assert second.wait(30) == 3
    assert "another server is using it" in second.output
    assert os.path.exists(path)


def test_unix_socket_refuses_to_replace_a_regular_file(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    server = serve(APP, "--workers", "0", "--uds", str(path), wait_listening=False)
    assert server.wait(30) == 3
    assert "a non-socket file is in the way" in server.output
    assert path.read_text() == "precious"


def test_bind_flag_serves_several_listeners(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "b.sock")
    server = serve(APP, "--workers", "0", "--bind", "127.0.0.1:0", "--bind", f"unix:{path}")
    server.wait_line(f"Listening on unix:{path}")
    port = int(server.wait_line(r"Listening on http://127\.0\.0\.1:(\d+)").group(1))
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "Hello, world!"
    transport = httpx.HTTPTransport(uds=path)
    with httpx.Client(transport=transport, timeout=5) as client:
        assert client.get("http://fg/").text == "Hello, world!"


def test_concurrent_clients(serve: Serve) -> None:
    server = serve(APP, "--workers", "0")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for _ in range(20):
                    assert client.get(server.url + "/").text == "Hello, world!"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


@pytest.mark.parametrize("flag", ["--fd", "--bind"])
def test_inherited_listening_fd(flag: str) -> None:
    import subprocess
    import sys

    from tests.server import ROOT

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    value = str(fd) if flag == "--fd" else f"fd://{fd}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WEB_CONCURRENCY", None)
    proc = subprocess.Popen([sys.executable, "-m", "fastgate", APP, "--workers", "0", flag, value],
                            pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        listener.close()  # the server owns it now
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"Listening on http://127.0.0.1:{port} " in line, line  # the inherited socket, nothing else
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "Hello, world!"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_bad_fd_is_a_clear_boot_error(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--fd", "987", wait_listening=False)
    assert server.wait(30) == 3
    assert "fastgate: error: --fd 987: not a usable socket" in server.output


def test_limit_max_requests_stops_the_single_process(serve: Serve) -> None:
    server = serve(APP, "--workers", "0", "--limit-max-requests", "3")
    with httpx.Client(timeout=5) as client:
        for _ in range(3):
            assert client.get(server.url + "/").status_code == 200
    assert server.wait(30) == 0
    assert "Served 3 requests (--limit-max-requests)" in server.output
    assert "lifespan shutdown complete" in server.output
