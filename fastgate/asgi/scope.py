"""Build ASGI connection scopes from a parsed request head and a ``ConnectionInfo``.

One builder serves both kinds of scope: ``build_scope(head, info)`` is the ``http`` scope
of a request, and with the upgrade's offered ``subprotocols`` the ``websocket`` scope.
``ConnectionInfo`` is what every scope of one connection shares (addresses, scheme,
whether the peer is a trusted proxy, the worker's root path and lifespan state), worked
out once when the connection is made.

Proxy headers are honoured only when the direct peer is trusted (``--forwarded-allow-ips``
or a UNIX-socket peer). The client address is taken as the rightmost *untrusted* hop: the
leftmost entries are written by the client itself and prove nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from fastgate.asgi.types import ASGI_VERSION, WWW_SPEC_VERSION, Scope
from fastgate.config import Network
from fastgate.http.events import RequestHead
from fastgate.http.h1_receive import PROXY_HEADERS

Address = tuple[str, int]
ServerAddress = tuple[str, int | None]  # a UNIX socket: (path, None)

# The byte b"%" as an int: `int in bytes` is a byte search, where `bytes in bytes` first
# tries its argument as an int and raises and clears a TypeError (with its formatted
# message) before it searches: 2.1K instructions of the 55K of a plaintext request on 3.11.
_PERCENT: Final = 0x25


def decode_path(raw_path: bytes) -> str:
    """Percent-decode the path and decode it as UTF-8 (invalid bytes replaced)."""
    if _PERCENT not in raw_path:
        try:
            return raw_path.decode("ascii")
        except UnicodeDecodeError:
            return raw_path.decode("utf-8", "replace")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


class ProxyTrust:
    """Which peers may set forwarding headers. ``networks=None`` trusts everyone."""

    __slots__ = ("networks", "enabled", "_cache")

    def __init__(self, networks: tuple[Network, ...] | None, enabled: bool = True) -> None:
        self.networks = networks
        self.enabled = enabled
        # Answers per address: parsing an IP with ipaddress costs several µs, and every new
        # connection asks (7% of a Connection: close workload's CPU before this cache).
        self._cache: dict[str, bool] = {}

    def trusts(self, host: str | None) -> bool:
        """Whether a hop (an IP string; None for UNIX-socket peers) is a trusted proxy."""
        if host is None:
            return True
        networks = self.networks
        if networks is None:
            return True
        cache = self._cache
        answer = cache.get(host)
        if answer is None:
            if len(cache) >= 4096:
                cache.clear()  # bounded: a scan from many addresses must not grow it forever
            answer = cache[host] = _in_networks(host, networks)
        return answer


def _in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


class Forwarded:
    """What trusted proxies told us about the original request."""

    __slots__ = ("client", "scheme", "host", "port", "prefix")

    def __init__(self) -> None:
        self.client: str | None = None
        self.scheme: str | None = None
        self.host: bytes | None = None
        self.port: int | None = None
        self.prefix: str | None = None


def _rightmost_untrusted(hops: list[str], trust: ProxyTrust) -> str | None:
    for hop in reversed(hops):
        if not trust.trusts(hop):
            return hop
    return hops[0] if hops else None


def _parse_forwarded(values: list[bytes]) -> list[dict[str, str]]:
    """RFC 7239 elements, in order, each a dict of lower-cased parameter names."""
    elements: list[dict[str, str]] = []
    for value in values:
        for element in value.decode("latin-1").split(","):
            params: dict[str, str] = {}
            for pair in element.split(";"):
                key, sep, val = pair.partition("=")
                if sep:
                    params[key.strip().lower()] = val.strip().strip('"')
            elements.append(params)
    return elements


def _node_host(node: str) -> str:
    """The address part of a Forwarded ``for`` node: ``[2001:db8::1]:80`` -> ``2001:db8::1``."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


