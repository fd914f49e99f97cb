"""WebSocket end to end: a real fastgate process (``--workers 0``), the websockets client and raw sockets."""

from __future__ import annotations

import ast
import base64
import hashlib
import signal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.server import read_response
from tests.ws.raw import BINARY, CLOSE, CONT, KEY, PING, PONG, TEXT, RawClient, close_payload, frame, upgrade_request

pytestmark = pytest.mark.e2e

APP = "tests.ws.apps:app"


@pytest.fixture(autouse=True)
def _close_raw_clients(serve):  # depends on serve: sockets close before the server stops
    yield
    RawClient.close_all()


def ws_url(server, path: str) -> str:
    return f"ws://{server.host}:{server.port}{path}"


def raw_open(server, path: str = "/echo", after: bytes = b"") -> RawClient:
    sock = server.connect(timeout=10)
    sock.sendall(upgrade_request(path) + after)
    client = RawClient(sock)
    status, headers, _ = client.read_head()
    assert status == 101, (status, headers)
    return client


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize("ws_option", ["auto", "websockets"])
def test_text_binary_and_1mib_echo_with_websockets_client(serve, ws_option):
    server = serve(APP, "--workers", "0", "--ws", ws_option)
    with connect(ws_url(server, "/echo"), open_timeout=10, close_timeout=10) as ws:
        ws.send("hello, wörld")
        assert ws.recv(timeout=10) == "hello, wörld"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xff"
        big = bytes(range(256)) * 4096  # 1 MiB
        ws.send(big)
        assert ws.recv(timeout=30) == big
        text = "é" * (1 << 19)  # 1 MiB of UTF-8
        ws.send(text)
        assert ws.recv(timeout=30) == text
    server.wait_line(r"app: disconnect 1000 ''")


def test_1mib_message_from_the_server_with_and_without_compression(serve):
    server = serve(APP, "--workers", "0")
    for compression in ("deflate", None):
        with connect(ws_url(server, "/big"), compression=compression, open_timeout=10) as ws:
            assert ws.recv(timeout=30) == b"\xab" * (1 << 20)
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert (extensions is not None) == (compression is not None)


def test_raw_echo_and_bytes_right_after_the_handshake(serve):
    server = serve(APP, "--workers", "0")
    # The first frames travel in the same packet as the upgrade request.
    sock = server.connect(timeout=10)
    sock.sendall(upgrade_request("/echo") + frame(TEXT, b"first") + frame(BINARY, b"\x02second"))
    client = RawClient(sock)
    status, headers, _ = client.read_head()
    assert status == 101
    digest = hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()  # RFC 6455 §4.2.2
    assert headers["sec-websocket-accept"] == base64.b64encode(digest).decode()
    assert client.read_frame() == (TEXT, True, b"first")
    assert client.read_frame() == (BINARY, True, b"\x02second")
    sock.close()


def test_fragmented_messages_with_interleaved_pings(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server)
    client.sock.sendall(
        frame(TEXT, b"frag", fin=False)
        + frame(PING, b"p1")
        + frame(CONT, b"men", fin=False)
        + frame(PING, b"p2")
        + frame(CONT, "ted ✓".encode(), fin=True)
        + frame(BINARY, b"\x01", fin=False)
        + frame(CONT, b"\x02", fin=True)
    )
    assert client.read_frame() == (PONG, True, b"p1")
    assert client.read_frame() == (PONG, True, b"p2")
    assert client.read_frame() == (TEXT, True, "fragmented ✓".encode())
    assert client.read_frame() == (BINARY, True, b"\x01\x02")
    client.sock.close()


def test_scope(serve):
    server = serve(APP, "--workers", "0", "--root-path", "/api")
    with connect(ws_url(server, "/scope?x=%20y"), subprotocols=["one", "two"], open_timeout=10) as ws:
        info = ast.literal_eval(ws.recv(timeout=10))
    assert info["path"] == "/api/scope" and info["raw_path"] == b"/api/scope"  # path includes root_path
    assert info["query_string"] == b"x=%20y"
    assert info["scheme"] == "ws" and info["http_version"] == "1.1" and info["root_path"] == "/api"
    assert info["subprotocols"] == ["one", "two"]
    assert info["extensions"] == ["websocket.http.response"]
    assert info["client"][0] == "127.0.0.1" and info["server"] == ["127.0.0.1", server.port]


