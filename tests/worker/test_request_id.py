"""Request ids: taken from a trusted proxy's X-Request-ID or generated, echoed, logged."""

from __future__ import annotations

import logging
import re

import pytest

from fastgate import config as cfg
from fastgate.asgi.scope import ConnectionInfo, ProxyTrust
from fastgate.errors import ConfigError, LocalProtocolError
from fastgate.fields import REQUEST_ID_MAX, is_request_id
from fastgate.http.h1 import H1Connection
from fastgate.worker.request_id import RequestIds
from tests.worker.test_http_protocol import GET, connect, make_worker, run, until

GENERATED = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")


def responses(data: bytes) -> list[bytes]:
    """The heads of the responses in ``data`` (the test app's bodies hold no status line)."""
    return re.findall(rb"HTTP/1\.1 \d{3}.*?\r\n\r\n", data, re.S)


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b": ")
        if key == name:
            return value
    return None


def serve(request: bytes, **options: object) -> list[bytes]:
    out: list[bytes] = []

    async def main() -> None:
        protocol, transport = connect(make_worker(**options))
        protocol.data_received(request)
        count = request.count(b"HTTP/1.1\r\n")
        await until(lambda: len(responses(bytes(transport.written))) >= count and b"Hello" in transport.written)
        out.extend(responses(transport.take()))

    run(main)
    return out


@pytest.mark.parametrize(
    "value",
    [b"abc", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"Root=1-5759e988-bd862e3fe1be46a994272793",
     b"dGVzdA/+x==", b"a" * REQUEST_ID_MAX, b"user@host:1"],
)
def test_request_id_shapes_taken(value: bytes) -> None:
    assert is_request_id(value)


@pytest.mark.parametrize(
    "value",
    [b"", b"a" * (REQUEST_ID_MAX + 1), b"abc\r\nset-cookie: x=1", b"a b", b"a\x00", b'"quoted"', b"caf\xc3\xa9",
     b"a,b", b"a;b", b"<script>", b"a\tb", b"a\\b"],
)
def test_request_id_shapes_refused(value: bytes) -> None:
    assert not is_request_id(value)


def test_trusted_proxy_id_is_echoed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "fastgate.access"):
        heads = serve(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: proxy-42\r\n\r\n",
                         request_id_header="X-Request-ID", log_format="json")
    assert header(heads[0], b"x-request-id") == b"proxy-42"
    record = next(r for r in caplog.records if r.name == "fastgate.access")
    assert record.access["request_id"] == "proxy-42"  # type: ignore[attr-defined]


def test_untrusted_peer_gets_a_generated_id() -> None:
    # The fake peer is 127.0.0.1; only 10.0.0.1 is a trusted proxy here.
    heads = serve(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: spoofed\r\n\r\n",
                     request_id_header="X-Request-ID", forwarded_allow_ips="10.0.0.1")
    value = header(heads[0], b"x-request-id")
    assert value is not None and GENERATED.fullmatch(value.decode())


def test_proxy_headers_off_means_no_peer_is_trusted() -> None:
    heads = serve(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: spoofed\r\n\r\n",
                     request_id_header="X-Request-ID", proxy_headers=False)
    value = header(heads[0], b"x-request-id")
    assert value is not None and GENERATED.fullmatch(value.decode())


@pytest.mark.parametrize("bad", [b"a b", b"x" * (REQUEST_ID_MAX + 1), b"\"x\"", b"caf\xc3\xa9", b""])
def test_malformed_id_from_a_trusted_proxy_is_replaced(bad: bytes) -> None:
    heads = serve(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: " + bad + b"\r\n\r\n",
                     request_id_header="X-Request-ID")
    assert len(heads) == 1
    value = header(heads[0], b"x-request-id")
    assert value is not None and GENERATED.fullmatch(value.decode())


