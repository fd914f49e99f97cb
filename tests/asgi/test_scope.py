"""Scope building and proxy headers (X-Forwarded-*, RFC 7239 Forwarded)."""

from __future__ import annotations

from typing import Any

import pytest

from fastgate.asgi.scope import ConnectionInfo, ProxyTrust, build_scope, decode_path
from fastgate.config import parse_networks
from fastgate.http.events import RequestHead
from fastgate.http.h1 import H1Connection
from fastgate.ws.session import offered_subprotocols

LOCAL = ProxyTrust(parse_networks("127.0.0.1,::1"))


def head(target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET") -> RequestHead:
    hdrs = b"".join(n + b": " + v + b"\r\n" for n, v in (headers or []))
    conn = H1Connection()
    conn.receive_data(method + b" " + target + b" HTTP/1.1\r\nHost: example.com\r\n" + hdrs + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, RequestHead), event
    return event


def scope(h: RequestHead | None = None, *, peer: str | None = "127.0.0.1", trust: ProxyTrust = LOCAL,
          root_path: str = "", websocket: bool = False, **kw: Any) -> dict[str, Any]:
    h = h or head()
    # A UNIX-socket connection: the peer name is "" and the socket name the path.
    info = ConnectionInfo((peer, 5000) if peer else "", ("127.0.0.1", 8000), tls=kw.pop("scheme", "http") == "https",
                          root_path=root_path, state=kw.pop("state", {}), trust=trust)
    if peer is None:
        info.server = ("127.0.0.1", 8000)
    return dict(build_scope(h, info, offered_subprotocols(h.headers) if websocket else None))


def test_http_scope_fields() -> None:
    state = {"db": "conn"}
    h = head(b"/caf%C3%A9/a%2Fb?x=1&y=%20", [(b"X-Custom", b"Va\xffl")])
    s = scope(h, state=state)
    assert s == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.5"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/café/a/b",
        "raw_path": b"/caf%C3%A9/a%2Fb",
        "query_string": b"x=1&y=%20",
        "headers": [(b"host", b"example.com"), (b"x-custom", b"Va\xffl")],
        "state": {"db": "conn"},
        "extensions": {"http.response.pathsend": {}},
    }
    s["state"]["new"] = 1
    assert state == {"db": "conn"}  # a shallow copy per request


def test_root_path_is_part_of_path() -> None:
    s = scope(head(b"/items?q"), root_path="/api")
    assert (s["root_path"], s["path"], s["raw_path"], s["query_string"]) == ("/api", "/api/items", b"/api/items", b"q")


def test_connection_info_from_transport_names() -> None:
    tcp6 = ConnectionInfo(("::1", 5000, 0, 0), ("::1", 8000, 0, 0), tls=True, trust=LOCAL)
    assert (tcp6.client, tcp6.server, tcp6.scheme, tcp6.proxy_trusted) == (("::1", 5000), ("::1", 8000), "https", True)
    unix = ConnectionInfo("", "/run/fg.sock", trust=LOCAL)
    assert (unix.client, unix.server, unix.proxy_trusted) == (None, ("/run/fg.sock", None), True)
    untrusted = ConnectionInfo(("198.51.100.1", 5000), ("127.0.0.1", 8000), trust=LOCAL)
    assert not untrusted.proxy_trusted
    off = ConnectionInfo(("127.0.0.1", 5000), ("127.0.0.1", 8000), trust=ProxyTrust(None, enabled=False))
    assert not off.proxy_trusted


def test_decode_path() -> None:
    assert decode_path(b"/plain") == "/plain"
    assert decode_path(b"/caf%C3%A9") == "/café"
    assert decode_path(b"/bad%FF") == "/bad\ufffd"
    assert decode_path(b"/raw\xc3\xa9") == "/rawé"


def test_websocket_scope() -> None:
    h = head(b"/ws?a=1", [(b"Sec-WebSocket-Protocol", b"chat, superchat"), (b"Sec-WebSocket-Protocol", b"x")])
    s = scope(h, websocket=True, scheme="https", root_path="/r")
    assert s["type"] == "websocket" and s["scheme"] == "wss"
    assert s["subprotocols"] == ["chat", "superchat", "x"]
    assert s["path"] == "/r/ws" and s["query_string"] == b"a=1"
    assert "websocket.http.response" in s["extensions"]
    s = scope(head(b"/ws", [(b"X-Forwarded-Proto", b"https")]), websocket=True)
    assert s["scheme"] == "wss"
    s = scope(head(b"/ws", [(b"X-Forwarded-Proto", b"wss")]), websocket=False)
    assert s["scheme"] == "https"


# ------------------------------------------------------------------ X-Forwarded-*


