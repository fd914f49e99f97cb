"""WebSocketSession against a websockets ClientProtocol peer: bytes only, no sockets, no loop."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from fastgate.errors import ClientDisconnected, LocalProtocolError
from fastgate.http.events import RequestHead, UpgradeRequest
from fastgate.http.h1 import H1Connection
from fastgate.ws.session import SessionState, WebSocketSession, deflate_factory, offered_subprotocols


def parse_head(raw: bytes) -> RequestHead:
    """The upgrade request as fastgate's HTTP layer hands it to the session."""
    conn = H1Connection()
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, UpgradeRequest) and event.remainder == b"", event
    return event.head


def changed(head: RequestHead, *, headers: list[tuple[bytes, bytes]] | None = None, target: bytes | None = None,
            version: str | None = None) -> RequestHead:
    """A head as the HTTP layer could have produced it, with some parts replaced."""
    return RequestHead(head.method, target or head.target, head.raw_path, head.query_string,
                       version or head.http_version, head.headers if headers is None else headers,
                       head.keep_alive, head.expect_continue, head.upgrade, head.forwarded)


class Pair:
    """A client protocol and a server session wired by hand: ``to_server`` / ``to_client`` move bytes."""

    def __init__(self, *, subprotocols: list[str] | None = None, client_deflate: bool = False,
                 server_deflate: bool = False, max_size: int | None = 1 << 20) -> None:
        self.client = ClientProtocol(
            parse_uri("ws://example.test/chat?x=1"),
            subprotocols=subprotocols,  # type: ignore[arg-type]
            extensions=[ClientPerMessageDeflateFactory()] if client_deflate else None,
            max_size=None,
        )
        self.request = self.client.connect()
        self.session = WebSocketSession(max_size=max_size, extensions=[deflate_factory()] if server_deflate else [])
        self.eof_to_client = False

    def handshake_ok(self) -> bool:
        self.client.send_request(self.request)
        raw = b"".join(self.client.data_to_send())
        return self.session.receive_request(parse_head(raw))

    def to_server(self) -> None:
        for data in self.client.data_to_send():
            if data:
                self.session.receive_data(data)
            else:
                self.session.receive_eof()

    def to_client(self) -> list[object]:
        for data in self.session.data_to_send():
            if data:
                self.client.receive_data(data)
            else:
                self.eof_to_client = True
                self.client.receive_eof()
        return self.client.events_received()

    def open(self, **accept: object) -> Response:
        assert self.handshake_ok()
        self.session.accept(**accept)  # type: ignore[arg-type]
        events = self.to_client()
        response = events[0]
        assert isinstance(response, Response) and response.status_code == 101
        assert self.client.state is State.OPEN
        return response


def frames(events: list[object]) -> list[tuple[Opcode, bytes]]:
    return [(e.opcode, bytes(e.data)) for e in events if isinstance(e, Frame)]


# --------------------------------------------------------------------- handshake


