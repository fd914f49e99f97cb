"""End-to-end smoke tests: a real fastgate process on loopback, real clients."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server import read_response

pytestmark = pytest.mark.e2e


def test_hello_and_keep_alive(serve):
    server = serve("tests.apps:app", "--workers", "0")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, buf = read_response(sock)
        assert (status, body) == (200, b"Hello, world!")
        assert headers[b"server"] == b"fastgate"
        assert b"date" in headers
        # Same connection, second request: keep-alive works.
        sock.sendall(b"GET /echo?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, buf = read_response(sock, buf)
        info = json.loads(body)
        assert info["query_string"] == "x=1"
        assert info["asgi"] == {"version": "3.0", "spec_version": "2.5"}


def test_httpx_client_and_app_state(serve):
    server = serve("tests.apps:app", "--workers", "0")
    r = httpx.get(server.url + "/echo/caf%C3%A9?q=%20", timeout=5)
    info = r.json()
    assert info["path"] == "/echo/café"
    assert info["raw_path"] == "/echo/caf%C3%A9"
    assert info["state"]["started_pid"] == info["pid"]
    assert info["client"][0] == "127.0.0.1"
    assert info["server"] == ["127.0.0.1", server.port]


def test_malformed_request_gets_400_and_worker_survives(serve):
    server = serve("tests.apps:app", "--workers", "0")
    with server.connect() as bystander:
        bystander.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(bystander)[0] == 200
        with server.connect() as bad:
            bad.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n")
            status, headers, body, _ = read_response(bad)
            assert status == 400
            assert headers[b"connection"] == b"close"
            assert bad.recv(10) == b""
        bystander.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(bystander)[0] == 200
    server.wait_line("rejected request from 127.0.0.1:\\d+: 400")


def test_app_import_error_exits_4_with_one_line(serve):
    server = serve("no_such_module:app", "--workers", "0", wait_listening=False)
    assert server.wait(10) == 4
    assert "fastgate: error: could not import module 'no_such_module'" in server.output
    assert "Traceback" not in server.output
