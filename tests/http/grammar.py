"""Hypothesis strategies for HTTP/1.1 requests: a grammar of valid-ish requests, and mutations.

``requests()`` builds requests part by part (method, target, version, header fields, body
framing and body) from choices that are mostly valid, with the odd cases hostile peers send
mixed in: absolute-form and asterisk targets, fragments, CTLs and obs-text, obs-fold, bare
LF/CR line ends, duplicated Host / Content-Length / Transfer-Encoding, chunked bodies with
extensions and trailers, pipelined sequences. ``mutate()`` then damages the bytes the way a
broken or malicious peer would: byte flips, inserted or deleted CR, LF, NUL, SP, HTAB,
truncation, duplicated lines.

The first element of every ``sampled_from`` is the ordinary choice, so that hypothesis
shrinks a failing example towards a plain request and the odd part that matters stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import strategies as st

CRLF = b"\r\n"
T = TypeVar("T")

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
           b"CONNECT", b"get", b"FOO", b"M-SEARCH", b"PRI", b"SOURCE", b"G\x00T", b""]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"RTSP/1.0",
            b"ICE/1.0", b"HTTP/1.10", b"HTTP/11", b"HTTP/1.1 ", b"HTTP/ 1.1", b""]

# Path characters: RFC 3986 pchar first, then what RFC 3986 leaves out but peers send.
_PCHAR = b"abcxyzABC019-._~!$&'()*+,;=:@%2F"
_PCHAR_LIST = [bytes((c,)) for c in _PCHAR]
_ODD_TARGET = [b"%zz", b"%", b'"', b"<", b">", b"\\", b"^", b"`", b"{", b"|", b"}", b"#frag", b"?",
               b"\x80", b"\xc3\xa9", b"\xff", b"\x7f", b"\x00", b"\t", b" ", b"\x01"]
HOSTS = [b"example.com", b"a", b"127.0.0.1", b"[::1]", b"example.com:8080", b"a:80", b"[::1]:443",
         b"xn--bcher-kva.example", b"a:", b"a b", b"a:abc", b"user@a", b"a/b", b"", b"a,b", b"[::1",
         b"a:99999", b"a\tb", b"\xc3\xa9.example", b"_under.example", b"a;b", b"a%20b"]
SCHEMES = [b"http", b"https", b"HTTP", b"ftp", b"ws", b""]

# Header names: ordinary and special first, then invalid tokens.
NAMES = [b"Accept", b"User-Agent", b"X-Thing", b"Cookie", b"Connection", b"Expect", b"Upgrade",
         b"X-Forwarded-For", b"Forwarded", b"Content-Type", b"Sec-WebSocket-Key", b"Te", b"Trailer",
         b"ACCEPT", b"x-\xc3\xa9", b"X Thing", b"X-Thing ", b" X-Thing", b"X\tThing", b"X:Thing", b"",
         b"X\x00", b"X\x7f", b"X(Y)", b"X\"Y", b"{X}"]
_VALUE_CHARS = [b"v", b"abc", b"1", b"text/html", b";q=0.9", b",", b"=", b'"q"', b" ", b"\t", b"\x80",
                b"\xc3\xa9", b"\xff", b"\x7f", b"\x01", b"\x00", b"\x0b", b"\x0c", b"\x1f", b"\r", b"\n"]
CONNECTION = [b"keep-alive", b"close", b"upgrade", b"Upgrade", b"keep-alive, upgrade", b"CLOSE", b"close, te",
              b"", b"foo"]
UPGRADE = [b"websocket", b"h2c", b"WebSocket", b"websocket, h2c", b"", b"foo/1"]
EXPECT = [b"100-continue", b"100-CONTINUE", b"200-ok", b""]
TE_VALUES = [b"chunked", b"Chunked", b"CHUNKED", b"gzip, chunked", b"chunked, gzip", b"identity", b"gzip",
             b"chunked ", b" chunked", b"", b"chunked;q=1", b"x-chunked", b"chunked, chunked", b"\tchunked"]
CL_ODD = [b"+5", b"-1", b"5, 5", b"0x5", b"5 5", b"", b"1e3", b" 5", b"5 ", b"99999999999999999999999",
          b"\x005", b"\xd9\xa3"]
EOLS = [CRLF, b"\n", b"\r", b"\r\r\n", b"\n\r"]
CHUNK_EXTS = [b"", b";a=b", b";a", b';a="b c"', b"; a = b", b";\x00", b";" + b"x" * 40, b"\t;a"]


@dataclass
class Request:
    """One request as parts; ``render()`` gives the bytes."""

    method: bytes = b"GET"
    target: bytes = b"/"
    version: bytes = b"HTTP/1.1"
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""  # already framed (chunked or sized)
    eol: bytes = CRLF  # line end of the head
    sep: bytes = b" "  # between the request-line parts
    fold: int | None = None  # obs-fold the value of this field index onto a second line
    ws_before_first_field: bool = False

    def render(self) -> bytes:
        eol = self.eol
        lines = [self.method + self.sep + self.target + self.sep + self.version]
        if self.ws_before_first_field:
            lines.append(b" X-Early: 1")
        for index, (name, value) in enumerate(self.fields):
            if index == self.fold:
                head, _, tail = value.partition(b" ")
                lines.append(name + b": " + head)
                lines.append(b" " + (tail or b"folded"))
            else:
                lines.append(name + b": " + value)
        return eol.join(lines) + eol + eol + self.body


_PERMILLE = st.integers(0, 999)
_BYTE = st.integers(0, 255)


# Internal helpers take ``draw`` and return values: building composite strategies inside a
# draw (and hypothesis validating each new one) costs far more than the parsing under test.


def _odd(draw: st.DrawFn, p: float) -> bool:
    """True with probability about ``p``.

    Hypothesis draws booleans evenly, and integers with a bias towards small values (about
    a quarter of them fall in the lowest 15 %): the top of the range is taken as "odd" so
    that p stays near what it says, and shrinking (towards 0) leads to the ordinary choice.
    """
    return bool(draw(_PERMILLE) >= 1000 - p * 1000)


def _int(draw: st.DrawFn, low: int, high: int) -> int:
    return int(draw(st.integers(low, high)))


def pick(draw: st.DrawFn, choices: Sequence[T]) -> T:
    """One of ``choices``, shrinking towards the first."""
    return choices[_int(draw, 0, len(choices) - 1)]


def _bytes(draw: st.DrawFn, low: int, high: int) -> bytes:
    return bytes(draw(st.binary(min_size=low, max_size=high)))


def _word(draw: st.DrawFn, alphabet: Sequence[bytes], high: int) -> bytes:
    """Up to ``high`` pieces of ``alphabet`` in one draw (a draw per piece costs too much)."""
    return b"".join(alphabet[b % len(alphabet)] for b in _bytes(draw, 0, high))


def _path(draw: st.DrawFn) -> bytes:
    path = b"/" + _word(draw, _PCHAR_LIST, 12)
    if _odd(draw, 0.25):
        at = _int(draw, 1, len(path))
        path = path[:at] + pick(draw, _ODD_TARGET) + path[at:]
    if _odd(draw, 0.3):
        path += b"?" + pick(draw, [b"q=1", b"a=b&c=d", b"", b"x=%20y", b"a=/?", b"q=\xc3\xa9"])
    if _odd(draw, 0.05):
        path += b"#" + pick(draw, [b"frag", b"", b"a?b"])
    return path


def _target(draw: st.DrawFn) -> bytes:
    kind = pick(draw, ["origin", "absolute", "asterisk", "authority", "odd"])
    if kind == "origin":
        return _path(draw)
    if kind == "absolute":
        scheme = pick(draw, SCHEMES)
        host = pick(draw, HOSTS)
        return scheme + b"://" + host + (_path(draw) if _odd(draw, 0.8) else b"")
    if kind == "asterisk":
        return b"*"
    if kind == "authority":
        return pick(draw, HOSTS)
    return pick(draw, [b"", b"a", b"//a", b"?q", b"/a b", b"http:/a", b"/\x00", b"**"])


def _value(draw: st.DrawFn) -> bytes:
    value = _word(draw, _VALUE_CHARS[:10], 6)
    if _odd(draw, 0.2):
        at = _int(draw, 0, len(value))
        value = value[:at] + pick(draw, _VALUE_CHARS) + value[at:]
    return value


def _chunked_body(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(_int(draw, 0, 4)):
        data = _bytes(draw, 1, 20)
        size = b"%x" % len(data)
        if _odd(draw, 0.1):  # a lie about the size, or an odd spelling of it
            size = pick(draw, [b"%x" % (len(data) + 1), b"0" + size, b"%X" % len(data), b" " + size, size + b" ",
                               b"-1", b"g", b"", b"0x" + size, b"f" * 17])
        ext = pick(draw, CHUNK_EXTS) if _odd(draw, 0.2) else b""
        out.append(size + ext + CRLF + data + (b"\n" if _odd(draw, 0.05) else CRLF))
    last = b"0" + (pick(draw, CHUNK_EXTS) if _odd(draw, 0.2) else b"") + CRLF
    trailers = b""
    if _odd(draw, 0.2):
        for _ in range(_int(draw, 1, 2)):
            trailers += pick(draw, [b"X-Trailer", b"Expires", b"X Bad", b""]) + b": " + _value(draw) + CRLF
    return b"".join(out) + last + trailers + CRLF


def _request(draw: st.DrawFn, odd: float) -> Request:
    req = Request()

    def weird() -> bool:
        return _odd(draw, odd)

    req.method = pick(draw, METHODS) if weird() else pick(draw, METHODS[:7])
    req.target = _target(draw) if weird() else _path(draw)
    req.version = pick(draw, VERSIONS) if weird() else pick(draw, VERSIONS[:2])
    fields: list[tuple[bytes, bytes]] = []
    for _ in range(pick(draw, [1, 0, 2]) if weird() else 1):
        host = pick(draw, HOSTS) if weird() else pick(draw, HOSTS[:7])
        fields.append((pick(draw, [b"Host", b"host", b"HOST"]), host))
    for _ in range(_int(draw, 0, 4)):
        name = pick(draw, NAMES) if weird() else pick(draw, NAMES[:10])
        lname = name.lower()
        if lname == b"connection":
            value = pick(draw, CONNECTION)
        elif lname == b"upgrade":
            value = pick(draw, UPGRADE)
        elif lname == b"expect":
            value = pick(draw, EXPECT)
        else:
            value = _value(draw)
        if weird():  # optional whitespace around the value (RFC 9112 §5.1 OWS)
            value = pick(draw, [b" ", b"\t", b"  "]) + value + pick(draw, [b"", b" ", b"\t"])
        fields.append((name, value))

    if _odd(draw, 0.1):  # a WebSocket upgrade (with a body now and then, which it must not have)
        fields += [(b"Connection", pick(draw, [b"Upgrade", b"keep-alive, upgrade", b"close, upgrade"])),
                   (b"Upgrade", pick(draw, UPGRADE)),
                   (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")]
    framing = pick(draw, ["none", "length", "chunked"])
    if weird():
        framing = pick(draw, ["both", "te-odd"])  # CL + TE (smuggling), or an odd coding
    if framing in ("length", "both"):
        data = _bytes(draw, 0, 40)
        lengths = [b"%d" % len(data)]
        if weird():
            lengths = pick(draw, [[b"%d" % len(data)] * 2, [b"%d" % len(data), b"%d" % (len(data) + 1)],
                                  [b"0%d" % len(data)], [pick(draw, CL_ODD)]])
        for value in lengths:
            fields.append((pick(draw, [b"Content-Length", b"content-length", b"CONTENT-LENGTH"]), value))
        req.body = data
    if framing in ("chunked", "both", "te-odd"):
        te = [b"chunked"]
        if framing == "te-odd":
            te = pick(draw, [[pick(draw, TE_VALUES)], [b"chunked", b"chunked"], [b"gzip", b"chunked"]])
        for value in te:
            fields.append((pick(draw, [b"Transfer-Encoding", b"transfer-encoding"]), value))
        req.body = _chunked_body(draw)
    if weird() and len(fields) > 1:  # the order of fields, e.g. Content-Length before Host
        fields.insert(_int(draw, 0, len(fields) - 1), fields.pop())
    req.fields = fields
    if weird():
        req.eol = pick(draw, EOLS)
    if weird():
        req.sep = pick(draw, [b"  ", b"\t", b" \t"])
    if weird() and req.fields:
        req.fold = _int(draw, 0, len(req.fields) - 1)
    req.ws_before_first_field = weird() and weird()
    return req


def _pipeline(draw: st.DrawFn, odd: float, max_requests: int) -> bytes:
    data = b"".join(_request(draw, odd).render() for _ in range(_int(draw, 1, max_requests)))
    if _odd(draw, odd):
        data += pick(draw, [CRLF, CRLF * 2, b"\x00", b"garbage", b"GET / HTTP/1.1\r\n"])
    return data


_INSERTS = [b"\r", b"\n", b"\x00", b" ", b"\t", CRLF]


def mutate(draw: st.DrawFn, data: bytes, max_mutations: int) -> bytes:
    """``data`` with 1 to ``max_mutations`` edits: bytes flipped, set, inserted (CR, LF, NUL,
    SP, HTAB) or deleted, a truncation, a CRLF-delimited line duplicated or dropped."""
    buf = bytearray(data)
    for _ in range(_int(draw, 1, max_mutations)):
        kind = pick(draw, ["insert", "flip", "delete", "truncate", "dup-line", "drop-line", "set"])
        at = _int(draw, 0, max(len(buf) - 1, 0))
        if kind == "insert":
            buf[at:at] = pick(draw, _INSERTS)
        elif not buf:
            continue
        elif kind == "flip":
            buf[at] ^= pick(draw, [0x20, 0x01, 0x80, 0xFF, 0x0D, 0x0A])
        elif kind == "set":
            buf[at] = draw(_BYTE)
        elif kind == "delete":
            del buf[at : at + _int(draw, 1, 3)]
        elif kind == "truncate":
            del buf[at:]
        else:
            lines = bytes(buf).split(CRLF)
            index = _int(draw, 0, len(lines) - 1)
            if kind == "dup-line":
                lines.insert(index, lines[index])
            else:
                del lines[index]
            buf = bytearray(CRLF.join(lines))
    return bytes(buf)


# ---------------------------------------------------------------- public strategies


@st.composite
def requests(draw: st.DrawFn, *, odd: float = 0.15) -> Request:
    """One request. ``odd`` is the probability of each odd choice (0: only valid requests)."""
    return _request(draw, odd)


@st.composite
def pipelines(draw: st.DrawFn, *, odd: float = 0.15, max_requests: int = 3) -> bytes:
    """One to ``max_requests`` requests back to back, maybe followed by stray bytes."""
    return _pipeline(draw, odd, max_requests)


@st.composite
def mutated(draw: st.DrawFn, *, odd: float = 0.15, max_mutations: int = 3) -> bytes:
    """A pipeline damaged by up to ``max_mutations`` edits a broken or hostile peer would make."""
    return mutate(draw, _pipeline(draw, odd, 3), max_mutations)


@st.composite
def hostile(draw: st.DrawFn, *, odd: float = 0.15) -> bytes:
    """Grammar requests, mutated about half of the time, or (rarely) random bytes."""
    kind = pick(draw, ["grammar", "mutated", "mutated", "random"])
    if kind == "random":
        return _bytes(draw, 0, 200)
    data = _pipeline(draw, odd, 3)
    return mutate(draw, data, 3) if kind == "mutated" else data


def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into pieces at random points (whole, byte by byte, or anything between)."""
    how = pick(draw, ["random", "whole", "bytes"])
    if how == "whole" or len(data) < 2:
        return [data] if data else []
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({_int(draw, 1, len(data) - 1) for _ in range(_int(draw, 1, 8))})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