def test_accept_then_text_and_binary_both_ways():
    pair = Pair()
    response = pair.open()
    assert response.headers["Sec-WebSocket-Accept"]
    session, client = pair.session, pair.client
    assert session.state is SessionState.OPEN and session.is_open
    client.send_text("héllo".encode())
    client.send_binary(b"\x00\xff")
    pair.to_server()
    assert session.events_received() == [
        {"type": "websocket.receive", "text": "héllo"},
        {"type": "websocket.receive", "bytes": b"\x00\xff"},
    ]
    session.send_text("back")
    session.send_bytes(b"\x01")
    assert frames(pair.to_client()) == [(Opcode.TEXT, b"back"), (Opcode.BINARY, b"\x01")]


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        (b"sec-websocket-key", b"not base64!", 400),
        (b"sec-websocket-key", b"c2hvcnQ=", 400),  # decodes to 5 bytes, not 16
        (b"sec-websocket-version", b"8", 426),
    ],
)
def test_bad_handshake_is_answered_without_the_app(header, value, status):
    pair = Pair()
    pair.client.send_request(pair.request)
    head = parse_head(b"".join(pair.client.data_to_send()))
    headers = [(n, value if n == header else v) for n, v in head.headers]
    assert pair.session.receive_request(changed(head, headers=headers)) is False
    out = pair.session.data_to_send()
    assert out[-1] == b""  # then half-close
    head = out[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 %d " % status)
    assert b"\r\nsec-websocket-version: 13" in head
    assert pair.session.state is SessionState.CLOSED
    assert pair.session.close_expected()
    with pytest.raises(ClientDisconnected):
        pair.session.accept()


def test_missing_key_is_400():
    pair = Pair()
    pair.client.send_request(pair.request)
    head = parse_head(b"".join(pair.client.data_to_send()))
    headers = [(n, v) for n, v in head.headers if n != b"sec-websocket-key"]
    assert pair.session.receive_request(changed(head, headers=headers)) is False
    assert pair.session.data_to_send()[0].startswith(b"HTTP/1.1 400 ")


def test_non_ascii_target_is_accepted():
    pair = Pair()
    pair.client.send_request(pair.request)
    head = parse_head(b"".join(pair.client.data_to_send()))
    assert pair.session.receive_request(changed(head, target="/café".encode())) is True


def test_subprotocol_and_extra_headers():
    pair = Pair(subprotocols=["chat", "superchat"])
    assert pair.handshake_ok()
    assert pair.session.subprotocols == ["chat", "superchat"]
    pair.session.accept("superchat", [(b"x-extra", b"1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])
    response = pair.to_client()[0]
    assert isinstance(response, Response)
    assert pair.client.subprotocol == "superchat"
    assert response.headers["X-Extra"] == "1"
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_invalid_accept_header_is_refused():
    pair = Pair()
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.accept(None, [(b"x-bad", b"a\r\nb")])


def test_reject_sends_status_headers_and_body_then_eof():
    pair = Pair()
    assert pair.handshake_ok()
    pair.session.reject(418, [(b"content-type", b"text/plain"), (b"content-length", b"999")], b"teapot")
    out = pair.session.data_to_send()
    assert out[-1] == b""
    head, _, body = out[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 418 I'm a Teapot") or head.startswith(b"HTTP/1.1 418 ")
    assert b"Content-Length: 6" in head and b"999" not in head
    assert b"Connection: close" in head
    assert body == b"teapot"
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    with pytest.raises(ClientDisconnected):
        pair.session.send_text("x")


@pytest.mark.parametrize("status", [101, 99, 600, "403"])
def test_reject_refuses_invalid_status(status):
    pair = Pair()
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.reject(status)


def test_accept_twice_is_a_local_error():
    pair = Pair()
    pair.open()
    with pytest.raises(LocalProtocolError):
        pair.session.accept()


def test_send_before_accept_is_a_local_error():
    pair = Pair()
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.send_text("early")


def test_bytes_before_accept_are_kept_and_answered_after_the_101():
    pair = Pair()
    assert pair.handshake_ok()
    # A client that pipelines frames right behind its handshake (masked, as clients must).
    early = Frame(Opcode.TEXT, b"early").serialize(mask=True, extensions=[])
    ping = Frame(Opcode.PING, b"p1").serialize(mask=True, extensions=[])
    pair.session.receive_data(early + ping)
    assert pair.session.pending_size == len(early + ping)
    assert pair.session.data_to_send() == []  # nothing may precede the 101
    assert pair.session.events_received() == []
    pair.session.accept()
    out = pair.session.data_to_send()
    assert out[0].startswith(b"HTTP/1.1 101 ")
    assert pair.session.events_received() == [{"type": "websocket.receive", "text": "early"}]
    pair.client.receive_data(b"".join(out))
    assert frames(pair.client.events_received()) == [(Opcode.PONG, b"p1")]


def test_eof_before_accept_disconnects():
    pair = Pair()
    assert pair.handshake_ok()
    pair.session.receive_eof()
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    with pytest.raises(ClientDisconnected):
        pair.session.accept()


def test_fail_during_handshake_answers_503():
    pair = Pair()
    assert pair.handshake_ok()
    pair.session.fail(1012, "restart")
    assert pair.session.data_to_send()[0].startswith(b"HTTP/1.1 503 ")
    assert pair.session.events_received()[-1] == {"type": "websocket.disconnect", "code": 1012, "reason": "restart"}


# --------------------------------------------------------------------- messages


def test_fragmented_message_with_interleaved_pings():
    pair = Pair()
    pair.open()
    client = pair.client
    client.send_text(b"hel", fin=False)
    client.send_ping(b"a")
    client.send_continuation(b"lo ", fin=False)
    client.send_ping(b"b")
    client.send_continuation("wörld".encode(), fin=True)
    client.send_binary(b"\x01", fin=False)
    client.send_continuation(b"\x02", fin=True)
    pair.to_server()
    assert pair.session.events_received() == [
        {"type": "websocket.receive", "text": "hello wörld"},
        {"type": "websocket.receive", "bytes": b"\x01\x02"},
    ]
    assert frames(pair.to_client()) == [(Opcode.PONG, b"a"), (Opcode.PONG, b"b")]


def test_text_split_inside_a_utf8_sequence_across_fragments():
    pair = Pair()
    pair.open()
    data = "é".encode()
    pair.client.send_text(data[:1], fin=False)
    pair.client.send_continuation(data[1:], fin=True)
    pair.to_server()
    assert pair.session.events_received() == [{"type": "websocket.receive", "text": "é"}]


def test_byte_by_byte_feeding():
    pair = Pair()
    pair.open()
    pair.client.send_text(b"slowly")
    for byte in b"".join(pair.client.data_to_send()):
        pair.session.receive_data(bytes((byte,)))
    assert pair.session.events_received() == [{"type": "websocket.receive", "text": "slowly"}]


def test_oversized_message_closes_1009():
    pair = Pair(max_size=1000)
    pair.open()
    pair.client.send_binary(b"x" * 1001)
    pair.to_server()
    assert pair.session.events_received() == [
        {"type": "websocket.disconnect", "code": 1009, "reason": "frame with 1001 bytes exceeds limit of 1000 bytes"}
    ]
    events = pair.to_client()
    assert pair.client.close_rcvd is not None and pair.client.close_rcvd.code == 1009
    assert frames(events)[0][0] is Opcode.CLOSE
    assert pair.eof_to_client


def test_oversized_fragmented_message_closes_1009():
    pair = Pair(max_size=1000)
    pair.open()
    pair.client.send_binary(b"x" * 600, fin=False)
    pair.client.send_continuation(b"x" * 600, fin=True)
    pair.to_server()
    assert pair.session.events_received()[0]["code"] == 1009


def test_invalid_utf8_closes_1007():
    pair = Pair()
    pair.open()
    pair.client.send_text(b"ok\xff")
    pair.client.send_text(b"never delivered")
    pair.to_server()
    events = pair.session.events_received()
    assert len(events) == 1 and events[0]["type"] == "websocket.disconnect" and events[0]["code"] == 1007
    pair.to_client()
    assert pair.client.close_rcvd is not None and pair.client.close_rcvd.code == 1007


def test_unmasked_client_frame_closes_1002():
    pair = Pair()
    pair.open()
    pair.session.receive_data(Frame(Opcode.TEXT, b"bare").serialize(mask=False, extensions=[]))
    assert pair.session.events_received() == [
        {"type": "websocket.disconnect", "code": 1002, "reason": "incorrect masking"}
    ]
    pair.to_client()
    assert pair.client.close_rcvd is not None and pair.client.close_rcvd.code == 1002


def test_client_close_with_code_and_reason():
    pair = Pair()
    pair.open()
    pair.client.send_close(4001, "client leaving")
    pair.to_server()
    assert pair.session.events_received() == [
        {"type": "websocket.disconnect", "code": 4001, "reason": "client leaving"}
    ]
    pair.to_client()  # the echo, then EOF
    assert pair.client.close_rcvd == Close(4001, "client leaving")
    assert pair.eof_to_client and pair.session.close_expected()
    with pytest.raises(ClientDisconnected):
        pair.session.send_text("late")
    with pytest.raises(OSError):
        pair.session.send_bytes(b"late")


def test_client_close_without_code_is_1005():
    pair = Pair()
    pair.open()
    pair.client.send_close()
    pair.to_server()
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1005, "reason": ""}]


def test_server_close_with_code_and_reason():
    pair = Pair()
    pair.open()
    pair.session.close(4000, "bye")
    assert pair.session.events_received() == []  # the app hears of it when the client answers
    pair.to_client()
    assert pair.client.close_rcvd == Close(4000, "bye")
    pair.to_server()  # the client's echo
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 4000, "reason": "bye"}]
    assert pair.eof_to_client is True or pair.to_client() is not None
    with pytest.raises(ClientDisconnected):
        pair.session.close()


def test_server_close_validates_code_and_reason():
    pair = Pair()
    pair.open()
    with pytest.raises(LocalProtocolError):
        pair.session.close(1005)  # reserved: never sent on the wire
    with pytest.raises(LocalProtocolError):
        pair.session.close(1000, "x" * 124)


def test_shutdown_close_tells_the_app_at_once():
    pair = Pair()
    pair.open()
    pair.session.close(1012, "server restart", by_app=False)
    assert pair.session.events_received() == [
        {"type": "websocket.disconnect", "code": 1012, "reason": "server restart"}
    ]
    pair.to_client()
    assert pair.client.close_rcvd is not None and pair.client.close_rcvd.code == 1012


def test_connection_lost_disconnects_once_with_1006():
    pair = Pair()
    pair.open()
    pair.session.connection_lost()
    pair.session.connection_lost()
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    with pytest.raises(ClientDisconnected):
        pair.session.send_text("x")


def test_eof_without_close_is_1006():
    pair = Pair()
    pair.open()
    pair.session.receive_eof()
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    assert pair.session.data_to_send() == [b""]


def test_keepalive_ping_and_pong():
    pair = Pair()
    pair.open()
    payload = pair.session.ping()
    assert pair.session.pong_pending
    assert frames(pair.to_client()) == [(Opcode.PING, payload)]
    pair.to_server()  # the client answered automatically
    assert not pair.session.pong_pending
    # An unsolicited pong with other data acknowledges nothing.
    pair.session.ping()
    pair.client.send_pong(b"nope")
    pair.to_server()
    assert pair.session.pong_pending


def test_fail_1011_sends_close_and_eof_and_disconnects():
    pair = Pair()
    pair.open()
    pair.session.fail(1011, "keepalive ping timeout")
    assert pair.session.events_received() == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}
    ]
    pair.to_client()
    assert pair.client.close_rcvd == Close(1011, "keepalive ping timeout")
    assert pair.eof_to_client


