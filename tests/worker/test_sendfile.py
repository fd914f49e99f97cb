"""send_file_zero_copy on a real uvloop transport: order after buffered bytes, zero copy
(os.sendfile), a peer that leaves, a file that ends early."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastgate.worker import protocol
from fastgate.worker.protocol import send_file_zero_copy

MIB = 1024 * 1024


class Keeper(asyncio.Protocol):
    def __init__(self, made: asyncio.Future[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.set_result(transport)  # type: ignore[arg-type]


def run(scenario: Any) -> Any:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[asyncio.Transport] = loop.create_future()
        server = await loop.create_server(lambda: Keeper(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            transport = await made
            return await scenario(loop, transport, client)
        finally:
            client.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def reader(client: socket.socket, total: int, out: list[bytes]) -> threading.Thread:
    def read() -> None:
        data = bytearray()
        while len(data) < total:
            chunk = client.recv(MIB)
            if not chunk:
                break
            data += chunk
        out.append(bytes(data))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_file_follows_what_the_transport_buffered_and_goes_through_sendfile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(8 * MIB)
    (tmp_path / "f").write_bytes(payload)
    calls: list[int] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(protocol.os, "sendfile", spy)
    head = b"H" * (4 * MIB)  # more than the socket takes at once: the transport buffers part of it

    async def scenario(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, client: socket.socket) -> Any:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        transport.write(head)
        assert transport.get_write_buffer_size() > 0
        out: list[bytes] = []
        thread = reader(client, len(head) + len(payload), out)
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            sent = await send_file_zero_copy(transport, loop, fd, len(payload), lambda: False,
                                             lambda: progress.append(1))
        finally:
            os.close(fd)
        await loop.run_in_executor(None, thread.join, 30)
        return sent, out[0]

    progress: list[int] = []
    sent, received = run(scenario)
    assert sent == len(payload)
    assert 0 < len(progress) <= len(calls)  # calls that sent bytes are progress (the idle deadline)
    assert received == head + payload
    assert calls  # the bytes went through the kernel's sendfile, not through Python


def test_file_that_ends_early_returns_what_was_sent(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")

    async def scenario(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, client: socket.socket) -> Any:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            sent = await send_file_zero_copy(transport, loop, fd, 10, lambda: False)
        finally:
            os.close(fd)
        return sent, await loop.run_in_executor(None, client.recv, 100)

    assert run(scenario) == (3, b"abc")


def test_peer_that_resets_stops_the_send(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.truncate(64 * MIB)
    dups: list[int] = []
    closed: list[int] = []
    real_dup, real_close = os.dup, os.close

    def dup(fd: int) -> int:
        dups.append(real_dup(fd))
        return dups[-1]

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(protocol.os, "dup", dup)
    monkeypatch.setattr(protocol.os, "close", close)

    async def scenario(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, client: socket.socket) -> Any:
        fd = os.open(tmp_path / "f", os.O_RDONLY)

        def leave() -> None:
            client.recv(MIB)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            client.close()

        loop.call_later(0.05, lambda: loop.run_in_executor(None, leave))
        try:
            return await asyncio.wait_for(send_file_zero_copy(transport, loop, fd, 64 * MIB, lambda: False), 30)
        finally:
            real_close(fd)

    sent = run(scenario)
    assert 0 < sent < 64 * MIB
    assert len(dups) == 1 and closed == dups  # the socket's duplicate is closed


def test_gone_connection_sends_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")

    async def scenario(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, client: socket.socket) -> Any:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            return await send_file_zero_copy(transport, loop, fd, 3, lambda: True)
        finally:
            os.close(fd)

    assert run(scenario) == 0
