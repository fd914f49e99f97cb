"""Property-based fuzzing of WebSocketSession with client frames, valid and hostile.

After a valid handshake and ``accept()``, hypothesis feeds the session a stream of client
frames: text (valid and invalid UTF-8) and binary messages, fragmented messages with control
frames between the fragments, pings, pongs, closes with valid and invalid codes, oversized
lengths, bad opcodes, reserved bits, unmasked frames, random bytes, then mutations of it
all, cut at random split points. After every call the test flushes ``data_to_send()`` as the
adapter does (fastgate/worker/websocket.py) into a websockets ``ClientProtocol`` peer, and
the app sends, closes or pings in between. Properties:

* no exception escapes ``receive_data`` / ``receive_eof`` / ``connection_lost`` /
  ``data_to_send`` / ``events_received``; the app's calls fail only with
  ClientDisconnected, and only once the connection is no longer open;
* at most one ``websocket.disconnect``, and nothing after it; ``disconnected`` says so;
* messages delivered are whole: text decodes, nothing is larger than ``max_size``;
* what the server writes is a valid server stream: the client peer parses it without a
  protocol error, frames are unmasked, no data frame or second Close follows the server's
  Close frame and nothing its EOF,
  and every close code sent is one RFC 6455 §7.4 lets an endpoint send.
"""

from __future__ import annotations

import struct
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets import frames as ws_frames
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import EXTERNAL_CLOSE_CODES, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from fastgate.errors import ClientDisconnected
from fastgate.ws.session import WebSocketSession, deflate_factory
from tests.http.grammar import mutate, pick, split
from tests.ws.test_session import parse_head

pytestmark = pytest.mark.fuzz

MAX_SIZE = 256  # small, so that hypothesis reaches the 1009 path with small inputs
CLOSE_CODES = [1000, 1001, 4000, 3000, 4999, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535, 0]
BAD_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


def legal_close_code(code: int) -> bool:
    # RFC 6455 §7.4.1-2: 1005, 1006, 1015 are never sent; 1004 and 1016-2999 are reserved.
    return code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999


# ------------------------------------------------------------------ client frames


def raw_frame(draw: st.DrawFn, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
              mask: bool = True, length: int | None = None) -> bytes:
    """A frame websockets would refuse to serialise (reserved bits, bad opcode, lies)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    key = draw(st.binary(min_size=4, max_size=4))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(draw: st.DrawFn) -> bytes:
    kind = pick(draw, ["code", "code+reason", "empty", "one-byte", "bad-utf8", "long-reason"])
    code = pick(draw, CLOSE_CODES)
    if kind == "empty":
        return b""
    if kind == "one-byte":
        return b"\x03"
    reason = {"code": b"", "code+reason": "bye é".encode(), "bad-utf8": b"\xff\xfe",
              "long-reason": b"r" * 124}[kind]
    return struct.pack("!H", code) + reason


def control(draw: st.DrawFn) -> Frame:
    kind = pick(draw, ["ping", "pong", "close"])
    if kind == "close":
        payload = close_payload(draw)
        return Frame(Opcode.CLOSE, payload[:125])
    return Frame(Opcode.PING if kind == "ping" else Opcode.PONG, draw(st.binary(max_size=125)))


def message_payload(draw: st.DrawFn, text: bool) -> bytes:
    if text and pick(draw, [True, False]):
        return draw(st.text(max_size=40)).encode("utf-8")
    return draw(st.binary(max_size=pick(draw, [40, MAX_SIZE + 40])))


def client_frames(draw: st.DrawFn) -> bytes:
    """One unit of the client's stream: a frame, a fragmented message, or something broken."""
    kind = pick(draw, ["text", "binary", "fragmented", "control", "close", "bad-opcode", "rsv", "unmasked",
                       "huge-length", "long-control", "fragmented-control", "cont-alone", "random"])
    if kind in ("text", "binary"):
        opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
        return Frame(opcode, message_payload(draw, kind == "text")).serialize(mask=True)
    if kind == "fragmented":
        text = pick(draw, [True, False])
        payload = message_payload(draw, text)
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        out = []
        for index, part in enumerate(parts):
            opcode = (Opcode.TEXT if text else Opcode.BINARY) if index == 0 else Opcode.CONT
            out.append(Frame(opcode, part, fin=index == len(parts) - 1).serialize(mask=True))
            if pick(draw, [False, True]):  # a control frame between fragments (RFC 6455 §5.4)
                out.append(control(draw).serialize(mask=True))
        if pick(draw, [False, False, True]):
            out.pop()  # the message never finishes
        return b"".join(out)
    if kind == "control":
        return control(draw).serialize(mask=True)
    if kind == "close":
        return raw_frame(draw, 8, close_payload(draw))
    if kind == "bad-opcode":
        return raw_frame(draw, pick(draw, BAD_OPCODES), draw(st.binary(max_size=10)))
    if kind == "rsv":
        return raw_frame(draw, pick(draw, [1, 2, 9]), draw(st.binary(max_size=10)), rsv=pick(draw, [4, 2, 1, 7]))
    if kind == "unmasked":
        return raw_frame(draw, pick(draw, [1, 2, 9, 8]), b"hi", mask=False)
    if kind == "huge-length":
        length = pick(draw, [MAX_SIZE + 1, 1 << 16, 1 << 40, (1 << 63) - 1])
        return raw_frame(draw, pick(draw, [2, 1, 0]), b"", length=length)
    if kind == "long-control":
        return raw_frame(draw, pick(draw, [9, 10, 8]), b"\x03\xe8" + b"x" * 124)
    if kind == "fragmented-control":
        return raw_frame(draw, pick(draw, [9, 10, 8]), b"", fin=False)
    if kind == "cont-alone":
        return raw_frame(draw, 0, b"orphan", fin=pick(draw, [True, False]))
    return draw(st.binary(max_size=30))