def test_x_forwarded_from_trusted_peer() -> None:
    h = head(b"/", [(b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-Proto", b"https"),
                    (b"X-Forwarded-Host", b"public.example"), (b"X-Forwarded-Port", b"443"),
                    (b"X-Forwarded-Prefix", b"/app/")])
    s = scope(h, root_path="/r")
    assert s["client"] == ("203.0.113.7", 0)
    assert s["scheme"] == "https"
    assert dict(s["headers"])[b"host"] == b"public.example"
    assert s["server"] == ("127.0.0.1", 443)
    assert s["root_path"] == "/app/r" and s["path"] == "/app/r/"


def test_untrusted_peer_is_ignored() -> None:
    h = head(b"/", [(b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-Proto", b"https"),
                    (b"Forwarded", b"for=1.2.3.4;proto=https")])
    s = scope(h, peer="198.51.100.1")
    assert s["client"] == ("198.51.100.1", 5000) and s["scheme"] == "http"


def test_proxy_headers_off() -> None:
    h = head(b"/", [(b"X-Forwarded-For", b"203.0.113.7")])
    s = scope(h, trust=ProxyTrust(None, enabled=False))
    assert s["client"] == ("127.0.0.1", 5000)


def test_rightmost_untrusted_hop_wins_over_spoofed_leftmost() -> None:
    # The client wrote "6.6.6.6" itself; our proxy (10.0.0.1, trusted) appended the real peer.
    trust = ProxyTrust(parse_networks("127.0.0.1, 10.0.0.0/8"))
    h = head(b"/", [(b"X-Forwarded-For", b"6.6.6.6, 203.0.113.7, 10.0.0.1")])
    assert scope(h, trust=trust)["client"][0] == "203.0.113.7"
    # Repeated header lines are one list.
    h = head(b"/", [(b"X-Forwarded-For", b"6.6.6.6"), (b"X-Forwarded-For", b"203.0.113.7")])
    assert scope(h, trust=trust)["client"][0] == "203.0.113.7"
    # Ports some proxies append are dropped.
    h = head(b"/", [(b"X-Forwarded-For", b"6.6.6.6, 203.0.113.7:4711, [2001:db8::1]:80, 10.0.0.1")])
    assert scope(h, trust=trust)["client"] == ("2001:db8::1", 0)
    # Every hop trusted: the leftmost is the client.
    h = head(b"/", [(b"X-Forwarded-For", b"10.1.1.1, 10.0.0.1")])
    assert scope(h, trust=trust)["client"][0] == "10.1.1.1"


def test_cidr_and_ipv6_trust() -> None:
    trust = ProxyTrust(parse_networks("10.0.0.0/8,2001:db8::/32"))
    assert trust.trusts("10.200.3.4") and not trust.trusts("11.0.0.1")
    assert trust.trusts("2001:db8::1") and trust.trusts("[2001:db8::1]") and not trust.trusts("::1")
    assert not trust.trusts("not-an-ip")
    assert trust.trusts(None)  # a UNIX-socket peer is the local proxy
    assert ProxyTrust(parse_networks("*")).trusts("8.8.8.8")


def test_unix_peer_is_trusted() -> None:
    h = head(b"/", [(b"X-Forwarded-For", b"203.0.113.7"), (b"X-Forwarded-Proto", b"https")])
    s = scope(h, peer=None)
    assert s["client"] == ("203.0.113.7", 0) and s["scheme"] == "https"


def test_x_forwarded_odd_values() -> None:
    h = head(b"/", [(b"X-Forwarded-Port", b"nope"), (b"X-Forwarded-Prefix", b"relative"),
                    (b"X-Forwarded-Proto", b"gopher"), (b"X-Forwarded-Proto", b"http, HTTPS")])
    s = scope(h)
    assert s["server"] == ("127.0.0.1", 8000) and s["root_path"] == "" and s["scheme"] == "https"
    assert scope(head(b"/", [(b"X-Forwarded-Proto", b"gopher")]))["scheme"] == "http"
    assert scope(head(b"/", [(b"X-Unrelated", b"1")]))["client"] == ("127.0.0.1", 5000)


# ------------------------------------------------------------------ RFC 7239 Forwarded


@pytest.mark.parametrize(
    ("value", "client", "scheme", "host"),
    [
        (b"for=203.0.113.7;proto=https;host=pub.example", "203.0.113.7", "https", b"pub.example"),
        (b'for="[2001:db8::7]:4711";proto=HTTPS', "2001:db8::7", "https", b"example.com"),
        (b"for=203.0.113.7:4711", "203.0.113.7", "http", b"example.com"),
        # Spoofed first element; the nearest untrusted one wins.
        (b"for=6.6.6.6;proto=https, for=203.0.113.7;proto=http, for=127.0.0.1", "203.0.113.7", "http",
         b"example.com"),
        (b"for=_hidden, for=127.0.0.1", "_hidden", "http", b"example.com"),
        (b"proto=https", "127.0.0.1", "https", b"example.com"),
        (b"for=127.0.0.1;proto=https", "127.0.0.1", "https", b"example.com"),
    ],
)
def test_forwarded(value: bytes, client: str, scheme: str, host: bytes) -> None:
    s = scope(head(b"/", [(b"Forwarded", value), (b"X-Forwarded-For", b"9.9.9.9")]))
    assert s["client"][0] == client
    assert s["scheme"] == scheme
    assert dict(s["headers"])[b"host"] == host


def test_extensions_trailers_only_for_te_trailers_and_tls_from_the_connection() -> None:
    plain = scope(head())
    assert plain["extensions"] == {"http.response.pathsend": {}}
    for te in (b"trailers", b"gzip, Trailers", b"deflate;q=0.5, trailers;q=1"):
        h = head(headers=[(b"TE", te)])
        assert scope(h)["extensions"] == {"http.response.pathsend": {}, "http.response.trailers": {}}, te
    assert scope(head(headers=[(b"TE", b"gzip")]))["extensions"] == {"http.response.pathsend": {}}
    tls = {"tls_version": 0x0304, "server_cert": None}
    info = ConnectionInfo(("127.0.0.1", 5000), ("127.0.0.1", 8443), tls=True, tls_info=tls)
    s = build_scope(head(), info)
    assert s["scheme"] == "https" and s["extensions"]["tls"] is tls
    ws = build_scope(head(), info, [])
    assert ws["scheme"] == "wss" and ws["extensions"] == {"websocket.http.response": {}, "tls": tls}