def test_data_after_close_is_ignored():
    pair = Pair()
    pair.open()
    pair.client.send_close(1000)
    pair.to_server()
    pair.to_client()
    pair.session.receive_eof()
    pair.session.receive_data(b"garbage after the end")
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]


# --------------------------------------------------------------------- permessage-deflate


def test_deflate_negotiated_with_memory_conscious_parameters():
    pair = Pair(client_deflate=True, server_deflate=True)
    response = pair.open()
    offer = response.headers["Sec-WebSocket-Extensions"]
    assert offer.startswith("permessage-deflate")
    assert "server_no_context_takeover" in offer
    assert "server_max_window_bits=12" in offer
    message = "compress me " * 1000
    pair.client.send_text(message.encode())
    pair.to_server()
    assert pair.session.events_received() == [{"type": "websocket.receive", "text": message}]
    pair.session.send_text(message)
    out = pair.session.data_to_send()
    assert sum(map(len, out)) < len(message) // 10  # it really is compressed
    pair.client.receive_data(b"".join(out))
    assert frames(pair.client.events_received()) == [(Opcode.TEXT, message.encode())]


def test_no_deflate_when_disabled():
    pair = Pair(client_deflate=True, server_deflate=False)
    response = pair.open()
    assert "Sec-WebSocket-Extensions" not in response.headers