@st.composite
def client_streams(draw: st.DrawFn) -> bytes:
    with mock.patch.object(ws_frames, "secrets", _Secrets(draw)):
        data = b"".join(client_frames(draw) for _ in range(draw(st.integers(1, 6))))
    if pick(draw, [False, False, True]):
        data = mutate(draw, data, 3)
    return data


class _Secrets:
    """websockets masks with ``secrets.token_bytes``: draw the keys, so examples replay exactly."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def token_bytes(self, n: int) -> bytes:
        return bytes(self.draw(st.binary(min_size=n, max_size=n)))


# ------------------------------------------------------------------ the server's side of the wire


class ServerStream:
    """What the server wrote, read the way a client reads it; asserts it is a valid stream."""

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self.raw = bytearray()
        self.offset = -1  # where frames start (after the 101 head), -1 until it arrived
        self.eof = False
        self.close_code: int | None = None
        self.frames = 0
        self.peer_eof = False  # the client sent EOF (or vanished) before any close

    def take(self, session: WebSocketSession) -> None:
        for data in session.data_to_send():
            assert not self.eof, "bytes after the server's EOF"
            if data:
                self.raw += data
                self.client.receive_data(data)
            else:
                self.eof = True
                self.client.receive_eof()
        self._frames()
        for got in self.client.events_received():
            assert isinstance(got, (Response, Frame)), got
        exc = self.client.parser_exc
        if isinstance(exc, EOFError) and self.peer_eof and self.close_code is None:
            return  # the client's own EOF came first: the server half-closes without a Close frame
        assert exc is None, f"the client could not read the server: {exc!r}"

    def _frames(self) -> None:
        raw = self.raw
        if self.offset < 0:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            assert raw.startswith(b"HTTP/1.1 101 ")
            self.offset = end + 4
        while len(raw) - self.offset >= 2:
            at = self.offset
            first, second = raw[at], raw[at + 1]
            assert not second & 0x80, "a masked frame from the server (RFC 6455 §5.1)"
            length, at = second & 0x7F, at + 2
            if length >= 126:
                size = 2 if length == 126 else 8
                if len(raw) - at < size:
                    return
                length, at = int.from_bytes(raw[at : at + size], "big"), at + size
            if len(raw) - at < length:
                return
            payload = bytes(raw[at : at + length])
            self.offset = at + length
            opcode = first & 0x0F
            # RFC 6455 §5.5.1: no data frame after a Close, and one Close only. A Pong may
            # still answer a Ping (§5.5.2 requires it until a Close was *received*).
            assert self.close_code is None or opcode == Opcode.PONG, f"frame {opcode} after the server's Close"
            self.frames += 1
            if opcode == Opcode.CLOSE:
                assert len(payload) != 1
                code = int.from_bytes(payload[:2], "big") if payload else 1000
                assert legal_close_code(code), f"the server sent close code {code}"
                payload[2:].decode("utf-8")
                self.close_code = code


# ------------------------------------------------------------------ the test


def open_session(deflate: bool) -> tuple[ClientProtocol, WebSocketSession, ServerStream]:
    client = ClientProtocol(parse_uri("ws://example.test/fuzz"), max_size=None,
                            extensions=[ClientPerMessageDeflateFactory()] if deflate else None)
    client.send_request(client.connect())
    session = WebSocketSession(max_size=MAX_SIZE, extensions=[deflate_factory()] if deflate else [])
    assert session.receive_request(parse_head(b"".join(client.data_to_send())))
    session.accept()
    stream = ServerStream(client)
    stream.take(session)
    assert stream.offset > 0 and session.is_open
    return client, session, stream


class App:
    """Collects the session's ASGI messages and checks the disconnect rules."""

    def __init__(self, session: WebSocketSession) -> None:
        self.session = session
        self.disconnect: dict[str, Any] | None = None
        self.received = 0

    def collect(self) -> None:
        for message in self.session.events_received():
            assert self.disconnect is None, f"{message} after {self.disconnect}"
            if message["type"] == "websocket.disconnect":
                assert isinstance(message["code"], int) and 1000 <= message["code"] <= 4999
                self.disconnect = message
            else:
                assert message["type"] == "websocket.receive"
                assert ("text" in message) != ("bytes" in message)
                data = message["bytes"] if "bytes" in message else message["text"].encode("utf-8")
                assert len(data) <= MAX_SIZE
                self.received += 1
        assert self.session.disconnected is (self.disconnect is not None)
        if self.disconnect is not None:
            assert not self.session.is_open

    def act(self, draw: st.DrawFn) -> None:
        action = pick(draw, ["nothing", "nothing", "text", "bytes", "close", "ping"])
        if action == "nothing":
            return
        was_open = self.session.is_open
        try:
            if action == "text":
                self.session.send_text("from the app é")
            elif action == "bytes":
                self.session.send_bytes(b"\x00\x01")
            elif action == "close":
                self.session.close(pick(draw, [1000, 4000, 1001]), "app")
            elif was_open:  # the adapter pings only an open session (ping() itself does not check)
                self.session.ping()
        except ClientDisconnected:
            assert not was_open, f"{action} refused on an open connection"


