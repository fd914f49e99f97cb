"""Idle memory per WebSocket connection in a fastgate worker, with and without permessage-deflate.

Starts ``fastgate --workers 0`` with a small echo app, opens N connections (websockets'
asyncio *client*), sends one ~1 KiB text message on each so compression state exists, and
reads the server's RSS (``/proc/PID/status``) before and after. The difference divided by N
is what one idle connection costs: transport buffers, protocol objects, the app's
coroutine, and for compression the zlib streams that stay alive between messages.

Compression variants (the server's ``ServerPerMessageDeflateFactory``; the client offers
the websockets client default):

* ``off``: no compression (``--no-ws-per-message-deflate``).
* ``fastgate``: what fastgate negotiates (``fastgate.ws.session.deflate_factory``).
* ``websockets``: websockets' own server default (12-bit windows, memLevel 5, context
  takeover both ways).
* ``zlib``: 15-bit windows and zlib's default memLevel 8, context takeover both ways.
* ``no-takeover``: no context takeover in either direction.

Usage::

    python benchmarks/ws_memory.py [--connections 500] [--variants off,fastgate,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTEN = re.compile(r"Listening on http://([0-9.]+):(\d+)")
MESSAGE = ('{"user": "someone", "event": "update", "values": [' + ", ".join(str(i * 7) for i in range(150)) + "]}")

VARIANTS = ("off", "fastgate", "websockets", "zlib", "no-takeover")


async def echo(scope, receive, send):  # type: ignore[no-untyped-def]
    """The ASGI app the server runs (``ws_memory:echo`` with ``--app-dir benchmarks``)."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})


def serve(variant: str) -> None:
    """Child process: patch the deflate factory for ``variant``, then run fastgate."""
    sys.path.insert(0, str(ROOT))
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    import fastgate.worker.websocket as ws_module
    from fastgate.cli import main

    factories = {
        "websockets": lambda: ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}),
        "zlib": lambda: ServerPerMessageDeflateFactory(),
        "no-takeover": lambda: ServerPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True,
            server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}),
    }
    if variant in factories:
        ws_module.deflate_factory = factories[variant]  # type: ignore[assignment]
    args = ["ws_memory:echo", "--app-dir", str(Path(__file__).parent), "--workers", "0", "--port", "0",
            "--log-level", "warning", "--no-access-log", "--ws-ping-interval", "0"]
    if variant == "off":
        args.append("--no-ws-per-message-deflate")
    # The startup line is logged at info; print our own so the parent finds the port.
    import fastgate.supervisor.sockets as sockets

    bind_all = sockets.bind_all

    def announce(config):  # type: ignore[no-untyped-def]
        listeners = bind_all(config)
        for listener in listeners:
            print(f"Listening on {listener.display}", flush=True)
        return listeners

    sockets.bind_all = announce  # type: ignore[assignment]
    sys.exit(main(args))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_connections(url: str, n: int, compression: str | None) -> list[object]:
    from websockets.asyncio.client import connect

    conns = []
    for start in range(0, n, 50):
        batch = await asyncio.gather(*(connect(url, compression=compression, ping_interval=None,
                                               max_size=None) for _ in range(start, min(n, start + 50))))
        conns.extend(batch)
    for ws in conns:
        await ws.send(MESSAGE)  # type: ignore[attr-defined]
    for ws in conns:
        assert await ws.recv() == MESSAGE  # type: ignore[attr-defined]
    return conns


async def measure(variant: str, n: int) -> tuple[float, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", variant], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            m = LISTEN.search(line)
            if m:
                port = int(m.group(2))
                break
        assert port, "server did not start"
        url = f"ws://127.0.0.1:{port}/"
        compression = None if variant == "off" else "deflate"
        warm = await open_connections(url, 20, compression)  # imports, caches, first allocations
        await asyncio.sleep(0.3)
        before = rss_kib(proc.pid)
        conns = await open_connections(url, n, compression)
        await asyncio.sleep(0.5)
        after = rss_kib(proc.pid)
        negotiated = conns[0].response.headers.get("Sec-WebSocket-Extensions") or "-"
        for ws in conns + warm:
            await ws.close()  # type: ignore[attr-defined]
        return (after - before) / n, negotiated
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"# idle WebSocket memory, {args.connections} connections, python {sys.version.split()[0]}, "
          f"pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'variant':<12} {'KiB/conn':>9}  negotiated")
    for variant in args.variants.split(","):
        per_conn, negotiated = asyncio.run(measure(variant, args.connections))
        print(f"{variant:<12} {per_conn:>9.1f}  {negotiated}", flush=True)


if __name__ == "__main__":
    main()