# --------------------------------------------------------------------- edge cases


def _raw_request(pair: Pair) -> RequestHead:
    pair.client.send_request(pair.request)
    return parse_head(b"".join(pair.client.data_to_send()))


def test_the_head_is_taken_as_parsed_beyond_websockets_own_limits():
    # The HTTP layer's limits decide (--limit-request-field-size may be raised above
    # websockets' 8192-byte lines): the head is not serialised and parsed again.
    pair = Pair()
    head = _raw_request(pair)
    assert pair.session.receive_request(changed(head, headers=[*head.headers, (b"x-big", b"v" * 9000)])) is True
    pair.session.accept()
    assert isinstance(pair.to_client()[0], Response) and pair.client.state is State.OPEN


@pytest.mark.parametrize("body", [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")])
def test_a_handshake_with_a_body_is_400(body):
    pair = Pair()
    head = _raw_request(pair)
    assert pair.session.receive_request(changed(head, headers=[*head.headers, body])) is False
    out = pair.session.data_to_send()
    assert out[0].startswith(b"HTTP/1.1 400 ") and b"Invalid WebSocket handshake request" in out[0]
    assert out[-1] == b"" and pair.session.state is SessionState.CLOSED


def test_an_empty_content_length_is_no_body():
    pair = Pair()
    head = _raw_request(pair)
    assert pair.session.receive_request(changed(head, headers=[*head.headers, (b"content-length", b"0")])) is True


def test_http_10_upgrade_is_refused():
    pair = Pair()
    head = _raw_request(pair)
    assert pair.session.receive_request(changed(head, version="1.0")) is False
    assert pair.session.data_to_send()[0].startswith(b"HTTP/1.1 505 ")


def test_offered_subprotocols_are_read_once_in_order():
    headers = [(b"sec-websocket-protocol", b"chat, superchat"), (b"x", b"y"), (b"sec-websocket-protocol", b" x ,,")]
    assert offered_subprotocols(headers) == ["chat", "superchat", "x"]
    assert offered_subprotocols([]) == []


def test_subprotocol_must_be_a_string():
    pair = Pair(subprotocols=["chat"])
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.accept(b"chat")  # type: ignore[arg-type]


def test_reject_with_an_unregistered_status():
    pair = Pair()
    assert pair.handshake_ok()
    pair.session.reject(499, body=b"client closed request")
    assert pair.session.data_to_send()[0].startswith(b"HTTP/1.1 499 \r\n")


# --------------------------------------------------------------------- hardening


@pytest.mark.parametrize(
    "headers",
    [[(b"x-bad", b"a\r\nset-cookie: evil")], [(b"x-bad", b"a\nb")], [(b"x-bad", b"a\x00b")], [(b"x bad", b"v")],
     [(b"x-bad\r\n", b"v")], [("x-str", b"v")], [(b"x-str", "v")], [(b"x",)], [b"xy"], 5],
)
def test_an_invalid_accept_leaves_the_handshake_answerable(headers):
    pair = Pair()
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.accept(None, headers)
    assert pair.session.handshake_pending
    pair.session.reject(500)  # what the cycle does next: a clean 500, nothing of the bad header
    out = b"".join(pair.session.data_to_send())
    assert out.startswith(b"HTTP/1.1 500 ") and b"evil" not in out and b"x-bad" not in out.lower()


@pytest.mark.parametrize("subprotocol", ["two words", "a\r\nb: c", "", "chat\x00", "é", "other"])
def test_an_invalid_or_unoffered_subprotocol_is_refused(subprotocol):
    pair = Pair(subprotocols=["chat", "other-one"])
    assert pair.handshake_ok()
    with pytest.raises(LocalProtocolError):
        pair.session.accept(subprotocol)
    assert pair.session.handshake_pending


def test_an_invalid_denial_leaves_the_handshake_answerable():
    pair = Pair()
    assert pair.handshake_ok()
    for status, headers, body in [(200, [(b"x", b"a\rb")], b""), (True, [], b""), (200, [], "text")]:
        with pytest.raises(LocalProtocolError):
            pair.session.reject(status, headers, body)
        assert pair.session.handshake_pending
    pair.session.reject(HTTPStatus.FORBIDDEN, [(b"x-ok", b"1")], b"no")  # an int subclass is a status
    assert pair.session.data_to_send()[0].startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_close_between_fragments_is_a_normal_close():
    # RFC 6455 §5.4: control frames may be injected between fragments; §5.5.1: a Close is
    # answered with a Close. The unfinished message is dropped.
    pair = Pair()
    pair.open()
    pair.client.send_text(b"unfin", fin=False)
    pair.client.send_continuation(b"ished", fin=False)
    pair.client.send_close(1000, "bye")
    pair.to_server()
    assert pair.session.events_received() == [{"type": "websocket.disconnect", "code": 1000, "reason": "bye"}]
    events = pair.to_client()
    assert frames(events) == [(Opcode.CLOSE, Close(1000, "bye").serialize())]
    assert pair.eof_to_client


def test_empty_continuation_frames_are_charged_against_max_size():
    pair = Pair(max_size=64 * 1024)
    pair.open()
    pair.client.send_binary(b"", fin=False)
    wire = b"".join(pair.client.data_to_send())
    pair.session.receive_data(wire)
    pair.client.send_continuation(b"", fin=False)
    frame = b"".join(pair.client.data_to_send())
    sent = 0
    while not pair.session.disconnected and sent < 10_000:
        pair.session.receive_data(frame * 100)
        sent += 100
    events = pair.session.events_received()
    assert events[-1]["type"] == "websocket.disconnect" and events[-1]["code"] == 1009
    assert 64 * 1024 // 64 - 100 <= sent <= 64 * 1024 // 64 + 100  # stopped at the budget, not at the end
    assert len(pair.session._fragments) == 0  # released


def test_many_small_fragments_within_the_budget_are_reassembled():
    pair = Pair(max_size=1 << 20)
    pair.open()
    pair.client.send_binary(b"a" * 64, fin=False)
    for _ in range(999):
        pair.client.send_continuation(b"a" * 64, fin=False)
    pair.client.send_continuation(b"", fin=True)
    pair.to_server()
    assert pair.session.events_received() == [{"type": "websocket.receive", "bytes": b"a" * 64_000}]
