"""WebSocket echo throughput: fastgate vs uvicorn, same machine, same run, same client.

Each server runs one process (``fastgate --workers 0``; uvicorn with uvloop, httptools and
``--ws websockets-sansio`` when available, else ``--ws websockets``) and the same ASGI echo
app. The load generator is a raw-socket client on uvloop in another process: C connections,
each sending a batch of W masked text frames at once and waiting for the W echoes before
the next batch, so the client stays cheap (it counts bytes instead of parsing frames) and
the server's per-message cost dominates. No compression is offered, so neither server
compresses.

Usage::

    python benchmarks/ws_echo.py [--seconds 5] [--connections 16] [--window 16] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LISTEN = re.compile(r"(?:Listening on|running on) http://[0-9.]+:(\d+)")


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Echo app (``ws_echo:app`` with ``--app-dir benchmarks``)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_ws() -> str:
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    except ImportError:
        return "websockets"
    return "websockets-sansio"


def start_server(name: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    common_env = dict(os.environ, PYTHONPATH=str(ROOT))
    if name == "fastgate":
        cmd = [sys.executable, "-m", "fastgate", "ws_echo:app", "--app-dir", str(HERE), "--workers", "0",
               "--port", str(port), "--no-access-log", "--ws-ping-interval", "0", "--no-ws-per-message-deflate"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "ws_echo:app", "--app-dir", str(HERE), "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--ws", uvicorn_ws(), "--no-access-log",
               "--ws-ping-interval", "0", "--ws-per-message-deflate", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=common_env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if LISTEN.search(line):
            break
    else:
        raise RuntimeError(f"{name} did not start")
    return proc, port


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + key + masked


class EchoClient(asyncio.Protocol):
    """One connection: handshake, then batches of ``window`` frames."""

    def __init__(self, batch: bytes, batch_reply: int, done: asyncio.Future[None]) -> None:
        self.batch = batch
        self.batch_reply = batch_reply
        self.done = done
        self.transport: asyncio.Transport
        self.handshake = True
        self.buf = b""
        self.received = 0
        self.messages_batches = 0
        self.stop = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.handshake:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            self.handshake = False
            self.transport.write(self.batch)
            data = rest
        self.received += len(data)
        if self.received >= self.batch_reply:
            self.received -= self.batch_reply
            self.messages_batches += 1
            if self.stop:
                if not self.done.done():
                    self.done.set_result(None)
            else:
                self.transport.write(self.batch)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def load(port: int, seconds: float, connections: int, window: int, size: int) -> float:
    loop = asyncio.get_running_loop()
    payload = b"m" * size
    batch = b"".join(masked_text(payload) for _ in range(window))
    reply = window * (2 + size)
    clients: list[EchoClient] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        _, client = await loop.create_connection(lambda d=done: EchoClient(batch, reply, d), "127.0.0.1", port)
        clients.append(client)
    await asyncio.sleep(0.5)  # warm-up
    start_counts = sum(c.messages_batches for c in clients)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    counts = sum(c.messages_batches for c in clients)
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.stop = True
    await asyncio.wait([c.done for c in clients], timeout=5)
    for c in clients:
        c.transport.close()
    return (counts - start_counts) * window / elapsed


def run_client(port: int, args: argparse.Namespace) -> float:
    import uvloop

    return uvloop.run(load(port, args.seconds, args.connections, args.window, args.size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="payload bytes (< 126)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    args = parser.parse_args()
    assert args.size < 126
    print(f"# ws echo: {args.connections} connections x window {args.window}, {args.size} B text, "
          f"{args.seconds:g}s x {args.rounds} rounds, uvicorn --ws {uvicorn_ws()}, {os.cpu_count()} CPUs")
    results: dict[str, list[float]] = {"fastgate": [], "uvicorn": []}
    for _ in range(args.rounds):
        for name in results:
            proc, port = start_server(name)
            try:
                results[name].append(run_client(port, args))
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    best = {name: max(values) for name, values in results.items()}
    for name, values in results.items():
        print(f"{name:<9} best {best[name]:>10,.0f} msg/s   runs: {', '.join(f'{v:,.0f}' for v in values)}")
    print(f"ratio fastgate/uvicorn: {best['fastgate'] / best['uvicorn']:.2f}")


if __name__ == "__main__":
    main()