def read_forwarded(headers: list[tuple[bytes, bytes]], trust: ProxyTrust) -> Forwarded | None:
    """Extract forwarding information, or None when the request carries none."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in PROXY_HEADERS:
            found.setdefault(name, []).append(value)
    if not found:
        return None
    fwd = Forwarded()
    if b"forwarded" in found:
        elements = _parse_forwarded(found[b"forwarded"])
        # Walk from the nearest proxy back until an untrusted hop: that element is the
        # one our trusted proxies vouch for.
        chosen: dict[str, str] | None = None
        for element in reversed(elements):
            chosen = element
            node = element.get("for")
            if node is None or not trust.trusts(_node_host(node)):
                break
        if chosen is not None:
            if "for" in chosen:
                fwd.client = _node_host(chosen["for"])
            if "proto" in chosen:
                fwd.scheme = chosen["proto"].lower()
            if "host" in chosen:
                fwd.host = chosen["host"].encode("latin-1")
        return fwd
    if b"x-forwarded-for" in found:
        # Some proxies append a port ("203.0.113.7:4711", "[2001:db8::7]:4711"): keep the address.
        hops = [_node_host(h.strip()) for v in found[b"x-forwarded-for"] for h in v.decode("latin-1").split(",")
                if h.strip()]
        fwd.client = _rightmost_untrusted(hops, trust)
    if b"x-forwarded-proto" in found:
        fwd.scheme = found[b"x-forwarded-proto"][-1].decode("latin-1").split(",")[-1].strip().lower()
    if b"x-forwarded-host" in found:
        fwd.host = found[b"x-forwarded-host"][-1].split(b",")[-1].strip()
    if b"x-forwarded-port" in found:
        try:
            fwd.port = int(found[b"x-forwarded-port"][-1].split(b",")[-1].strip())
        except ValueError:
            pass
    if b"x-forwarded-prefix" in found:
        prefix = found[b"x-forwarded-prefix"][-1].decode("latin-1").split(",")[-1].strip().rstrip("/")
        if prefix.startswith("/"):
            fwd.prefix = prefix
    return fwd


def apply_forwarded(scope: Scope, fwd: Forwarded, websocket: bool) -> None:
    """Rewrite a scope in place with what trusted proxies forwarded."""
    if fwd.client:
        # The peer's port belongs to the proxy's connection, not to the client: 0 (unknown),
        # as uvicorn does.
        scope["client"] = (fwd.client, 0)
    if fwd.scheme in ("http", "https", "ws", "wss"):
        scheme = fwd.scheme
        if websocket:
            scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        else:
            scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        scope["scheme"] = scheme
    if fwd.host:
        scope["headers"] = [(n, fwd.host if n == b"host" else v) for n, v in scope["headers"]]
    if fwd.port is not None and scope.get("server"):
        scope["server"] = (scope["server"][0], fwd.port)
    if fwd.prefix:
        # The proxy mounted us below this prefix and stripped it: like root_path, it is
        # part of the public path.
        scope["root_path"] = fwd.prefix + scope["root_path"]
        scope["path"] = fwd.prefix + scope["path"]
        scope["raw_path"] = fwd.prefix.encode("latin-1") + scope["raw_path"]


def _address(info: Any) -> Address | None:
    # IPv4 (host, port) as the transport gives it; IPv6 (host, port, flow, scope) trimmed.
    if isinstance(info, tuple) and len(info) >= 2:
        if len(info) == 2 and isinstance(info[0], str) and isinstance(info[1], int):
            return info
        return (str(info[0]), int(info[1]))
    return None


class ConnectionInfo:
    """What every scope of one connection shares, worked out once when it is made.

    Args:
        peername: the transport's ``peername`` (an address tuple, or a UNIX socket's "").
        sockname: the transport's ``sockname`` (an address tuple, or a UNIX socket's path).
        tls: the connection is TLS (``https`` / ``wss``).
        tls_info: the ASGI ``tls`` extension of a TLS connection (``fastgate.tls``), or None.
        root_path: ``--root-path``.
        state: the lifespan state, copied into every scope.
        trust: which peers may set forwarding headers.
    """

    __slots__ = ("client", "server", "scheme", "root_path", "state", "trust", "proxy_trusted", "tls_info",
                 "extensions")

    def __init__(self, peername: Any, sockname: Any, *, tls: bool = False, root_path: str = "",
                 state: dict[str, Any] | None = None, trust: ProxyTrust | None = None,
                 tls_info: dict[str, Any] | None = None) -> None:
        self.client = _address(peername)
        server: ServerAddress | None = _address(sockname)
        unix = isinstance(sockname, str)
        if server is None and unix:
            server = (sockname, None)  # UNIX socket: the path, no port
        self.server = server
        self.scheme = "https" if tls else "http"
        self.tls_info = tls_info
        # Every HTTP connection sends files (zero copy in the clear, read in chunks under TLS).
        self.extensions: dict[str, Any] = {"http.response.pathsend": {}}
        if tls_info is not None:
            self.extensions["tls"] = tls_info
        self.root_path = root_path
        self.state: dict[str, Any] = state if state is not None else {}
        self.trust = trust = trust or ProxyTrust(None, enabled=False)
        # A UNIX-socket peer is local: trusted like any address in the allow-list's default.
        self.proxy_trusted = trust.enabled and trust.trusts(
            None if unix else (self.client[0] if self.client else None))


def build_scope(head: RequestHead, info: ConnectionInfo, subprotocols: list[str] | None = None) -> Scope:
    """The ASGI scope of one request (www spec 2.5).

    Args:
        head: the request head.
        info: the connection's shared facts.
        subprotocols: for a WebSocket upgrade, the subprotocols the client offered: the
            scope is then a ``websocket`` scope; None for an ``http`` scope.
    """
    raw_path = head.raw_path
    # Most paths are plain ASCII without escapes: decode them inline.
    path = raw_path.decode("ascii") if raw_path.isascii() and _PERCENT not in raw_path else decode_path(raw_path)
    root_path = info.root_path
    if root_path:
        # The path includes root_path, as uvicorn and the clarified spec have it (asgiref
        # #229): the proxy stripped the prefix, the app sees the full public path.
        path = root_path + path
        raw_path = root_path.encode("utf-8") + raw_path
    scope: Scope = {
        "type": "http",
        "asgi": {"version": ASGI_VERSION, "spec_version": WWW_SPEC_VERSION},
        "http_version": head.http_version,
        "server": info.server,
        "client": info.client,
        "scheme": info.scheme,
        "root_path": root_path,
        "path": path,
        "raw_path": raw_path,
        "query_string": head.query_string,
        "headers": head.headers,
        "state": info.state.copy(),
        # The connection's extensions (pathsend; tls on a TLS connection), a copy per request.
        "extensions": info.extensions.copy(),
    }
    websocket = subprotocols is not None
    if websocket:
        scope["type"] = "websocket"
        scope["scheme"] = "wss" if info.scheme == "https" else "ws"
        scope["subprotocols"] = subprotocols
        extensions = scope["extensions"]
        del extensions["http.response.pathsend"]
        extensions["websocket.http.response"] = {}
    else:
        scope["method"] = head.method
        if head.te_trailers:  # trailers only to a client that said it takes them
            scope["extensions"]["http.response.trailers"] = {}
    if head.forwarded and info.proxy_trusted:
        fwd = read_forwarded(head.headers, info.trust)
        if fwd is not None:
            apply_forwarded(scope, fwd, websocket)
    return scope
