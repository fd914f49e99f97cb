"""Instructions per request of a real fastgate server, end to end in user space.

``instructions.py`` counts bench_h1's layers on a fake transport; this counts the whole
worker (uvloop, httptools, the app, the interpreter) serving real sockets on loopback:
``python -m fastgate benchmarks.app:app --workers 0`` under ``valgrind --tool=callgrind``,
a client sending N and then 3N keep-alive requests over 8 connections; (I(3N) - I(N)) / 2N
is one request with start-up, warm-up and shutdown cancelled out. The kernel's share is
not counted (callgrind sees user space only). Like instructions.py, the figure does not
depend on what else runs on the machine, which makes it the one to compare Pythons and
builds with on a shared machine.

    python benchmarks/live_instructions.py                          # plaintext, this Python
    python benchmarks/live_instructions.py --path /json -n 500
    python benchmarks/live_instructions.py --close                  # a connection per request
    python benchmarks/live_instructions.py --server uvicorn --python benchmarks/.venv-peers/bin/python
    FASTGATE_PURE=1 python benchmarks/live_instructions.py          # the pure build

The same count for uvicorn (its flags as in run.py: httptools, uvloop) puts the two side by
side without the machine's noise; the kernel's share, which end-to-end CPU includes, is left
out for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: its siblings as the benchmarks package

from benchmarks.instructions import callgrind_total  # noqa: E402
from benchmarks.run import Server, free_port  # noqa: E402

CONNECTIONS = 8


async def _client(port: int, requests: int, path: str, close: bool) -> None:
    headers = "Host: 127.0.0.1\r\n" + ("Connection: close\r\n" if close else "")
    request_bytes = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request_bytes)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length is not None:
            await reader.readexactly(int(length.group(1)))
            return
        # uvicorn sends a body given without a length chunked.
        assert re.search(rb"(?im)^transfer-encoding:\s*chunked", head), head
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers

    async def one(count: int) -> None:
        # Keep-alive: one connection for all; --close: a connection per request, which the
        # server closes after its response.
        for _ in range(count if close else 1):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for _ in range(1 if close else count):
                    await exchange(reader, writer)
                if close:
                    assert await reader.read() == b""
            finally:
                writer.close()
                await writer.wait_closed()

    await asyncio.gather(*(one(requests // CONNECTIONS) for _ in range(CONNECTIONS)))


def _count(requests: int, path: str, close: bool, server_kind: str = "fastgate", python: str = sys.executable) -> int:
    """Total instructions of a server that served ``requests`` (plus the warm-up)."""
    port = free_port()
    # One process (fastgate: --workers 0); a peer as `python -m`, not its console script,
    # so that valgrind runs the interpreter itself.
    argv = Server(server_kind, python).argv(port, 0)
    if server_kind != "fastgate":
        argv = [python, "-m", server_kind, *argv[1:]]
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    server = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # start-up under valgrind takes a while
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start under valgrind") from None
                time.sleep(0.2)
        asyncio.run(_client(port, 200, path, close))  # warm-up: first-call costs land in both runs alike
        asyncio.run(_client(port, requests, path, close))
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return callgrind_total(stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default="/", help="/ (plaintext) or /json")
    p.add_argument("-n", type=int, default=1000, help="requests in the smaller run (the other has 3N)")
    p.add_argument("--close", action="store_true", help="Connection: close, a new connection per request")
    p.add_argument("--server", choices=("fastgate", "uvicorn"), default="fastgate")
    p.add_argument("--python", default=sys.executable, help="the server's interpreter (a peer's: its venv's)")
    args = p.parse_args(argv)
    one, three = (_count(n, args.path, args.close, args.server, args.python) for n in (args.n, 3 * args.n))
    label = f"{args.path} close" if args.close else args.path
    print(f"{args.server:8} {label:8} {(three - one) / (2 * args.n):10,.0f} instructions/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
