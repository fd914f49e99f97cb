"""TLS end to end: real servers, real TLS clients (httpx, websockets, curl, openssl s_client),
certificates made at test time with trustme; mutual TLS; config errors; renewal on SIGHUP."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from tests.server import ROOT, ServerProcess, recv_until_closed, wait_for

pytestmark = pytest.mark.e2e

APP = "tests.tls_apps:app"


@dataclass
class PKI:
    dir: Path
    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert

    @property
    def cert(self) -> str:
        return str(self.dir / "cert.pem")

    @property
    def key(self) -> str:
        return str(self.dir / "key.pem")

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def client_file(self) -> str:
        return str(self.dir / "client.pem")

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if with_cert:
            ctx.load_cert_chain(self.client_file)
        return ctx

    def tls_args(self) -> list[str]:
        return ["--ssl-certfile", self.cert, "--ssl-keyfile", self.key]


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("alice@example.org", common_name="alice")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    server.private_key_pem.write_to_path(str(directory / "key.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(directory / "client.pem"))
    return PKI(directory, ca, server, client)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def listening(server: ServerProcess, count: int) -> dict[str, int]:
    """``{"http": port, "https": port}`` from the "Listening on" lines."""
    found: dict[str, int] = {}

    def lines() -> bool:
        for m in re.finditer(r"Listening on (https?)://127\.0\.0\.1:(\d+)", server.output):
            found[m.group(1)] = int(m.group(2))
        return len(found) >= count

    wait_for(lines, 15, what="listening lines")
    return found


def get_json(url: str, ctx: ssl.SSLContext | bool = True, **kw: Any) -> Any:
    with httpx.Client(verify=ctx, timeout=10) as client:
        response = client.get(url, **kw)
        response.raise_for_status()
        return response.json()


def test_https_scope_and_tls_extension(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args())
    assert "Listening on https://127.0.0.1:" in server.output
    url = f"https://127.0.0.1:{server.port}/scope"
    data = get_json(url, pki.client_context())
    assert data["scheme"] == "https"
    tls = data["extensions"]["tls"]
    assert tls["server_cert"] == pki.server.cert_chain_pems[0].bytes().decode()
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None and tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304  # both ends speak 1.3
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # the TLS 1.3 suites' IANA numbers
    assert "http.response.pathsend" in data["extensions"]
    # TLS 1.2: the version and a 1.2 suite number.
    ctx12 = pki.client_context()
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx12.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    tls12 = get_json(url, ctx12)["extensions"]["tls"]
    assert tls12["tls_version"] == 0x0303 and tls12["cipher_suite"] == 0xC02B


def test_alpn_offers_http11_only(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args())
    for offered, chosen in ((["h2", "http/1.1"], "http/1.1"), (["h2"], None)):
        ctx = pki.client_context()
        ctx.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == chosen, offered


def test_wss_scope_through_the_websockets_client(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args())
    with ws_connect(f"wss://localhost:{server.port}/ws", ssl=pki.client_context(), open_timeout=10) as ws:
        data = json.loads(ws.recv(timeout=10))
    assert data["scheme"] == "wss"
    assert data["extensions"]["tls"]["tls_version"] == 0x0304
    assert "websocket.http.response" in data["extensions"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_cacert_and_a_file_under_tls(serve: Any, pki: PKI, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: crosses the chunked-read size
    (tmp_path / "blob").write_bytes(payload)
    server = serve(APP, *pki.tls_args(), env={"FG_TEST_FILES": str(tmp_path)})
    base = f"https://localhost:{server.port}"
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", pki.ca_file, f"{base}/files/blob",
                          f"{base}/scope"], capture_output=True, timeout=30, check=True).stdout
    assert out[: len(payload)] == payload  # the file, read in chunks through TLS
    assert json.loads(out[len(payload):])["scheme"] == "https"  # the same connection, kept alive
    refused = subprocess.run(["curl", "-sS", "--max-time", "20", f"{base}/scope"], capture_output=True,
                             timeout=30)
    assert refused.returncode != 0  # curl does not trust the test CA without --cacert


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                           *args], input="", capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_refuses_old_versions_and_foreign_ciphers(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args(), "--ssl-ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256")
    port = server.port
    ok = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert ok.returncode == 0 and "ECDHE-ECDSA-AES128-GCM-SHA256" in ok.stdout, ok.stdout + ok.stderr
    assert "Protocol  : TLSv1.2" in ok.stdout or "TLSv1.2" in ok.stdout
    # TLS 1.1 and 1.0: refused by the server (the client's own security level lowered so
    # that it is the server that says no).
    for flag in ("-tls1_1", "-tls1"):
        old = s_client(port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        # Refused: no handshake, so no certificate shown (the server alerts, or just closes).
        assert old.returncode != 0 and "BEGIN CERTIFICATE" not in old.stdout, old.stdout + old.stderr
    foreign = s_client(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert foreign.returncode != 0 and "BEGIN CERTIFICATE" not in foreign.stdout, foreign.stdout + foreign.stderr
    assert "BEGIN CERTIFICATE" in ok.stdout  # (what a handshake shows)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_ssl_version_raises_the_floor_to_tls13(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args(), "--ssl-version", "TLSv1_3")
    refused = s_client(server.port, "-tls1_2")
    assert refused.returncode != 0 and "BEGIN CERTIFICATE" not in refused.stdout
    ok = s_client(server.port, "-tls1_3")
    assert ok.returncode == 0 and "TLSv1.3" in ok.stdout and "BEGIN CERTIFICATE" in ok.stdout


def test_mixed_tls_and_plain_listeners(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args(), "--bind", "tls:127.0.0.1:0", "--bind", "127.0.0.1:0")
    ports = listening(server, 2)
    plain = get_json(f"http://127.0.0.1:{ports['http']}/scope")
    assert plain["scheme"] == "http" and "tls" not in plain["extensions"]
    secure = get_json(f"https://127.0.0.1:{ports['https']}/scope", pki.client_context())
    assert secure["scheme"] == "https" and secure["extensions"]["tls"]["tls_version"]
    # Plain bytes on the TLS port are no request: nothing is served.
    with socket.create_connection(("127.0.0.1", ports["https"]), timeout=10) as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b"HTTP/1.1 200" not in sock.recv(65536)


def test_mutual_tls_required_and_verified(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args(), "--ssl-ca-certs", pki.ca_file, "--ssl-cert-reqs", "2")
    url = f"https://127.0.0.1:{server.port}/scope"
    data = get_json(url, pki.client_context(with_cert=True))
    tls = data["extensions"]["tls"]
    assert tls["client_cert_chain"] == [pki.client.cert_chain_pems[0].bytes().decode()]
    assert tls["client_cert_name"].startswith("CN=alice,") and "O=trustme" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        get_json(url, pki.client_context())  # no client certificate
    other = make_pki(pki.dir / "other")  # a certificate from a CA the server does not trust
    ctx = pki.client_context()
    ctx.load_cert_chain(other.client_file)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        get_json(url, ctx)
    assert get_json(url, pki.client_context(with_cert=True))["scheme"] == "https"  # still serving


def test_optional_client_certificate(serve: Any, pki: PKI) -> None:
    server = serve(APP, *pki.tls_args(), "--ssl-ca-certs", pki.ca_file, "--ssl-cert-reqs", "1")
    url = f"https://127.0.0.1:{server.port}/scope"
    assert get_json(url, pki.client_context())["extensions"]["tls"]["client_cert_name"] is None
    assert get_json(url, pki.client_context(with_cert=True))["extensions"]["tls"]["client_cert_name"].startswith(
        "CN=alice")


# ------------------------------------------------------------------ configuration errors


def run_fastgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgate", APP, "--port", "0", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def encrypted_key(pki: PKI, password: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), None)
    path = pki.dir / "encrypted.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password)))
    return str(path)


@pytest.mark.parametrize("workers", ["1", "0"])
# Twelve fastgate processes one after another: 15-35 s on a loaded 2-core machine (CI runs two
# suites at once, one under coverage), past the 60 s hang guard meant for one server's test.
@pytest.mark.timeout(180)
def test_bad_pairs_are_one_line_and_exit_2(pki: PKI, workers: str) -> None:
    other = pki.ca.issue_cert("localhost")
    other_key = pki.dir / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    junk = pki.dir / "junk.pem"
    junk.write_text("not a certificate\n")
    enc = encrypted_key(pki, b"s3cret")
    cases = [
        (["--ssl-certfile", str(pki.dir / "missing.pem"), "--ssl-keyfile", pki.key], "--ssl-certfile: cannot read"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", str(pki.dir / "nokey.pem")], "--ssl-keyfile: cannot read"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", str(other_key)], "--ssl-keyfile: the private key in"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", enc, "--ssl-keyfile-password", "wrong"],
         "--ssl-keyfile-password: the password of"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", enc], "is missing: the key is encrypted"),
        (["--ssl-certfile", str(junk), "--ssl-keyfile", pki.key], "--ssl-certfile: no PEM certificate"),
        (["--ssl-certfile", pki.cert], "--ssl-certfile: no PEM private key"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", pki.key, "--ssl-ca-certs", str(junk)],
         "--ssl-ca-certs:"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", pki.key, "--ssl-ciphers", "NOPE-NOPE"], "--ssl-ciphers:"),
        (["--bind", "tls:127.0.0.1:0"], "a TLS listener needs --ssl-certfile"),
        (["--ssl-certfile", pki.cert, "--ssl-keyfile", pki.key, "--ssl-cert-reqs", "2"], "needs --ssl-ca-certs"),
    ]
    for args, message in cases:
        result = run_fastgate("--workers", workers, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("fastgate: error: ") and message in lines[0], (args, lines)
    ok = subprocess.Popen([sys.executable, "-m", "fastgate", APP, "--port", "0", "--workers", workers,
                           "--ssl-certfile", pki.cert, "--ssl-keyfile", enc, "--ssl-keyfile-password", "s3cret"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        assert ok.stdout is not None
        for line in ok.stdout:
            if "Listening on https://" in line:
                break
            assert "error" not in line, line
    finally:
        ok.send_signal(signal.SIGTERM)
        ok.wait(30)
        if ok.stdout is not None:
            ok.stdout.close()


# ------------------------------------------------------------------ renewal


class Prober:
    """Threads making new TLS connections until stopped; counts failures and what certificate
    each connection saw."""

    def __init__(self, port: int, ctx: ssl.SSLContext, threads: int = 2) -> None:
        self.port = port
        self.ctx = ctx
        self.ok = 0
        self.failures: list[str] = []
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Prober:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
                    with self.ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(b"GET /scope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        data = b""
                        while chunk := tls.recv(65536):
                            data += chunk
                        der = tls.getpeercert(binary_form=True) or b""
                if not data.startswith(b"HTTP/1.1 200 "):
                    raise AssertionError(data[:80])
                with self._lock:
                    self.ok += 1
                    self.seen.append(der)
            except Exception as exc:  # counted: the test asserts there are none
                with self._lock:
                    self.failures.append(repr(exc))


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_renewal_on_sighup_without_a_failed_request(serve: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = serve(APP, *pki.tls_args(), "--workers", "2")
    renewed = pki.ca.issue_cert("localhost", "127.0.0.1")
    with Prober(server.port, pki.client_context()) as probe:
        wait_for(lambda: probe.ok >= 20, 30, what="requests before the renewal")
        # certbot / cert-manager replace the files, then the master is told.
        renewed.cert_chain_pems[0].write_to_path(pki.cert)
        renewed.private_key_pem.write_to_path(pki.key)
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_line("Reload complete: generation 2 serving", 60, start=mark)
        wait_for(lambda: probe.seen[-1] == der(renewed), 30, what="the renewed certificate served")
        after = probe.ok
        wait_for(lambda: probe.ok >= after + 20, 30, what="requests after the renewal")
    assert probe.failures == []
    tail = probe.seen[-10:]
    assert all(seen == der(renewed) for seen in tail)  # the old workers are gone
    assert der(pki.server) in probe.seen  # and they served before


def test_broken_renewal_keeps_the_old_workers_serving(serve: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = serve(APP, *pki.tls_args())
    other_key = pki.ca.issue_cert("localhost")
    with Prober(server.port, pki.client_context(), threads=1) as probe:
        wait_for(lambda: probe.ok >= 5, 30, what="requests before")
        other_key.private_key_pem.write_to_path(pki.key)  # half a renewal: the key no longer matches
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        line = server.wait_line("Reload refused", 30, start=mark)
        assert "--ssl-keyfile: the private key" in line.string
        before = probe.ok
        wait_for(lambda: probe.ok >= before + 10, 30, what="requests after the refused reload")
    assert probe.failures == []
    assert set(probe.seen) == {der(pki.server)}
    assert "generation 2" not in "\n".join(server.lines[mark:])


def _accepted_by(pid: int, server_port: int, client_port: int) -> bool:
    """Whether process ``pid`` holds the server side of the TCP connection from ``client_port``
    (read from /proc: a connection still in the listen queue belongs to no process yet)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return False
    target = f"socket:[{inode}]"
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if str(fd.readlink()) == target:
                return True
        except OSError:
            continue
    return False


