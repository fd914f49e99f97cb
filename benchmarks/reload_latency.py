"""Save-to-serving latency of the development reload: fastgate --reload vs uvicorn --reload.

For each server, on the same one-file ASGI app in a temporary directory: start the server
with ``--reload``, then N times: write a new response text into app.py and poll ``GET /``
(fresh connection every 5 ms) until the new text comes back. The time from the write to the
first response with the new text is one sample; the median over the edits is reported.
Connection errors seen while polling (refused / reset) are counted too.

Edits are spaced by a pause so each reload settles first, and each text has a different
length so neither server can be fooled by stale bytecode (same size, same mtime second).

    python benchmarks/reload_latency.py                # both servers, 7 edits
    python benchmarks/reload_latency.py --edits 11 --servers fastgate
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTEN = {
    "fastgate": re.compile(r"Listening on http://127\.0\.0\.1:(\d+)"),
    "uvicorn": re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)"),
}
READY = {
    "fastgate": re.compile(r"Watching \d+ director"),
    "uvicorn": re.compile(r"Application startup complete"),
}

APP = '''
MESSAGE = {message!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif m["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = MESSAGE.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": body}})
'''


class Server:
    def __init__(self, name: str, app_dir: Path, delay: float | None = None) -> None:
        self.name = name
        if name == "fastgate":
            cmd = [sys.executable, "-m", "fastgate", "app:app", "--reload", "--port", "0", "--app-dir", str(app_dir),
                   "--no-access-log"]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "app:app", "--reload", "--port", "0", "--app-dir", str(app_dir),
                   "--no-access-log"]
        if delay is not None:
            cmd += ["--reload-delay", str(delay)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.wait(LISTEN[name]).group(1))
        self.wait(READY[name])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip())
                self.cond.notify_all()

    def wait(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        index = 0
        with self.cond:
            while True:
                for line in self.lines[index:]:
                    m = pattern.search(line)
                    if m:
                        return m
                index = len(self.lines)
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: no {pattern.pattern!r}:\n" + "\n".join(self.lines))
                self.cond.wait(0.1)

    def get(self) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.partition(b"\r\n\r\n")[2].decode()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)


def measure(name: str, edits: int, pause: float, delay: float | None = None) -> tuple[list[float], int]:
    with tempfile.TemporaryDirectory(prefix=f"reload-{name}-") as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(APP.format(message="start"))
        server = Server(name, app_dir, delay)
        samples: list[float] = []
        errors = 0
        try:
            # uvicorn logs "Application startup complete" before its worker calls listen():
            # a first request at that moment can be refused. Wait until one succeeds.
            deadline = time.monotonic() + 30
            while True:
                try:
                    first = server.get()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: never served ({exc}):\n" + "\n".join(server.lines)) from None
                    time.sleep(0.01)
            assert first == "start", first
            for i in range(edits):
                time.sleep(pause)  # let the previous reload settle (pacing, not waiting on a condition)
                message = f"edit {i} " + "x" * i
                start = time.perf_counter()
                (app_dir / "app.py").write_text(APP.format(message=message))
                while True:
                    try:
                        body = server.get()
                    except OSError:
                        errors += 1
                        body = ""
                    if body == message:
                        break
                    if time.perf_counter() - start > 60:
                        raise RuntimeError(f"{name}: edit {i} never served")
                    time.sleep(0.005)
                samples.append(time.perf_counter() - start)
        finally:
            server.stop()
        return samples, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=7)
    parser.add_argument("--pause", type=float, default=1.5, help="seconds between edits")
    parser.add_argument("--servers", default="fastgate,uvicorn")
    parser.add_argument("--reload-delay", type=float, default=None,
                        help="pass --reload-delay to both servers (default: each one's own, 0.05 s vs 0.25 s)")
    args = parser.parse_args()
    print("| server | edits | median ms | min ms | max ms | connection errors |\n|---|---|---|---|---|---|")
    for name in args.servers.split(","):
        samples, errors = measure(name, args.edits, args.pause, args.reload_delay)
        ms = [s * 1000 for s in samples]
        label = f"{name} --reload" + (f" --reload-delay {args.reload_delay:g}" if args.reload_delay is not None else "")
        print(f"| {label} | {len(ms)} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} "
              f"| {errors} |", flush=True)


if __name__ == "__main__":
    main()
