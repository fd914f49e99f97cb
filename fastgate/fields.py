"""HTTP field syntax (RFC 9110 §5): the one check for every header fastgate writes.

A header reaches the wire from four places: the app's ``http.response.start``, its
``websocket.accept`` (headers and subprotocol), its ``websocket.http.response.start``
denial, and the operator's ``--header``. Each path calls ``check_field`` (or, for the
subprotocol, ``is_token``) before a byte is written, so a CR/LF/NUL in any of them is
refused the same way instead of splitting the response (CWE-113).

The module is a leaf (stdlib only) so that ``config`` can use it as well as ``http``
and ``ws``.
"""

from __future__ import annotations

import re
from typing import Any

from fastgate.errors import LocalProtocolError

# field-name = token; token = 1*tchar (RFC 9110 §5.1, §5.6.2).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# field-value = *field-content: VCHAR, obs-text, SP and HTAB; every other control byte
# (NUL, CR, LF, the rest of C0, DEL) is invalid (RFC 9110 §5.5).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

is_token_bytes = _TOKEN.fullmatch
find_bad_value_byte = _BAD_VALUE.search


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token (a header name, a WebSocket subprotocol)."""
    return text.isascii() and _TOKEN.fullmatch(text.encode("ascii")) is not None


def check_field(name: Any, value: Any) -> None:
    """Refuse a header the app (or operator) handed us unless it is a valid field line.

    Args:
        name: the field name; must be ``bytes`` and a token.
        value: the field value; must be ``bytes`` without control bytes other than HTAB.

    Raises:
        LocalProtocolError: naming the header, for the caller to turn into a refusal.
    """
    if not isinstance(name, bytes) or not isinstance(value, bytes):
        raise LocalProtocolError(f"header names and values must be bytes, got {name!r}: {value!r}")
    if _TOKEN.fullmatch(name) is None:
        raise LocalProtocolError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value) is not None:
        raise LocalProtocolError(f"invalid header value for {name!r}: {value!r}")


# An X-Request-ID from a proxy is copied into access logs and echoed in a response header:
# only a bounded run of token characters plus the separators common ids use (UUIDs, base64
# with '/', '+', '=', AWS-style "Root=1-..." with ':' and '@'). Anything else is replaced
# by a generated id rather than escaped, so a log query can trust the field's shape.
REQUEST_ID_MAX = 200
_REQUEST_ID = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z/:=@]{1," + str(REQUEST_ID_MAX).encode() + rb"}")


def is_request_id(value: bytes) -> bool:
    """Whether an incoming ``X-Request-ID`` value may be used as it is."""
    return _REQUEST_ID.fullmatch(value) is not None


# Host = uri-host [ ":" port ] (RFC 9110 §7.2), uri-host from RFC 3986 §3.2.2: an IP
# literal in brackets, or a reg-name of unreserved / pct-encoded / sub-delims (IPv4 is a
# reg-name lexically). An empty value is allowed: RFC 9112 §3.2 has clients send one when
# the target has no authority. What it keeps out are the bytes a URL builder would read as
# structure: '/', '?', '#', '@', '\\', spaces, quotes, angle brackets.
_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::([0-9]*))?"
)


def is_valid_host(value: bytes) -> bool:
    """Whether ``value`` is a valid Host header value (or absolute-form authority).

    The grammar allows any run of digits as a port; one above 65535 names no port at all,
    so it is refused too.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    port = match.group(1)
    return not port or (len(port) <= 5 and int(port) <= 65535)


def status_code(value: Any, *, low: int = 200) -> int:
    """The app's status as a plain ``int`` in ``low``..599.

    ASGI says the status is an int; ``http.HTTPStatus.OK`` is one (an int subclass), as
    uvicorn and hypercorn accept it. ``True`` is an int subclass too, but no status.

    Raises:
        LocalProtocolError: not an int, a bool, or out of range.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"status must be an int, got {value!r}")
    code = int(value)  # a plain int: logs and JSON show 200, not HTTPStatus.OK
    if not low <= code <= 599:
        raise LocalProtocolError(f"invalid status code {value!r}")
    return code