def test_a_handshake_under_way_when_the_drain_begins_is_finished_and_answered(serve: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = serve(APP, *pki.tls_args(), "--workers", "0", "--timeout-request-header", "10")
    ctx = pki.client_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw:
        # Accepted (the server's protocol exists, its handshake has not begun) ...
        wait_for(lambda: _accepted_by(server.pid, server.port, raw.getsockname()[1]), 15, what="the accept")
        server.signal(signal.SIGTERM)  # ... when the drain begins
        server.wait_line("Shutting down", 15)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 404 "), data  # the app answered (it has no "/"), not a reset
    assert b"\r\nconnection: close\r\n" in data.lower()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_failed_handshake_does_not_hold_the_drain(serve: Any, pki: PKI, workers: str) -> None:
    # The handshake timeout far above the wait below: a drain that waited for the failed
    # handshake to time out (it used to: a failed handshake never tells its protocol) fails.
    server = serve(APP, *pki.tls_args(), "--workers", workers, "--timeout-request-header", "50")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: a\r\n\r\n")  # plain bytes: the handshake fails
        assert recv_until_closed(sock) == b""  # refused and closed, no answer
    # A handshake that succeeds as well: its connection is answered and closed, not waited on.
    assert get_json(f"https://127.0.0.1:{server.port}/scope", pki.client_context())["scheme"] == "https"
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
