"""TLS: the server's ``SSLContext`` built from ``TLSSettings``, and the ASGI ``tls`` extension.

The context is built in the process that uses it (a worker, or the single process), never
stored on the configuration. The master builds one before forking, and again on SIGHUP
before a new generation starts, only to check the files: a missing file, a key that does
not match the certificate or a wrong password is one ``ConfigError`` line naming the flag.

Policy, and why:

* TLS 1.2 is the floor. TLS 1.0 and 1.1 were deprecated by RFC 8996 (2021): they rely on
  SHA-1 and CBC constructions with known attacks, and every maintained client speaks 1.2.
  ``--ssl-version`` may raise the floor to 1.3, never lower it.
* ALPN offers ``http/1.1`` only: fastgate speaks no HTTP/2, and a client that asked for h2
  must be told so in the handshake rather than find out from the first bytes.
* Compression off, and OpenSSL's server cipher order: what ``ssl.create_default_context``
  does for a server too.
"""

from __future__ import annotations

import ssl
from typing import Any

from fastgate.config import Config, tls_minimum
from fastgate.errors import ConfigError

ALPN = ["http/1.1"]

# TLS versions as the ``tls`` extension spells them (the wire numbers of RFC 8446 §4.2.1).
_VERSION_NUMBERS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _read_text(flag: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror}") from None


def server_context(config: Config) -> ssl.SSLContext:
    """A server ``SSLContext`` from the TLS options.

    Raises:
        ConfigError: one line naming the flag whose file is missing, unreadable or wrong
            (not PEM, key not matching the certificate, wrong password).
    """
    t = config.tls
    certfile = t.ssl_certfile
    if certfile is None:
        raise ConfigError("--ssl-certfile: no certificate configured")
    cert_text = _read_text("--ssl-certfile", certfile)
    key_flag, key_path = ("--ssl-keyfile", t.ssl_keyfile) if t.ssl_keyfile is not None else ("--ssl-certfile", certfile)
    key_text = _read_text(key_flag, key_path) if t.ssl_keyfile is not None else cert_text
    # OpenSSL's errors here say "PEM lib" for most causes: what is wrong is read from the files.
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"--ssl-certfile: no PEM certificate in {certfile!r}")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"{key_flag}: no PEM private key in {key_path!r}"
                          + ("" if t.ssl_keyfile is not None else " (give the key with --ssl-keyfile)"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls_minimum(config) == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    password = t.ssl_keyfile_password
    try:
        # The password goes in as a callable so that an encrypted key without one fails
        # instead of prompting on the terminal.
        ctx.load_cert_chain(certfile, t.ssl_keyfile, password=lambda: (password or "").encode())
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{key_flag}: the private key in {key_path!r} does not match the certificate in "
                              f"--ssl-certfile") from None
        if "ENCRYPTED" in key_text:
            what = "is wrong" if password is not None else "is missing: the key is encrypted"
            raise ConfigError(f"--ssl-keyfile-password: the password of {key_path!r} {what}") from None
        raise ConfigError(f"{key_flag}: cannot load the certificate and key ({exc.reason or exc})") from None
    if t.ssl_ca_certs is not None:
        _read_text("--ssl-ca-certs", t.ssl_ca_certs)
        try:
            ctx.load_verify_locations(cafile=t.ssl_ca_certs)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ssl-ca-certs: {t.ssl_ca_certs!r} holds no usable PEM certificate ({exc.reason})"
                              ) from None
    ctx.verify_mode = ssl.VerifyMode(t.ssl_cert_reqs)
    if t.ssl_ciphers is not None:
        try:
            ctx.set_ciphers(t.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers: OpenSSL accepts no cipher in {t.ssl_ciphers!r}") from None
    ctx.set_alpn_protocols(ALPN)
    return ctx


def server_cert_pem(config: Config) -> str | None:
    """The first certificate of ``--ssl-certfile`` as PEM (the ``server_cert`` of the scope)."""
    path = config.tls.ssl_certfile
    if path is None:
        return None
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.find(end_marker, begin)
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(end_marker)] + "\n"


class CipherIds:
    """IANA cipher-suite numbers by OpenSSL name (``cipher_suite`` is a 16-bit number; the
    ssl module gives the name), read once from the context."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        # OpenSSL's id is 0x0300XXXX for a TLS suite whose IANA number is XXXX.
        self.by_name = {c["name"]: c["id"] & 0xFFFF for c in ctx.get_ciphers()}


def tls_extension(ssl_object: Any, server_cert: str | None, ciphers: CipherIds) -> dict[str, Any]:
    """The ASGI ``tls`` extension (asgiref specs/tls.rst) of one handshaken connection.

    ``client_cert_error`` is always None: a client certificate that fails verification
    fails the handshake (OpenSSL aborts it for CERT_OPTIONAL and CERT_REQUIRED alike), so
    no scope ever sees one.
    """
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        # Python < 3.13 exposes the peer's leaf only; the chain is that one certificate.
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        name = _rfc4514(ssl_object.getpeercert().get("subject", ()))
    cipher = ssl_object.cipher()
    return {
        "server_cert": server_cert,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _VERSION_NUMBERS.get(ssl_object.version() or ""),
        "cipher_suite": ciphers.by_name.get(cipher[0]) if cipher else None,
    }


_RFC4514_KEYS = {"commonName": "CN", "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
                 "organizationName": "O", "organizationalUnitName": "OU", "streetAddress": "STREET",
                 "domainComponent": "DC", "userId": "UID"}


def _rfc4514(subject: Any) -> str:
    """A subject as ``getpeercert()`` gives it, as an RFC 4514 string (last RDN first)."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_RFC4514_KEYS.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(rdns)


def _escape(value: str) -> str:
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def check(config: Config) -> None:
    """Build the context once to check the files, and drop it (the master's check).

    Raises:
        ConfigError: as ``server_context``; nothing when no listener serves TLS.
    """
    if config.tls_enabled:
        server_context(config)
