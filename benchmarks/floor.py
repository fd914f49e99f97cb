"""The floor under any uvloop + httptools ASGI server: how cheap can a request be?

A deliberately incomplete server (no limits, no errors, no keep-alive rules, GET only),
used to split a server's CPU per request into what the kernel, uvloop and httptools cost
and what the server's own machinery adds. Three modes, each answering ``GET /`` with
``Hello, world!``:

* ``bare``: parse with httptools, write a canned response (no ASGI at all);
* ``inline``: build a scope, call an ASGI app and drive its coroutine inline;
* ``task``: the same, with the app run in a Task per request as a real server must (the
  app's ``asyncio.current_task()`` and anyio's cancel scopes need one).

    python benchmarks/floor.py --port 8000 --mode task
    wrk -t1 -c64 -d5s http://127.0.0.1:8000/

Numbers from this machine are in OPTIMIZATIONS.md.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import uvloop

CANNED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY = {"type": "http.response.body", "body": b"Hello, world!"}


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        if self.mode == "bare":
            self.transport.write(CANNED)
            return
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": self.url.decode(), "raw_path": self.url, "query_string": b"",
            "root_path": "", "headers": self.headers, "server": None, "client": None, "state": {},
            "extensions": {},
        }
        coro = hello(scope, self.receive, self.send)
        if self.mode == "task":
            asyncio.get_running_loop().create_task(coro)
            return
        try:
            coro.send(None)
        except StopIteration:
            pass

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.head = [b"HTTP/1.1 200 OK\r\n", *(n + b": " + v + b"\r\n" for n, v in message["headers"])]
            return
        body = message["body"]
        self.transport.write(b"".join((*self.head, b"content-length: %d\r\n\r\n" % len(body), body)))


async def serve(host: str, port: int, mode: str) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(mode), host, port, backlog=2048)
    bound = server.sockets[0].getsockname()
    print(f"Listening on http://{bound[0]}:{bound[1]}", flush=True)  # port 0 picks a free one
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", choices=("bare", "inline", "task"), default="task")
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port, args.mode))


if __name__ == "__main__":
    main()
