"""Configuration: one frozen tree of plain values, each option declared exactly once.

Every option is a dataclass field whose ``metadata`` carries its command-line flag, help
text and value kind. The CLI (``cli.py``), the environment reader (``FASTGATE_<NAME>``),
the TOML loader and ``--print-config`` are all generated from those fields, so adding an
option means adding one field here and nothing else.

Precedence, lowest first: defaults < TOML file < environment < command line.

Runtime objects (sockets, SSL contexts, the loaded app) are never stored here: they are
built from these values in the process that uses them.

The module is long because it is the list of options: one field per option, with its flag
and help text, and the checks that tie options together. Splitting it would split that list.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastgate.errors import ConfigError, LocalProtocolError
from fastgate.fields import check_field, is_token

ENV_PREFIX = "FASTGATE_"

# Value kinds understood by the parsers below.
BOOL, INT, FLOAT, STR, LIST = "bool", "int", "float", "str", "list"


def option(
    default: Any,
    help: str,
    *,
    kind: str,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    optional: bool = False,
    env: tuple[str, ...] = (),
    metavar: str | None = None,
    separator: str = ",",
) -> Any:
    """Declare one option: its default, CLI flag, help text and how to parse it.

    Args:
        default: value when no source sets it.
        help: one sentence for ``--help``.
        kind: one of ``bool``, ``int``, ``float``, ``str``, ``list``.
        flag: CLI flag; defaults to ``--`` plus the field name with dashes.
        choices: allowed string values.
        optional: ``None`` is a valid value (written ``none`` or empty in env/CLI).
        env: extra environment variables honoured besides ``FASTGATE_<NAME>``
            (lowest precedence among environment variables).
        metavar: placeholder in ``--help``.
        separator: for lists, what separates items in one env/CLI value (a repeated flag
            always adds one item per occurrence).
    """
    meta = {
        "help": help,
        "kind": kind,
        "flag": flag,
        "choices": choices,
        "optional": optional,
        "env": env,
        "metavar": metavar,
        "separator": separator,
    }
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    app: str = option("", "The ASGI application, as MODULE:ATTRIBUTE.", kind=STR, metavar="MODULE:ATTR")
    factory: bool = option(False, "Treat APP as a zero-argument factory that returns the ASGI app.", kind=BOOL)
    app_dir: str = option(".", "Directory prepended to sys.path before importing the app.", kind=STR)
    interface: str = option(
        "auto", "ASGI interface: auto-detect, ASGI 3 or ASGI 2 (double callable).", kind=STR,
        choices=("auto", "asgi3", "asgi2"),
    )
    lifespan: str = option(
        "auto", "Lifespan protocol: 'auto' tolerates apps without it.", kind=STR, choices=("auto", "on", "off")
    )
    timeout_lifespan: float = option(60.0, "Seconds lifespan startup (and shutdown) may take.", kind=FLOAT)
    root_path: str = option("", "ASGI root_path for apps mounted below a URL prefix.", kind=STR)
    preload: bool = option(
        False,
        "Import the app in the master before forking, so workers share its memory copy-on-write; "
        "each worker still runs the lifespan. SIGHUP then re-executes the master in place to load new code.",
        kind=BOOL,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BindSettings:
    host: str = option("127.0.0.1", "Bind address for TCP.", kind=STR)
    port: int = option(8000, "TCP port; 0 picks a free one (the startup line prints it).", kind=INT)
    uds: str | None = option(None, "Bind a UNIX domain socket at this path.", kind=STR, optional=True)
    uds_mode: str = option("660", "Octal file mode of the UNIX socket.", kind=STR)
    fd: int | None = option(None, "Serve an already-listening socket inherited as this fd.", kind=INT, optional=True)
    bind: tuple[str, ...] = option(
        (), "Listen address, repeatable: HOST:PORT, [::]:PORT, unix:PATH or fd://N; "
        "prefixed 'tls:' (tls:0.0.0.0:8443) it serves TLS.", kind=LIST, metavar="ADDRESS"
    )
    backlog: int = option(2048, "Listen queue length.", kind=INT)
    reuse_port: bool = option(
        False,
        "Share the TCP port with other processes (SO_REUSEPORT without the exclusive-port check). "
        "Workers always get one SO_REUSEPORT socket per slot, held by the master.",
        kind=BOOL,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    http: str = option("auto", "HTTP implementation (httptools is the only one).", kind=STR,
                       choices=("auto", "httptools"))
    limit_request_line: int = option(8190, "Largest request line in bytes (414 above).", kind=INT)
    limit_request_fields: int = option(100, "Most header fields in a request (431 above).", kind=INT)
    limit_request_field_size: int = option(8190, "Largest header field (name + value) in bytes (431 above).", kind=INT)
    timeout_keep_alive: float = option(5.0, "Close idle keep-alive connections after this many seconds.", kind=FLOAT)
    timeout_request_header: float = option(
        10.0, "Seconds a client has to send a complete request head (408 after).", kind=FLOAT
    )
    timeout_request: float | None = option(
        None, "Seconds an app has to finish its response; past them it is cancelled: 503 if nothing was "
        "sent, else the connection closes (WebSocket exempt).", kind=FLOAT, optional=True
    )
    timeout_request_idle: float | None = option(
        None, "Seconds an app may go without sending (before its response and between body messages); "
        "with --timeout-request, a started response is held to this instead, so streams may run long.",
        kind=FLOAT, optional=True
    )
    headers: tuple[str, ...] = option(
        (), "Extra response header, repeatable (in the environment: one per line).", kind=LIST, flag="--header",
        metavar="NAME:VALUE", separator="\n",  # header values contain commas
    )
    server_header: bool = option(True, "Send 'server: fastgate'.", kind=BOOL)
    date_header: bool = option(True, "Send a 'date' header.", kind=BOOL)
    proxy_headers: bool = option(
        True, "Honour X-Forwarded-* and Forwarded from trusted peers (--forwarded-allow-ips).", kind=BOOL
    )
    forwarded_allow_ips: str = option(
        "127.0.0.1,::1", "Comma-separated IPs/CIDRs trusted for proxy headers, or '*'.", kind=STR,
        env=("FORWARDED_ALLOW_IPS",),
    )
    request_id_header: str | None = option(
        None, "Echo each request's id in this response header (e.g. X-Request-ID); the id is a trusted proxy's "
        "X-Request-ID, else generated.", kind=STR, optional=True, metavar="NAME",
    )
    limit_concurrency: int | None = option(
        None, "Most concurrent connections per worker before answering 503.", kind=INT, optional=True
    )
    limit_max_requests: int | None = option(
        None, "Recycle a worker after this many requests (its replacement is ready first).", kind=INT,
        optional=True
    )
    limit_max_requests_jitter: int = option(
        0, "Random 0..J added to --limit-max-requests so workers don't recycle together.", kind=INT
    )
    health_path: str | None = option(
        None, "Liveness path answered by the server itself (200 while the loop runs).", kind=STR, optional=True
    )
    ready_path: str | None = option(
        None, "Readiness path answered by the server (503 before startup and while draining).", kind=STR,
        optional=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketSettings:
    ws: str = option("auto", "WebSocket support ('none': upgrades are plain HTTP).", kind=STR,
                     choices=("auto", "websockets", "none"))
    ws_max_size: int = option(16 * 1024 * 1024, "Largest incoming WebSocket message in bytes (1009 above).", kind=INT)
    ws_max_queue: int = option(32, "Incoming messages buffered before reading pauses.", kind=INT)
    ws_ping_interval: float = option(20.0, "Seconds between keepalive pings; 0 disables.", kind=FLOAT)
    ws_ping_timeout: float = option(20.0, "Seconds to wait for a pong before closing 1011; 0 disables.", kind=FLOAT)
    ws_per_message_deflate: bool = option(True, "Negotiate permessage-deflate compression.", kind=BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSettings:
    workers: int = option(
        1, "Worker processes: a number, 'auto' (usable CPUs), or 0 for a single process without a master.",
        kind=INT, env=("WEB_CONCURRENCY",),
    )
    timeout_graceful_shutdown: float = option(
        30.0, "Seconds in-flight requests may take to finish on shutdown or reload.", kind=FLOAT
    )
    timeout_worker_healthcheck: float = option(
        30.0, "Kill a worker whose event loop has not sent a heartbeat for this many seconds.", kind=FLOAT
    )
    timeout_worker_boot: float = option(60.0, "Seconds a new worker may take to become ready.", kind=FLOAT)
    shutdown_delay: float = option(
        0.0, "On SIGTERM, keep serving (readiness 503) for this many seconds before draining.", kind=FLOAT
    )
    pid_file: str | None = option(None, "Write the master's pid to this file.", kind=STR, optional=True, flag="--pid")
    limit_max_memory: int | None = option(
        None, "Recycle a worker whose RSS exceeds this many MiB (checked at each heartbeat; replacement first).",
        kind=INT, optional=True, metavar="MIB",
    )
    limit_max_lifetime: float | None = option(
        None, "Recycle a worker after it served this many seconds (replacement first).", kind=FLOAT, optional=True,
    )
    limit_max_lifetime_jitter: float = option(
        0.0, "Random 0..J seconds added to --limit-max-lifetime so workers don't recycle together.", kind=FLOAT
    )
    control_socket: str | None = option(
        None, "UNIX socket (mode 0600) for 'fastgate status' and 'fastgate ctl reload|scale N|stop|upgrade'.",
        kind=STR, optional=True, metavar="PATH",
    )
    metrics_bind: str | None = option(
        None, "Serve Prometheus metrics (all workers added up) from the master at HOST:PORT or unix:PATH.",
        kind=STR, optional=True, metavar="ADDRESS",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadSettings:
    reload: bool = option(False, "Restart workers when source files change (development).", kind=BOOL)
    reload_dirs: tuple[str, ...] = option((), "Directory to watch, repeatable (default: current).", kind=LIST,
                                          flag="--reload-dir", metavar="DIR")
    reload_includes: tuple[str, ...] = option(("*.py",), "Glob of files to watch, repeatable.", kind=LIST,
                                              flag="--reload-include", metavar="GLOB")
    reload_excludes: tuple[str, ...] = option((), "Glob of files or dirs to ignore, repeatable.", kind=LIST,
                                              flag="--reload-exclude", metavar="GLOB")
    reload_delay: float = option(0.05, "Seconds to wait for more changes before reloading.", kind=FLOAT)
    reload_poll: bool = option(False, "Poll the file system instead of using OS events.", kind=BOOL)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    log_level: str = option("info", "Log level.", kind=STR,
                            choices=("critical", "error", "warning", "info", "debug", "trace"))
    access_log: bool = option(True, "Write one access-log line per response.", kind=BOOL)
    access_log_format: str | None = option(
        None, "gunicorn-style access-log format, e.g. '%(h)s \"%(r)s\" %(s)s %(b)s %(M)s'.", kind=STR,
        optional=True,
    )
    log_format: str = option("text", "Log line format.", kind=STR, choices=("text", "json"))
    log_file: str | None = option(None, "Write logs to this file (reopened on SIGUSR1).", kind=STR, optional=True)
    log_config: str | None = option(
        None, "Logging configuration file instead of fastgate's own: a dictConfig in .json or .yaml, or an INI "
        "fileConfig.", kind=STR, optional=True, metavar="FILE",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSSettings:
    """TLS, with uvicorn's flag names. The SSLContext is built from these in the process that
    uses it (``fastgate.tls``); the master builds one only to check the files."""

    ssl_certfile: str | None = option(
        None, "Certificate chain file (PEM). Alone, it makes every listener TLS; with 'tls:' binds, only those.",
        kind=STR, optional=True, metavar="FILE",
    )
    ssl_keyfile: str | None = option(
        None, "Private key file (PEM); default: the key is in --ssl-certfile.", kind=STR, optional=True,
        metavar="FILE",
    )
    ssl_keyfile_password: str | None = option(
        None, "Password of an encrypted --ssl-keyfile.", kind=STR, optional=True, metavar="PASSWORD"
    )
    ssl_ca_certs: str | None = option(
        None, "CA certificates (PEM) client certificates are verified against (mutual TLS).", kind=STR,
        optional=True, metavar="FILE",
    )
    ssl_cert_reqs: int = option(
        0, "Client certificates: 0 not asked for, 1 optional (verified if sent), 2 required (as ssl.CERT_*).",
        kind=INT,
    )
    ssl_ciphers: str | None = option(
        None, "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); default: OpenSSL's.", kind=STR,
        optional=True,
    )
    ssl_version: str | None = option(
        None, "Lowest TLS version: TLSv1_2 (always the floor) or TLSv1_3; uvicorn's numbers (ssl.PROTOCOL_*) "
        "are accepted and can only raise the floor.", kind=STR, optional=True,
    )


SECTIONS: dict[str, type] = {
    "app": AppSettings,
    "bind": BindSettings,
    "http": HttpSettings,
    "websocket": WebSocketSettings,
    "process": ProcessSettings,
    "reload": ReloadSettings,
    "log": LogSettings,
    "tls": TLSSettings,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration, one frozen section per concern."""

    app: AppSettings = field(default_factory=AppSettings)
    bind: BindSettings = field(default_factory=BindSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    log: LogSettings = field(default_factory=LogSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)

    def flat(self) -> dict[str, Any]:
        """All options as one ``{name: value}`` mapping (the TOML file's shape)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            for f in dataclasses.fields(obj):
                out[f.name] = getattr(obj, f.name)
        return out

    def diff(self, old: Config) -> set[str]:
        """Names of the options whose value differs from ``old``."""
        new_flat, old_flat = self.flat(), old.flat()
        return {k for k, v in new_flat.items() if old_flat.get(k) != v}

    def listeners_changed(self, old: Config) -> bool:
        """Whether a reload from ``old`` to this config must rebind sockets."""
        return bool(self.diff(old) & {"host", "port", "uds", "uds_mode", "fd", "bind", "backlog", "reuse_port"})

    @property
    def tls_enabled(self) -> bool:
        """Whether any listener serves TLS (a certificate is configured)."""
        return self.tls.ssl_certfile is not None


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option as the CLI/env/TOML readers see it."""

    name: str
    section: str
    kind: str
    default: Any
    help: str
    flag: str
    choices: tuple[str, ...] | None
    optional: bool
    env_names: tuple[str, ...]
    metavar: str | None
    separator: str = ","


def iter_options() -> Iterator[OptionSpec]:
    """Every option, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            m = f.metadata
            yield OptionSpec(
                name=f.name,
                section=section,
                kind=m["kind"],
                default=f.default,
                help=m["help"],
                flag=m["flag"] or "--" + f.name.replace("_", "-"),
                choices=m["choices"],
                optional=m["optional"],
                env_names=(ENV_PREFIX + f.name.upper(), *m["env"]),
                metavar=m["metavar"],
                separator=m["separator"],
            )


OPTIONS: dict[str, OptionSpec] = {o.name: o for o in iter_options()}
_BY_FLAG: dict[str, str] = {o.flag[2:].replace("-", "_"): o.name for o in OPTIONS.values()}


def parse_value(spec: OptionSpec, raw: Any, source: str) -> Any:
    """Convert a raw value (a string from env/CLI, or a TOML value) to the option's kind.

    Raises:
        ConfigError: naming the option, where it came from and what is accepted.
    """

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{spec.flag}: expected {expected}, got {raw!r} (from {source})")

    if spec.optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none"))):
        return None
    kind = spec.kind
    if kind == BOOL:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise fail("true or false")
    if kind == INT:
        if spec.name == "workers" and str(raw).strip().lower() == "auto":
            return available_cpus()
        if isinstance(raw, bool):
            raise fail("an integer")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise fail("an integer") from None
    if kind == FLOAT:
        if isinstance(raw, bool):
            raise fail("a number of seconds")
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise fail("a number") from None
        if not math.isfinite(value):
            raise fail("a finite number")
        return value
    if kind == LIST:
        if isinstance(raw, (list, tuple)):
            return tuple(str(x) for x in raw)
        text = str(raw)
        return tuple(x.strip() for x in text.split(spec.separator) if x.strip())
    text = str(raw)
    if spec.choices and text not in spec.choices:
        raise fail("one of " + ", ".join(spec.choices))
    return text


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The cgroup CPU limit in CPUs (v2 ``cpu.max`` or v1 quota/period), or None."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def read_toml(path: str) -> dict[str, Any]:
    """Read a config file: flat ``name = value`` keys (dashes or underscores).

    A ``[tool.fastgate]`` table (pyproject.toml) or a ``[fastgate]`` table is used
    when present, so the options can live beside other tools' settings.

    Raises:
        ConfigError: the file is missing, is not valid TOML, or names an unknown option.
    """
    import tomllib  # here: only a --config file needs it, and every fastgate process reads this module

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path!r} is not valid TOML: {exc}") from None
    table: Any = data
    if isinstance(data.get("tool"), dict) and "fastgate" in data["tool"]:
        table = data["tool"]["fastgate"]
    elif isinstance(data.get("fastgate"), dict):
        table = data["fastgate"]
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        name = _BY_FLAG.get(name, name)  # the flag's spelling works too: header = [...]
        if name not in OPTIONS:
            hint = closest(key, [o.flag[2:] for o in OPTIONS.values()])
            raise ConfigError(f"--config: unknown option {key!r} in {path!r}"
                              + (f"; did you mean {hint!r}?" if hint else "; see 'fastgate --help'"))
        out[name] = parse_value(OPTIONS[name], value, f"config file {path}")
    return out


# FASTGATE_* variables that are not options.
# handover.ENV, and build.PURE_ENV (FASTGATE_PURE: run the pure-Python build)
NON_OPTION_ENV = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "HANDOVER", ENV_PREFIX + "PURE"})


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most like ``name`` (a mistyped or shortened option), or None.

    A candidate that ``name`` abbreviates wins (the shortest such), then the closest by
    spelling.
    """
    longer = sorted((c for c in candidates if c.startswith(name)), key=len)
    if longer:
        return longer[0]
    import difflib  # here: only a mistyped option needs it

    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options set through ``FASTGATE_<NAME>`` (and the few foreign names like WEB_CONCURRENCY).

    Raises:
        ConfigError: a ``FASTGATE_`` variable names no option (a typo would otherwise be
            silently ignored, and the setting the operator meant never applied).
    """
    known = {name for spec in OPTIONS.values() for name in spec.env_names} | NON_OPTION_ENV
    for env_name in environ:
        if env_name.startswith(ENV_PREFIX) and env_name not in known:
            hint = closest(env_name, sorted(known))
            raise ConfigError(f"environment variable {env_name}: no such option"
                              + (f"; did you mean {hint}?" if hint else "; see 'fastgate --help'"))
    out: dict[str, Any] = {}
    for spec in OPTIONS.values():
        # The FASTGATE_ name wins over foreign ones: check it last.
        for env_name in reversed(spec.env_names):
            if env_name in environ:
                out[spec.name] = parse_value(spec, environ[env_name], f"environment variable {env_name}")
    return out


def build(values: Mapping[str, Any]) -> Config:
    """Build a validated Config from ``{option name: parsed value}``."""
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        per_section[OPTIONS[name].section][name] = value
    config = Config(**{s: SECTIONS[s](**kw) for s, kw in per_section.items()})
    validate(config)
    return config


def load(
    cli_values: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults < TOML file < environment < CLI into a validated Config."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if config_file is None:
        config_file = env.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        merged.update(read_toml(config_file))
    merged.update(read_env(env))
    merged.update(cli_values or {})
    return build(merged)


def validate(config: Config) -> None:
    """Check values that parse but make no sense.

    Raises:
        ConfigError: naming the flag and what to change.
    """
    b, h, w, p = config.bind, config.http, config.websocket, config.process

    def positive(flag: str, value: float | int | None, *, allow_zero: bool = False) -> None:
        if value is None:
            return
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{flag}: must be {bound} (got {value})")

    if not 0 <= b.port <= 65535:
        raise ConfigError(f"--port: must be between 0 and 65535 (got {b.port})")
    try:
        mode = int(b.uds_mode, 8)
    except ValueError:
        raise ConfigError(f"--uds-mode: expected an octal mode such as 660 (got {b.uds_mode!r})") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"--uds-mode: expected an octal mode such as 660 (got {b.uds_mode!r})")
    positive("--backlog", b.backlog)
    positive("--fd", b.fd, allow_zero=True)
    for address in b.bind:
        parse_bind(address)
    validate_tls(config)
    positive("--limit-request-line", h.limit_request_line)
    positive("--limit-request-fields", h.limit_request_fields)
    positive("--limit-request-field-size", h.limit_request_field_size)
    positive("--timeout-keep-alive", h.timeout_keep_alive, allow_zero=True)
    positive("--timeout-request-header", h.timeout_request_header)
    positive("--timeout-request", h.timeout_request)
    positive("--timeout-request-idle", h.timeout_request_idle)
    positive("--limit-concurrency", h.limit_concurrency)
    positive("--limit-max-requests", h.limit_max_requests)
    positive("--limit-max-requests-jitter", h.limit_max_requests_jitter, allow_zero=True)
    for header in h.headers:
        name, sep, value = header.partition(":")
        try:
            check_field(name.strip().encode("latin-1"), value.strip().encode("latin-1"))
        except (LocalProtocolError, UnicodeEncodeError):
            sep = ""
        if not sep:
            raise ConfigError(f"--header: expected NAME:VALUE, a token name and a value without control "
                              f"characters (got {header!r})")
    for flag, path in (("--health-path", h.health_path), ("--ready-path", h.ready_path)):
        if path is not None and not path.startswith("/"):
            raise ConfigError(f"{flag}: must start with '/' (got {path!r})")
    parse_networks(h.forwarded_allow_ips)
    if h.request_id_header is not None and not is_token(h.request_id_header):
        raise ConfigError(f"--request-id-header: {h.request_id_header!r} is not a valid header name")
    if p.metrics_bind is not None:
        parse_metrics_bind(p.metrics_bind)
    positive("--ws-max-size", w.ws_max_size)
    positive("--ws-max-queue", w.ws_max_queue)
    positive("--ws-ping-interval", w.ws_ping_interval, allow_zero=True)
    positive("--ws-ping-timeout", w.ws_ping_timeout, allow_zero=True)
    positive("--workers", p.workers, allow_zero=True)
    positive("--timeout-graceful-shutdown", p.timeout_graceful_shutdown, allow_zero=True)
    positive("--timeout-worker-healthcheck", p.timeout_worker_healthcheck)
    positive("--timeout-worker-boot", p.timeout_worker_boot)
    positive("--shutdown-delay", p.shutdown_delay, allow_zero=True)
    positive("--limit-max-memory", p.limit_max_memory)
    positive("--limit-max-lifetime", p.limit_max_lifetime)
    positive("--limit-max-lifetime-jitter", p.limit_max_lifetime_jitter, allow_zero=True)
    positive("--timeout-lifespan", config.app.timeout_lifespan)
    positive("--reload-delay", config.reload.reload_delay, allow_zero=True)
    if config.reload.reload and p.workers == 0:
        raise ConfigError("--reload: needs the master, which restarts worker processes; use --workers 1 "
                          "(or more) with --reload, or drop --reload to run in one process")
    if config.app.preload and p.workers == 0:
        raise ConfigError("--preload: imports the app in the master before it forks workers; --workers 0 runs "
                          "no master, so use --workers 1 (or more) with --preload, or drop --preload")
    if config.app.root_path and not config.app.root_path.startswith("/"):
        raise ConfigError(f"--root-path: must start with '/' (got {config.app.root_path!r})")


# uvicorn's --ssl-version takes an ssl.PROTOCOL_* number; the ones that name one version.
# Below TLS 1.2 (PROTOCOL_TLSv1 = 3, PROTOCOL_TLSv1_1 = 4) and the "any version" ones
# (PROTOCOL_TLS = 2, PROTOCOL_TLS_SERVER = 17) leave the floor at 1.2.
_TLS_VERSIONS = {"tlsv1_2": "1.2", "1.2": "1.2", "5": "1.2", "tlsv1_3": "1.3", "1.3": "1.3",
                 "2": "1.2", "17": "1.2", "3": "1.2", "4": "1.2", "tlsv1": "1.2", "tlsv1_1": "1.2"}


def tls_minimum(config: Config) -> str:
    """The lowest TLS version served, ``"1.2"`` or ``"1.3"`` (``--ssl-version`` can only raise it)."""
    version = config.tls.ssl_version
    return "1.2" if version is None else _TLS_VERSIONS[version.strip().lower()]


def validate_tls(config: Config) -> None:
    """The TLS options hang together (the files themselves are checked by ``fastgate.tls``)."""
    t = config.tls
    tls_binds = [a for a in config.bind.bind if a.startswith(TLS_PREFIX)]
    if t.ssl_certfile is None:
        for flag, value in (("--ssl-keyfile", t.ssl_keyfile), ("--ssl-keyfile-password", t.ssl_keyfile_password),
                            ("--ssl-ca-certs", t.ssl_ca_certs), ("--ssl-ciphers", t.ssl_ciphers),
                            ("--ssl-version", t.ssl_version)):
            if value is not None:
                raise ConfigError(f"{flag}: needs --ssl-certfile (the server's certificate)")
        if t.ssl_cert_reqs:
            raise ConfigError("--ssl-cert-reqs: needs --ssl-certfile (the server's certificate)")
        if tls_binds:
            raise ConfigError(f"--bind {tls_binds[0]!r}: a TLS listener needs --ssl-certfile (and --ssl-keyfile)")
    if t.ssl_cert_reqs not in (0, 1, 2):
        raise ConfigError(f"--ssl-cert-reqs: expected 0 (none), 1 (optional) or 2 (required), got {t.ssl_cert_reqs}")
    if t.ssl_cert_reqs and t.ssl_ca_certs is None:
        raise ConfigError("--ssl-cert-reqs: verifying client certificates needs --ssl-ca-certs")
    if t.ssl_version is not None and t.ssl_version.strip().lower() not in _TLS_VERSIONS:
        raise ConfigError(f"--ssl-version: expected TLSv1_2 or TLSv1_3 (or an ssl.PROTOCOL_* number), "
                          f"got {t.ssl_version!r}")


TLS_PREFIX = "tls:"


def bind_is_tls(config: Config, address: str | None) -> bool:
    """Whether a listener serves TLS: its ``--bind`` value carries ``tls:``, or a certificate
    is configured and no bind carries the prefix (then every listener does, as with uvicorn's
    ``--ssl-certfile``). ``address`` None: a listener not from ``--bind`` (--uds, --fd, --host,
    systemd's)."""
    if config.tls.ssl_certfile is None:
        return False
    if any(a.startswith(TLS_PREFIX) for a in config.bind.bind):
        return address is not None and address.startswith(TLS_PREFIX)
    return True


def listeners_tls(config: Config, keys: list[tuple[str, Any] | None]) -> list[bool]:
    """``bind_is_tls`` for bound listeners, in order, each known by its key (what ``parse_bind``
    returned for its address; None or ``("systemd", fd)`` for one that came from elsewhere).

    Two binds may share a key (``tls:127.0.0.1:0`` and ``127.0.0.1:0``): listeners are made in
    the order of their addresses, so the n-th listener with a key is the n-th bind with it.
    """
    seen: dict[Any, int] = {}
    out = []
    for key in keys:
        address = None
        if key is not None:
            n = seen[key] = seen.get(key, -1) + 1
            matches = [a for a in config.bind.bind if parse_bind(a) == key]
            address = matches[n] if n < len(matches) else None
        out.append(bind_is_tls(config, address))
    return out


def parse_bind(address: str) -> tuple[str, Any]:
    """Parse one ``--bind`` value (a ``tls:`` prefix marks a TLS listener: see ``bind_is_tls``).

    Returns:
        ``("tcp", (host, port))``, ``("unix", path)`` or ``("fd", fd)``.

    Raises:
        ConfigError: the address has none of the accepted forms.
    """
    if address.startswith(TLS_PREFIX):
        address = address[len(TLS_PREFIX):]
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ConfigError(f"--bind: 'unix:' needs a path, e.g. unix:/run/fastgate.sock (got {address!r})")
        return ("unix", path)
    if address.startswith("fd://"):
        try:
            fd = int(address[5:])
        except ValueError:
            raise ConfigError(f"--bind: expected fd://N with a number N (got {address!r})") from None
        return ("fd", fd)
    host, sep, port_text = address.rpartition(":")
    if not sep:
        host, port_text = address, "8000"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--bind: expected HOST:PORT, unix:PATH or fd://N (got {address!r})") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--bind: port must be between 0 and 65535 (got {address!r})")
    return ("tcp", (host or "0.0.0.0", port))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...] | None:
    """Parse ``--forwarded-allow-ips``; None means trust everyone ('*').

    Raises:
        ConfigError: an entry is neither an IP address nor a CIDR.
    """
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if "*" in entries:
        return None
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                f"--forwarded-allow-ips: {entry!r} is not an IP address or CIDR (use e.g. 10.0.0.0/8 or '*')"
            ) from None
    return tuple(nets)


def parse_metrics_bind(text: str) -> tuple[str, int] | str:
    """Parse ``--metrics-bind``: ``(host, port)`` for ``HOST:PORT`` / ``[V6]:PORT``, a path
    for ``unix:PATH``.

    Raises:
        ConfigError: neither form, or a port outside 0..65535.
    """
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ConfigError("--metrics-bind: unix: needs a path")
        return path
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics-bind: {text!r} is not HOST:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or "0.0.0.0", int(port))


def replace(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with some options (by flat name) changed, validated."""
    values = config.flat()
    for name in changes:
        if name not in OPTIONS:
            raise KeyError(name)
    values.update(changes)
    return build(values)