def test_pipelined_requests_each_get_their_own_id(caplog: pytest.LogCaptureFixture) -> None:
    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: first\r\n\r\n" + GET + GET
    with caplog.at_level(logging.INFO, "fastgate.access"):
        heads = serve(request, request_id_header="Request-Id", log_format="json")
    ids = [header(h, b"request-id") for h in heads]
    assert ids[0] == b"first" and len(set(ids)) == 3 and None not in ids
    logged = [r.access["request_id"] for r in caplog.records if r.name == "fastgate.access"]  # type: ignore[attr-defined]
    assert [i.encode() for i in logged] == ids


def test_json_logs_alone_generate_ids_without_the_header(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "fastgate.access"):
        heads = serve(GET, log_format="json")
    assert header(heads[0], b"x-request-id") is None
    record = next(r for r in caplog.records if r.name == "fastgate.access")
    assert GENERATED.fullmatch(record.access["request_id"])  # type: ignore[attr-defined]


def test_off_by_default_costs_nothing() -> None:
    worker = make_worker()
    assert worker.settings.request_ids is None and worker.settings.request_id_header is None

    async def main() -> None:
        protocol, transport = connect(worker)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: x\r\n\r\n")
        await until(lambda: b"Hello" in transport.written)
        assert b"x-request-id" not in transport.written.lower() and protocol.request_id is None

    run(main)


def test_an_error_response_to_the_next_request_carries_no_stale_id() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(request_id_header="X-Request-ID"))
        protocol.data_received(GET + b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        await until(lambda: transport.closing or b"400 Bad Request" in transport.written)
        await until(lambda: b"400 Bad Request" in transport.written)
        first, second = responses(transport.take())[:2]
        assert header(first, b"x-request-id") is not None
        assert second.startswith(b"HTTP/1.1 400") and header(second, b"x-request-id") is None

    run(main)


def test_app_error_500_carries_the_id() -> None:
    async def main() -> None:
        protocol, transport = connect(make_worker(request_id_header="X-Request-ID"))
        protocol.data_received(b"GET /raise HTTP/1.1\r\nHost: t\r\nX-Request-ID: boom-1\r\n\r\n")
        await until(lambda: b"HTTP/1.1 500" in transport.written)
        assert header(responses(transport.take())[0], b"x-request-id") == b"boom-1"

    run(main)


def test_set_response_header_goes_through_the_field_check() -> None:
    conn = H1Connection()
    with pytest.raises(LocalProtocolError):
        conn.set_response_header(b"x-request-id", b"a\r\nset-cookie: x")
    with pytest.raises(LocalProtocolError):
        conn.set_response_header(b"bad name", b"a")


def test_generated_ids_are_unique_per_worker_and_counter() -> None:
    a, b = RequestIds(), RequestIds()
    assert a.prefix != b.prefix
    info = ConnectionInfo(("192.0.2.1", 1), ("127.0.0.1", 80), trust=ProxyTrust(None, enabled=False))
    headers = [(b"x-request-id", b"ignored")]
    ids = [a.for_request(headers, info) for _ in range(3)] + [b.for_request(headers, info)]
    assert len(set(ids)) == 4 and all(GENERATED.fullmatch(i) for i in ids)
    trusted = ConnectionInfo(("127.0.0.1", 1), ("127.0.0.1", 80), trust=ProxyTrust(None))
    # The first X-Request-ID counts; a malformed first one is not skipped for a later one.
    assert a.for_request([(b"x-request-id", b"one"), (b"x-request-id", b"two")], trusted) == "one"
    assert GENERATED.fullmatch(a.for_request([(b"x-request-id", b"o ne"), (b"x-request-id", b"two")], trusted))


def test_request_id_header_must_be_a_token() -> None:
    with pytest.raises(ConfigError, match="request-id-header"):
        cfg.build({"app": "x:y", "request_id_header": "X Request"})
    assert cfg.build({"app": "x:y", "request_id_header": "X-Correlation-ID"}).http.request_id_header