@given(st.data())
def test_client_frames(data: st.DataObject) -> None:
    draw = data.draw
    client, session, stream = open_session(deflate=pick(draw, [False, True]))
    app = App(session)
    for piece in split(draw, draw(client_streams())):
        session.receive_data(piece)
        stream.take(session)
        app.collect()
        if pick(draw, [False, False, False, True]):
            app.act(draw)
            stream.take(session)
            app.collect()
    end = pick(draw, ["nothing", "eof", "lost"])
    stream.peer_eof = end != "nothing"
    if end == "eof":
        session.receive_eof()
    elif end == "lost":
        session.connection_lost()
    stream.take(session)
    app.collect()
    if end != "nothing":
        assert app.disconnect is not None, "the connection ended without websocket.disconnect"
    if stream.close_code is not None or stream.eof:
        assert session.close_expected() or app.disconnect is not None
    session.receive_data(b"\x81\x80" + b"\x00" * 4)  # more after the end changes nothing
    stream.take(session)
    app.collect()


def test_server_stream_checks_can_fail() -> None:
    # The server-side checks above must be able to say no.
    client, session, stream = open_session(deflate=False)
    stream.raw += b"\x88\x02\x03\xed"  # close code 1005: never sent on the wire
    with pytest.raises(AssertionError, match="1005"):
        stream._frames()
    client, session, stream = open_session(deflate=False)
    stream.raw += b"\x81\x81abcdx"  # a masked server frame
    with pytest.raises(AssertionError, match="masked"):
        stream._frames()
    assert not legal_close_code(1004) and not legal_close_code(5000) and legal_close_code(4000)
