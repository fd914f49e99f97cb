"""WebSocket echo load client: many connections, a window of messages in flight on each.

Cheap on purpose so the server, not the client, is the bottleneck: uvloop, raw frames
(every client frame is the same pre-masked bytes, built once), one ``write`` per batch of
echoes received, and a frame counter instead of a general parser on the fast path.

Prints one JSON line: messages echoed, seconds measured, client CPU seconds (to tell a
client-bound run), latency percentiles (send to echo, in ms) and errors.

    python benchmarks/ws_load.py --port 8000 --connections 32 --window 8 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections import deque
from typing import Any


def client_frame(payload: bytes, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A masked FIN text frame (RFC 6455 §5.2); payload < 65536 bytes."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    else:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class EchoClient(asyncio.Protocol):
    """One connection: handshake, then keep ``window`` messages in flight."""

    def __init__(self, run: Run, path: str, host: str) -> None:
        self.run = run
        self.host = host
        self.path = path
        self.transport: asyncio.Transport
        self.buf = bytearray()
        self.upgraded = False
        self.sent: deque[float] = deque()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                self.fail(f"handshake refused: {status.decode(errors='replace')}")
                return
            del buf[: end + 4]
            self.upgraded = True
            self.send(self.run.window)
        run = self.run
        # Count complete server frames (unmasked; payload length 7, 16 or 64 bits).
        pos = 0
        n = 0
        size = len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            hdr = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if size - pos < hdr + length:
                break
            opcode = buf[pos] & 0x0F
            pos += hdr + length
            if opcode == 0x8:
                self.fail("server closed the connection")
                return
            if opcode in (0x1, 0x2):
                n += 1
        if pos:
            del buf[:pos]
        if n:
            now = time.perf_counter()
            sent = self.sent
            lat = run.latencies
            sample = run.measuring
            for _ in range(n):
                t = sent.popleft()
                if sample:
                    lat.append(now - t)
            if sample:
                run.messages += n
            if run.stopping:
                if not sent:
                    self.transport.close()
                return
            self.send(n)

    def send(self, n: int) -> None:
        now = time.perf_counter()
        self.sent.extend([now] * n)
        self.transport.write(self.run.frame * n)

    def fail(self, reason: str) -> None:
        self.run.errors.append(reason)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Run:
    def __init__(self, window: int, frame: bytes) -> None:
        self.window = window
        self.frame = frame
        self.messages = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.measuring = False
        self.stopping = False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(args.window, client_frame(b"x" * args.size))
    clients: list[EchoClient] = []
    for _ in range(args.connections):
        try:
            _, proto = await loop.create_connection(lambda: EchoClient(run, args.path, args.host), args.host, args.port)
        except OSError as exc:
            run.errors.append(f"connect: {exc}")
            break
        clients.append(proto)
    await asyncio.sleep(args.warmup)
    cpu0 = os.times()
    t0 = time.perf_counter()
    run.measuring = True
    await asyncio.sleep(args.duration)
    run.measuring = False
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    run.stopping = True
    for c in clients:
        if not c.sent:
            c.transport.close()
    if clients:
        await asyncio.wait([c.done for c in clients], timeout=5)
    for c in clients:
        c.transport.abort()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "messages": run.messages,
        "seconds": elapsed,
        "msg_per_s": run.messages / elapsed if elapsed else 0.0,
        "client_cpu_s": cpu,
        "p50_ms": percentile(run.latencies, 0.5) * 1000,
        "p99_ms": percentile(run.latencies, 0.99) * 1000,
        "errors": sorted(set(run.errors))[:5],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--window", type=int, default=8, help="messages in flight per connection")
    p.add_argument("--size", type=int, default=32, help="payload bytes (text)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # still works, only slower
        runner = asyncio.run  # type: ignore[assignment]
    result = runner(main(parse_args()))
    print(json.dumps(result))
    sys.exit(0 if not result["errors"] and result["messages"] else 1)
