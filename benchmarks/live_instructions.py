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
    FASTGATE_PURE=1 python benchmarks/live_instructions.py          # the pure build
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
from benchmarks.run import free_port  # noqa: E402

CONNECTIONS = 8


async def _client(port: int, requests: int, path: str, close: bool) -> None:
    headers = "Host: 127.0.0.1\r\n" + ("Connection: close\r\n" if close else "")
    request_bytes = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request_bytes)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        assert length is not None and head.startswith(b"HTTP/1.1 200 "), head
        await reader.readexactly(int(length.group(1)))

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


def _count(requests: int, path: str, close: bool) -> int:
    """Total instructions of a server that served ``requests`` (plus the warm-up)."""
    port = free_port()
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "fastgate",
           "benchmarks.app:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "0", "--no-access-log"]
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
    args = p.parse_args(argv)
    one, three = _count(args.n, args.path, args.close), _count(3 * args.n, args.path, args.close)
    label = f"{args.path} close" if args.close else args.path
    print(f"{label:8} {(three - one) / (2 * args.n):10,.0f} instructions/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