def test_subprotocol_negotiation_and_accept_headers(serve):
    server = serve(APP, "--workers", "0")
    with connect(ws_url(server, "/subprotocol"), subprotocols=["chat", "superchat"], open_timeout=10) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response.headers["X-Accept"] == "yes"
        assert ws.response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
        ws.send("still works")
        assert ws.recv(timeout=10) == "still works"


@pytest.mark.parametrize("path", ["/reject", "/return"])
def test_close_before_accept_is_403(serve, path):
    server = serve(APP, "--workers", "0")
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server, path), open_timeout=10)
    assert info.value.response.status_code == 403


def test_denial_response_with_custom_status_and_body(serve):
    server = serve(APP, "--workers", "0")
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server, "/deny?status=418"), open_timeout=10)
    response = info.value.response
    assert response.status_code == 418
    assert response.body == b"denied by the app"
    assert response.headers["X-Denied"] == "1"
    # The same over a raw socket: a complete HTTP response, then the server closes.
    client = RawClient(server.connect(timeout=10))
    client.sock.sendall(upgrade_request("/deny?status=401"))
    status, headers, body = client.read_head()
    assert (status, body, headers["content-length"]) == (401, b"denied by the app", "17")
    assert client.at_eof()


def test_server_close_code_and_reason(serve):
    server = serve(APP, "--workers", "0")
    with connect(ws_url(server, "/close?code=4321&reason=see+you"), open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4321, "see+you")
    server.wait_line(r"app: after close websocket.disconnect 4321")


def test_client_close_code_and_reason(serve):
    server = serve(APP, "--workers", "0")
    with connect(ws_url(server, "/echo"), open_timeout=10, close_timeout=10) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        ws.close(4002, "client done")
        assert ws.close_code == 4002
    server.wait_line(r"app: disconnect 4002 'client done'")


def test_client_close_over_raw_socket_is_echoed_then_eof(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server)
    client.sock.sendall(frame(CLOSE, close_payload(4003, "raw bye")))
    assert client.read_close() == (4003, "raw bye")
    assert client.at_eof()
    server.wait_line(r"app: disconnect 4003 'raw bye'")


def test_dropped_connection_is_disconnect_1006(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server)
    client.sock.sendall(frame(TEXT, b"hi"))
    assert client.read_frame() == (TEXT, True, b"hi")
    client.sock.close()  # no close frame: the TCP connection just ends
    server.wait_line(r"app: disconnect 1006 ''")


# ------------------------------------------------------------------ protocol errors and limits


def test_oversized_message_closes_1009(serve):
    server = serve(APP, "--workers", "0", "--ws-max-size", "1000")
    with connect(ws_url(server, "/echo"), open_timeout=10) as ws:
        ws.send(b"x" * 1000)
        assert ws.recv(timeout=10) == b"x" * 1000
        ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    server.wait_line(r"app: disconnect 1009")


def test_invalid_utf8_closes_1007(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server)
    client.sock.sendall(frame(TEXT, b"bad \xc3\x28 utf-8"))
    assert client.read_close()[0] == 1007
    server.wait_line(r"app: disconnect 1007")


def test_unmasked_client_frame_closes_1002(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server)
    client.sock.sendall(frame(TEXT, b"unmasked", mask=False))
    assert client.read_close() == (1002, "incorrect masking")
    assert client.at_eof()
    server.wait_line(r"app: disconnect 1002")


def test_ping_timeout_with_a_client_that_never_answers(serve):
    server = serve(APP, "--workers", "0", "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.5")
    client = raw_open(server)  # reads frames but never sends a pong
    frames, (code_reason) = client.read_until(CLOSE)
    assert frames and all(op == PING for op, _ in frames)
    assert code_reason[:2] == b"\x03\xf3"  # 1011
    server.wait_line(r"app: disconnect 1011 'keepalive ping timeout'")


def test_ping_answered_keeps_the_connection(serve):
    server = serve(APP, "--workers", "0", "--ws-ping-interval", "0.3", "--ws-ping-timeout", "3")
    client = raw_open(server)
    for _ in range(4):  # ~1.2 s: several intervals, each ping answered
        op, _, payload = client.read_frame()
        assert op == PING
        client.sock.sendall(frame(PONG, payload))
    client.sock.sendall(frame(TEXT, b"alive"))
    _, payload = client.read_until(TEXT)
    assert payload == b"alive"


