"""Config: declared once, parsed from TOML/env/CLI values, validated with one-line errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from fastgate import config as cfg
from fastgate.config import OPTIONS, Config, ConfigError, load, parse_bind, parse_networks, read_toml


def test_every_option_is_declared_once_with_flag_env_and_help() -> None:
    flags = [o.flag for o in OPTIONS.values()]
    assert len(flags) == len(set(flags))
    for spec in OPTIONS.values():
        assert spec.help.endswith((".", ")")), spec.name
        assert spec.env_names[0] == "FASTGATE_" + spec.name.upper()
        assert spec.flag.startswith("--")
    # Every field of every section is an option.
    assert len(OPTIONS) == sum(len(dataclasses.fields(c)) for c in cfg.SECTIONS.values())


def test_uvicorn_flag_names() -> None:
    flags = {o.flag for o in OPTIONS.values()}
    for flag in ("--host", "--port", "--uds", "--fd", "--backlog", "--lifespan", "--root-path", "--proxy-headers",
                 "--forwarded-allow-ips", "--timeout-keep-alive", "--timeout-graceful-shutdown",
                 "--limit-concurrency", "--limit-max-requests", "--log-level", "--access-log", "--server-header",
                 "--date-header", "--header", "--factory", "--app-dir", "--bind", "--workers"):
        assert flag in flags


def test_defaults() -> None:
    c = load({}, environ={})
    assert c == Config()
    h = c.http
    assert (h.limit_request_line, h.limit_request_fields, h.limit_request_field_size) == (8190, 100, 8190)
    assert c.http.timeout_keep_alive == 5.0 and c.http.timeout_request_header == 10.0
    assert c.process.timeout_graceful_shutdown == 30.0 and c.bind.uds_mode == "660"
    assert c.http.forwarded_allow_ips == "127.0.0.1,::1"


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    toml = tmp_path / "fastgate.toml"
    toml.write_text('port = 1111\nhost = "0.0.0.0"\nlog-level = "debug"\ntimeout_keep_alive = 7\n')
    env = {"FASTGATE_PORT": "2222", "FASTGATE_LOG_LEVEL": "warning"}
    c = load({"port": 3333}, config_file=str(toml), environ=env)
    assert c.bind.port == 3333  # CLI beats env
    assert c.log.log_level == "warning"  # env beats file
    assert c.bind.host == "0.0.0.0"  # file beats default
    assert c.http.timeout_keep_alive == 7.0
    assert c.bind.backlog == 2048  # default
    # The config file can come from the environment too.
    c = load({}, environ={"FASTGATE_CONFIG": str(toml)})
    assert c.bind.port == 1111


def test_toml_tool_table(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[tool.fastgate]\nworkers = 3\n'
                         'headers = ["X-A: 1, 2"]\nproxy-headers = false\npid = "/run/x.pid"\n')
    assert read_toml(str(pyproject)) == {"workers": 3, "headers": ("X-A: 1, 2",), "proxy_headers": False,
                                         "pid_file": "/run/x.pid"}
    flag_spelling = tmp_path / "flags.toml"
    flag_spelling.write_text('header = ["X-B: 2"]\n')
    assert read_toml(str(flag_spelling)) == {"headers": ("X-B: 2",)}
    other = tmp_path / "f.toml"
    other.write_text("[fastgate]\nport = 9\n")
    assert read_toml(str(other)) == {"port": 9}


def test_toml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match=r"^--config: '.*bad.toml' is not valid TOML"):
        read_toml(str(bad))
    with pytest.raises(ConfigError, match=r"^--config: cannot read '.*missing.toml': No such file"):
        read_toml(str(tmp_path / "missing.toml"))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"^--config: unknown option 'prot'"):
        read_toml(str(unknown))
    typed = tmp_path / "typed.toml"
    typed.write_text('port = "eighty"\n')
    with pytest.raises(ConfigError, match=r"^--port: expected an integer, got 'eighty' \(from config file"):
        read_toml(str(typed))


def test_env_values_and_web_concurrency() -> None:
    c = load({}, environ={"WEB_CONCURRENCY": "3"})
    assert c.process.workers == 3
    c = load({}, environ={"WEB_CONCURRENCY": "3", "FASTGATE_WORKERS": "5"})
    assert c.process.workers == 5  # our own name wins
    c = load({}, environ={"FASTGATE_ACCESS_LOG": "off", "FASTGATE_BIND": "127.0.0.1:1, unix:/tmp/x.sock",
                          "FASTGATE_LIMIT_CONCURRENCY": "none", "FASTGATE_HEADERS": "X-A: 1, 2\nX-B: 3",
                          "FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    assert c.log.access_log is False
    assert c.bind.bind == ("127.0.0.1:1", "unix:/tmp/x.sock")
    assert c.http.limit_concurrency is None
    assert c.http.headers == ("X-A: 1, 2", "X-B: 3")
    assert c.http.forwarded_allow_ips == "10.0.0.0/8"
    c = load({}, environ={"FASTGATE_WORKERS": "auto"})
    assert c.process.workers == cfg.available_cpus() >= 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FASTGATE_PORT": "x"}, "--port: expected an integer, got 'x' (from environment variable FASTGATE_PORT)"),
        ({"FASTGATE_ACCESS_LOG": "maybe"}, "--access-log: expected true or false"),
        ({"FASTGATE_TIMEOUT_KEEP_ALIVE": "soon"}, "--timeout-keep-alive: expected a number"),
        ({"FASTGATE_TIMEOUT_KEEP_ALIVE": "inf"}, "--timeout-keep-alive: expected a finite number"),
        ({"FASTGATE_LOG_LEVEL": "loud"}, "--log-level: expected one of critical, error"),
        ({"FASTGATE_PORT": "70000"}, "--port: must be between 0 and 65535"),
        ({"FASTGATE_UDS_MODE": "9"}, "--uds-mode: expected an octal mode"),
        ({"FASTGATE_UDS_MODE": "7777"}, "--uds-mode: expected an octal mode"),
        ({"FASTGATE_BACKLOG": "0"}, "--backlog: must be > 0 (got 0)"),
        ({"FASTGATE_TIMEOUT_KEEP_ALIVE": "-1"}, "--timeout-keep-alive: must be >= 0"),
        ({"FASTGATE_TIMEOUT_REQUEST_HEADER": "0"}, "--timeout-request-header: must be > 0"),
        ({"FASTGATE_TIMEOUT_REQUEST": "0"}, "--timeout-request: must be > 0 (got 0.0)"),
        ({"FASTGATE_TIMEOUT_REQUEST_IDLE": "-1"}, "--timeout-request-idle: must be > 0 (got -1.0)"),
        ({"FASTGATE_TIMEOUT_REQUEST": "nan"}, "--timeout-request: expected a finite number"),
        ({"FASTGATE_LIMIT_CONCURRENCY": "0"}, "--limit-concurrency: must be > 0"),
        ({"FASTGATE_HEADERS": "novalue"}, "--header: expected NAME:VALUE"),
        ({"FASTGATE_HEALTH_PATH": "health"}, "--health-path: must start with '/'"),
        ({"FASTGATE_ROOT_PATH": "api"}, "--root-path: must start with '/'"),
        ({"FASTGATE_FORWARDED_ALLOW_IPS": "10.0.0.0/8,proxy"}, "--forwarded-allow-ips: 'proxy' is not an IP"),
        ({"FASTGATE_BIND": "unix:"}, "--bind: 'unix:' needs a path"),
        ({"FASTGATE_BIND": "fd://x"}, "--bind: expected fd://N"),
        ({"FASTGATE_BIND": "host:port"}, "--bind: expected HOST:PORT"),
        ({"FASTGATE_BIND": "host:99999"}, "--bind: port must be between"),
        ({"FASTGATE_WORKERS": "-1"}, "--workers: must be >= 0"),
        ({"FASTGATE_PORT": "true"}, "--port: expected an integer"),
        ({"FASTGATE_LIMIT_MAX_MEMORY": "0"}, "--limit-max-memory: must be > 0 (got 0)"),
        ({"FASTGATE_LIMIT_MAX_MEMORY": "1.5"}, "--limit-max-memory: expected an integer"),
        ({"FASTGATE_LIMIT_MAX_LIFETIME": "-5"}, "--limit-max-lifetime: must be > 0"),
        ({"FASTGATE_LIMIT_MAX_LIFETIME_JITTER": "-1"}, "--limit-max-lifetime-jitter: must be >= 0"),
        ({"FASTGATE_PRELOAD": "1", "FASTGATE_WORKERS": "0"}, "--preload: imports the app in the master before it "
                                                              "forks workers; --workers 0 runs no master"),
    ],
)
def test_invalid_values_name_the_flag(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({}, environ=env)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_parse_value_rejects_bools_for_numbers() -> None:
    with pytest.raises(ConfigError, match="an integer"):
        cfg.parse_value(OPTIONS["port"], True, "x")
    with pytest.raises(ConfigError, match="seconds"):
        cfg.parse_value(OPTIONS["timeout_keep_alive"], False, "x")
    assert cfg.parse_value(OPTIONS["access_log"], True, "x") is True
    assert cfg.parse_value(OPTIONS["bind"], ["a:1", "b:2"], "x") == ("a:1", "b:2")


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:80") == ("tcp", ("127.0.0.1", 80))
    assert parse_bind("[::1]:80") == ("tcp", ("::1", 80))
    assert parse_bind(":80") == ("tcp", ("0.0.0.0", 80))
    assert parse_bind("localhost") == ("tcp", ("localhost", 8000))
    assert parse_bind("unix:/run/x.sock") == ("unix", "/run/x.sock")
    assert parse_bind("fd://3") == ("fd", 3)


def test_parse_networks() -> None:
    assert parse_networks("*") is None
    nets = parse_networks("127.0.0.1, 10.0.0.0/8 ,::1")
    assert nets is not None and [str(n) for n in nets] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]


def test_diff_replace_and_listeners_changed() -> None:
    old = Config()
    new = cfg.replace(old, port=9000, log_level="debug")
    assert new.diff(old) == {"port", "log_level"}
    assert new.listeners_changed(old)
    assert not cfg.replace(old, log_level="debug").listeners_changed(old)
    with pytest.raises(KeyError):
        cfg.replace(old, nope=1)
    with pytest.raises(ConfigError):
        cfg.replace(old, port=-1)


def test_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cfg._cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cfg._cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cfg._cgroup_cpu_quota(str(v1)) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cfg._cgroup_cpu_quota(str(v1)) is None
    assert cfg._cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_recycling_and_preload_options() -> None:
    c = load({}, environ={"FASTGATE_PRELOAD": "yes", "FASTGATE_LIMIT_MAX_MEMORY": "512",
                          "FASTGATE_LIMIT_MAX_LIFETIME": "3600", "FASTGATE_LIMIT_MAX_LIFETIME_JITTER": "600"})
    assert c.app.preload is True
    assert (c.process.limit_max_memory, c.process.limit_max_lifetime, c.process.limit_max_lifetime_jitter) == (
        512, 3600.0, 600.0)
    assert load({}, environ={}).process.limit_max_memory is None
    # The handover variable of a master re-executing itself is not mistaken for a mistyped option.
    assert load({}, environ={"FASTGATE_HANDOVER": "{}"}) == Config()


# ---------------------------------------------------------------- TLS


def test_tls_options_from_cli_env_and_file(tmp_path: Any) -> None:
    from fastgate.config import load

    path = tmp_path / "fastgate.toml"
    path.write_text('ssl-certfile = "/c.pem"\nssl_keyfile = "/k.pem"\nssl-cert-reqs = 2\nssl-ca-certs = "/ca.pem"\n')
    config = load({}, config_file=str(path), environ={"FASTGATE_SSL_CIPHERS": "ECDHE+AESGCM"})
    t = config.tls
    assert (t.ssl_certfile, t.ssl_keyfile, t.ssl_cert_reqs, t.ssl_ca_certs, t.ssl_ciphers) == (
        "/c.pem", "/k.pem", 2, "/ca.pem", "ECDHE+AESGCM")
    assert config.tls_enabled


@pytest.mark.parametrize(("values", "message"), [
    ({"bind": ("tls:0.0.0.0:8443",)}, "a TLS listener needs --ssl-certfile"),
    ({"ssl_keyfile": "/k"}, "--ssl-keyfile: needs --ssl-certfile"),
    ({"ssl_cert_reqs": 2}, "--ssl-cert-reqs: needs --ssl-certfile"),
    ({"ssl_certfile": "/c", "ssl_cert_reqs": 3, "ssl_ca_certs": "/ca"}, "expected 0 (none), 1 (optional) or 2"),
    ({"ssl_certfile": "/c", "ssl_cert_reqs": 1}, "needs --ssl-ca-certs"),
    ({"ssl_certfile": "/c", "ssl_version": "SSLv3"}, "--ssl-version: expected TLSv1_2 or TLSv1_3"),
])
def test_tls_options_that_do_not_hang_together(values: dict[str, Any], message: str) -> None:
    from fastgate.config import build

    with pytest.raises(ConfigError, match=re.escape(message)):
        build(values)


def test_ssl_version_can_only_raise_the_floor() -> None:
    from fastgate.config import build, tls_minimum

    for version, floor in ((None, "1.2"), ("TLSv1_2", "1.2"), ("tlsv1_3", "1.3"), ("17", "1.2"), ("2", "1.2"),
                           ("3", "1.2"), ("4", "1.2"), ("5", "1.2"), ("TLSv1", "1.2")):
        assert tls_minimum(build({"ssl_certfile": "/c", "ssl_version": version})) == floor, version


def test_which_listeners_serve_tls() -> None:
    from fastgate.config import build, listeners_tls, parse_bind

    plain = build({"bind": ("127.0.0.1:80",)})
    assert listeners_tls(plain, [parse_bind("127.0.0.1:80")]) == [False]
    # A certificate and no tls: bind: every listener, including --uds and systemd's.
    every = build({"ssl_certfile": "/c", "bind": ("127.0.0.1:443",), "uds": "/s"})
    assert listeners_tls(every, [parse_bind("127.0.0.1:443"), ("unix", "/s"), ("systemd", 3), None]) == [True] * 4
    # Marked binds: only those; two binds on port 0 told apart by their order.
    mixed = build({"ssl_certfile": "/c", "bind": ("tls:127.0.0.1:0", "127.0.0.1:0", "tls:unix:/t", "unix:/p")})
    keys = [parse_bind(a) for a in mixed.bind.bind] + [("systemd", 3)]
    assert keys[0] == keys[1] == ("tcp", ("127.0.0.1", 0))
    assert listeners_tls(mixed, keys) == [True, False, True, False, False]
