"""http.response.pathsend end to end: Starlette's FileResponse (which uses the extension
when advertised) against a real worker; http.response.trailers on the wire."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.server import wait_for

pytestmark = pytest.mark.e2e

APP = "tests.tls_apps:app"
MIB = 1024 * 1024


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "one").write_bytes(b"x")
    (tmp_path / "mib").write_bytes(os.urandom(MIB))
    with open(tmp_path / "big", "wb") as f:  # 100 MiB, sparse: no disk, all zeros
        f.truncate(100 * MIB)
    return tmp_path


def head_and_body(sock: socket.socket, expect_body: bool = True) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Read one response with a Content-Length body from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers[b"content-length"]) if expect_body else 0
    body = bytearray(rest)  # appended in place: 100 MiB in bytes pieces would be copied over and over
    while len(body) < length:
        chunk = sock.recv(MIB)
        assert chunk, f"closed after {len(body)} of {length} body bytes"
        body += chunk
    return lines[0], headers, bytes(body)


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_files_of_1_byte_1_mib_and_100_mib_on_one_connection(serve: Any, files: Path) -> None:
    server = serve(APP, env={"FG_TEST_FILES": str(files)})
    with server.connect(timeout=30) as sock:
        for name in ("one", "mib", "big", "one"):
            sock.sendall(get(f"/files/{name}"))
            status, headers, body = head_and_body(sock)
            assert status == b"HTTP/1.1 200 OK"
            expected = (files / name).stat().st_size
            assert int(headers[b"content-length"]) == expected == len(body), name
            if name == "big":
                assert body.count(0) == len(body)
            else:
                assert hashlib.sha256(body).digest() == hashlib.sha256((files / name).read_bytes()).digest()
    assert f'"GET /files/big HTTP/1.1" 200 {100 * MIB}' in server.output


def test_head_sends_the_headers_only_and_keeps_the_connection(serve: Any, files: Path) -> None:
    server = serve(APP, env={"FG_TEST_FILES": str(files)})
    with server.connect() as sock:
        sock.sendall(get("/files/mib", "HEAD") + get("/files/one"))
        # Both answers may come in one read: read them together, then split after the first head.
        data = b""
        while data.count(b"HTTP/1.1 200 OK\r\n") < 2 or not data.endswith(b"\r\n\r\nx"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    first, _, second = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\ncontent-length: {MIB}\r\n".encode() in first.lower() + b"\r\n"
    # The next response starts right after the HEAD's head: no body bytes in between.
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nx")


def fds(server: Any) -> tuple[int, int]:
    with server.connect() as sock:
        sock.sendall(b"GET /fds HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body = head_and_body(sock)
    data = json.loads(body)
    return data["pid"], data["fds"]


def test_client_leaving_mid_file_frees_everything(serve: Any, files: Path) -> None:
    server = serve(APP, env={"FG_TEST_FILES": str(files)})
    pid, before = fds(server)
    for _ in range(3):
        sock = server.connect()
        sock.sendall(get("/files/big"))
        got = 0
        while got < 2 * MIB:
            got += len(sock.recv(MIB))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
        sock.close()
    # The worker lets go of the file, its duplicate of the socket and the connection.
    wait_for(lambda: fds(server) == (pid, before), 15, what="the worker's fds back to where they were")
    with server.connect() as sock:
        sock.sendall(get("/files/one"))
        assert head_and_body(sock)[2] == b"x"


def start_reading(server: Any, name: str) -> tuple[socket.socket, bytes, int]:
    """A client that asked for ``name`` and read part of it, then stopped reading."""
    sock = server.connect(timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(get(f"/files/{name}"))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, rest, int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])


def read_to_close(sock: socket.socket, have: bytes) -> bytes:
    data = bytearray(have)
    while chunk := sock.recv(MIB):
        data += chunk
    return bytes(data)


def test_file_truncated_while_sent_closes_short(serve: Any, files: Path) -> None:
    server = serve(APP, env={"FG_TEST_FILES": str(files)})
    sock, body, length = start_reading(server, "big")
    with sock:
        assert length == 100 * MIB
        os.truncate(files / "big", 3 * MIB)  # the server is still blocked on a full socket
        body = read_to_close(sock, body)
    assert 0 < len(body) < length  # the promise of Content-Length broken: the connection closed early
    server.wait_line(r"ended after \d+ of 104857600 bytes")
    with server.connect() as fresh:  # and the worker serves on
        fresh.sendall(get("/files/one"))
        assert head_and_body(fresh)[2] == b"x"


def test_file_deleted_while_sent_is_sent_whole(serve: Any, files: Path) -> None:
    server = serve(APP, env={"FG_TEST_FILES": str(files)})
    sock, body, length = start_reading(server, "mib")
    expected = (files / "mib").read_bytes()
    with sock:
        os.unlink(files / "mib")  # the open file lives on until it is sent
        received = bytearray(body)
        while len(received) < length:
            received += sock.recv(MIB)
        body = bytes(received)
        sock.sendall(get("/files/one"))
        assert head_and_body(sock)[2] == b"x"  # kept alive
    assert body == expected


def test_trailers_only_when_the_client_takes_them(serve: Any) -> None:
    server = serve("tests.tls_apps:trailers_app")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        data = read_to_close(sock, b"")
    assert b"transfer-encoding: chunked" in data
    assert data.endswith(b"\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\nx-count: 2\r\n\r\n")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_to_close(sock, b"")
    assert data.endswith(b"\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")


def test_under_tls_files_are_read_in_chunks_and_a_reset_frees_everything(serve: Any, files: Path,
                                                                           tmp_path: Path) -> None:
    import ssl

    from tests.test_e2e_tls import make_pki

    pki = make_pki(tmp_path / "pki")
    server = serve(APP, *pki.tls_args(), env={"FG_TEST_FILES": str(files)})
    ctx = pki.client_context()

    def connect() -> ssl.SSLSocket:
        return ctx.wrap_socket(server.connect(timeout=30), server_hostname="localhost")

    with connect() as sock:
        sock.sendall(get("/fds"))
        pid, before = json.loads(head_and_body(sock)[2]).values()
    with connect() as sock:
        sock.sendall(get("/files/mib") + get("/files/one"))
        assert head_and_body(sock)[2] == (files / "mib").read_bytes()
        assert head_and_body(sock)[2] == b"x"  # kept alive after the file
    sock = connect()
    sock.sendall(get("/files/big"))
    got = 0
    while got < 2 * MIB:
        got += len(sock.recv(MIB))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset mid-file
    sock.close()

    def back() -> bool:
        with connect() as s:
            s.sendall(get("/fds"))
            return json.loads(head_and_body(s)[2]) == {"pid": pid, "fds": before}

    wait_for(back, 15, what="the worker's fds back to where they were")


def test_under_tls_file_chunks_count_as_writes_for_the_idle_limit(serve: Any, files: Path, tmp_path: Path) -> None:
    # --timeout-request-idle with pathsend under TLS (chunks read and written, not sendfile):
    # a file still flowing outlives the total limit (a started response is held to the idle
    # limit alone); a client that stops reading stalls the chunks and is cut at the idle limit.
    # The total limit leaves the app a second to start its answer (a loaded CI machine once
    # took more than 0.3 s there, and got the 503), and the reader outlasts it by its pauses.
    import ssl
    import time

    from tests.test_e2e_tls import make_pki

    pki = make_pki(tmp_path / "pki")
    server = serve(APP, *pki.tls_args(), "--workers", "0", "--timeout-request", "1",
                   "--timeout-request-idle", "3", env={"FG_TEST_FILES": str(files)})
    ctx = pki.client_context()

    def connect() -> ssl.SSLSocket:
        return ctx.wrap_socket(server.connect(timeout=30), server_hostname="localhost")

    with connect() as sock:
        sock.sendall(get("/files/big") + get("/files/one"))
        start = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        got = len(data.partition(b"\r\n\r\n")[2])
        while got < 100 * MIB:
            chunk = sock.recv(min(MIB, 100 * MIB - got))
            assert chunk, f"cut after {got} bytes"
            got += len(chunk)
            if got % (8 * MIB) < len(chunk):
                time.sleep(0.1)  # a reader slower than the total limit, never quiet for the idle one
        assert time.monotonic() - start > 1
        assert head_and_body(sock)[2] == b"x"  # the same connection goes on
    with connect() as sock:
        sock.sendall(get("/files/big"))
        got = 0
        while got < MIB:
            got += len(sock.recv(MIB))
        server.wait_line(r"GET /files/big from .* sent nothing for [\d.]+s \(--timeout-request-idle\), "
                         r"connection closed mid-response", timeout=30)
        sock.settimeout(10)
        while chunk := sock.recv(MIB):  # what was buffered, then the close
            got += len(chunk)
        assert got < 100 * MIB