def test_bad_handshakes(serve):
    server = serve(APP, "--workers", "0")
    cases = [
        (upgrade_request(version="8"), 426),
        (upgrade_request(key=None), 400),
        (upgrade_request(key="short"), 400),
        (upgrade_request(version=""), 400),
    ]
    for request, expected in cases:
        client = RawClient(server.connect(timeout=10))
        client.sock.sendall(request)
        status, headers, _ = client.read_head()
        assert status == expected, request
        assert headers["sec-websocket-version"] == "13"
        assert client.at_eof()
        client.sock.close()


def test_connection_upgrade_without_websocket_is_plain_http(serve):
    server = serve(APP, "--workers", "0")
    with server.connect() as sock:
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n\r\n")
        status, _, body, _ = read_response(sock)
        assert (status, body) == (200, b"plain http /plain")


def test_ws_none_serves_upgrades_as_plain_http(serve):
    server = serve(APP, "--workers", "0", "--ws", "none")
    with server.connect() as sock:
        sock.sendall(upgrade_request("/echo"))
        status, _, body, _ = read_response(sock)
        assert (status, body) == (200, b"plain http /echo")


# ------------------------------------------------------------------ app errors


def test_app_raising_before_accept_is_500(serve):
    server = serve(APP, "--workers", "0")
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server, "/raise-before"), open_timeout=10)
    assert info.value.response.status_code == 500
    server.wait_line(r"Exception in ASGI application")


def test_app_raising_after_accept_closes_1011(serve):
    server = serve(APP, "--workers", "0")
    with connect(ws_url(server, "/raise-after"), open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    server.wait_line(r"Exception in ASGI application")


def test_send_after_close_raises_oserror_and_is_not_logged(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server, "/send-after-close")
    client.sock.sendall(frame(CLOSE, close_payload(1000)))
    assert client.read_close()[0] == 1000
    server.wait_line(r"app: send raised ClientDisconnected True")
    # A later request proves the worker is fine; nothing was logged as an error.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 200
    assert "Exception in ASGI application" not in server.output
    assert "Traceback" not in server.output


def test_many_messages_to_a_slow_app_are_all_delivered(serve):
    # The app sleeps before reading; with a queue of 2 the server pauses reading
    # instead of buffering, and every message still arrives in order.
    server = serve(APP, "--workers", "0", "--ws-max-queue", "2")
    with connect(ws_url(server, "/slow?delay=0.5"), open_timeout=10) as ws:
        for i in range(200):
            ws.send(f"message {i}" * 100)
        ws.send("last")
        assert ws.recv(timeout=30) == "received 201"


# ------------------------------------------------------------------ shutdown


def test_sigterm_closes_websockets_1012_and_the_app_hears_it(serve):
    server = serve(APP, "--workers", "0")
    with connect(ws_url(server, "/shutdown"), open_timeout=10, close_timeout=10) as ws:
        assert ws.recv(timeout=10) == "ready"
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=15)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012
    assert server.wait(20) == 0
    out = server.output
    assert "app: disconnect 1012" in out
    assert out.index("app: disconnect 1012") < out.index("app: cleanup done")


def test_sigterm_with_a_raw_client_that_ignores_the_close(serve):
    server = serve(APP, "--workers", "0")
    client = raw_open(server, "/shutdown")
    assert client.read_frame() == (TEXT, True, b"ready")
    server.signal(signal.SIGTERM)
    assert client.read_close()[0] == 1012
    # We never answer the close: the server still delivers the disconnect and exits.
    assert server.wait(30) == 0
    assert "app: cleanup done" in server.output
    client.sock.close()




def test_under_the_master_echo_and_sigterm_1012(serve):
    # Forked workers (the supervisor): the master's SIGTERM reaches the worker's drain.
    server = serve(APP, "--workers", "2")
    with connect(ws_url(server, "/shutdown"), open_timeout=10, close_timeout=10) as ws:
        assert ws.recv(timeout=10) == "ready"
        with connect(ws_url(server, "/echo"), open_timeout=10) as other:
            other.send("through a worker")
            assert other.recv(timeout=10) == "through a worker"
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=20)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012
    assert server.wait(30) == 0
    assert "app: cleanup done" in server.output
