"""A raw-socket WebSocket client for tests that need to break the rules (no library in between)."""

from __future__ import annotations

import base64
import os
import socket
import struct

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(path: str = "/echo", *, extra: str = "", key: str | None = KEY, version: str = "13") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", "Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version:
        lines.append(f"Sec-WebSocket-Version: {version}")
    head = "\r\n".join(lines) + "\r\n" + extra + "\r\n"
    return head.encode("latin-1")


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """Serialise one frame; clients must mask (RFC 6455 §5.3), so ``mask=False`` is a violation."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


class RawClient:
    """Reads the handshake response and then server frames from a connected socket."""

    opened: list[RawClient] = []  # closed by the tests' autouse fixture

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        RawClient.opened.append(self)

    @classmethod
    def close_all(cls) -> None:
        while cls.opened:
            cls.opened.pop().sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    def read_head(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-cased names), and the body if Content-Length says so."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        body = b""
        if status != 101 and "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return status, headers, body

    def read_frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next server frame (servers never mask)."""
        while len(self.buf) < 2:
            self._fill()
        first, second = self.buf[0], self.buf[1]
        assert not second & 0x80, "server frames must not be masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            while len(self.buf) < 4:
                self._fill()
            length, offset = struct.unpack("!H", self.buf[2:4])[0], 4
        elif length == 127:
            while len(self.buf) < 10:
                self._fill()
            length, offset = struct.unpack("!Q", self.buf[2:10])[0], 10
        while len(self.buf) < offset + length:
            self._fill()
        payload = bytes(self.buf[offset : offset + length])
        del self.buf[: offset + length]
        return first & 0x0F, bool(first & 0x80), payload

    def read_until(self, opcode: int) -> tuple[list[tuple[int, bytes]], bytes]:
        """Frames up to the first one with ``opcode``; returns (frames before, its payload)."""
        before = []
        while True:
            op, _, payload = self.read_frame()
            if op == opcode:
                return before, payload
            before.append((op, payload))

    def read_close(self) -> tuple[int, str]:
        _, payload = self.read_until(CLOSE)
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return code, payload[2:].decode()

    def at_eof(self) -> bool:
        try:
            self._fill()
        except EOFError:
            return True
        return False


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()
