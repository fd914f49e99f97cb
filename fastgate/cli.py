"""Command line: ``fastgate MODULE:ATTR [options]``, generated from config.OPTIONS.

The flags are not written here one by one: each comes from its field in ``config.py``.
Only options given on the command line are collected (argparse default SUPPRESS), so the
precedence merge in ``config.load`` can tell "not given" from "given the default".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from fastgate import __version__, build, handover
from fastgate.config import BOOL, LIST, OPTIONS, Config, closest, load, parse_value
from fastgate.errors import EXIT_OK, EXIT_USAGE, ConfigError

_SECTION_TITLES = {
    "app": "application",
    "bind": "sockets",
    "http": "HTTP",
    "websocket": "WebSocket",
    "process": "processes",
    "reload": "development reload",
    "log": "logging",
    "tls": "TLS",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), like every other config error,
    and options must be spelled out: with argparse's prefix matching, ``--timeout-request 1``
    silently set ``--timeout-request-header``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"fastgate: error: {message} (see 'fastgate --help')\n")

    def reject_unknown(self, extras: list[str]) -> None:
        """One line naming the first unknown option and the closest real one."""
        unknown = next((a for a in extras if a.startswith("-")), extras[0])
        flag = unknown.partition("=")[0]
        flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        if not flag.startswith("-"):
            self.error(f"unexpected argument {unknown!r}")
        hint = closest(flag, flags)
        self.exit(EXIT_USAGE, f"fastgate: error: unknown option {flag}"
                  + (f"; did you mean {hint}?\n" if hint else " (see 'fastgate --help')\n"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastgate",
        description="fastgate: an ASGI server with a supervising master (uvloop + httptools).",
        epilog="Every option can also be set as FASTGATE_<NAME> in the environment or in a TOML --config file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("app", nargs="?", metavar="MODULE:ATTR", help="the ASGI application")
    parser.add_argument("--config", metavar="FILE", help="TOML file of options (flat keys, or [tool.fastgate])")
    parser.add_argument("--print-config", action="store_true", help="print the merged configuration and exit")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"fastgate {__version__}: {build.describe()} build")
    groups: dict[str, Any] = {}
    for spec in OPTIONS.values():
        if spec.name == "app":
            continue
        group = groups.get(spec.section)
        if group is None:
            group = groups[spec.section] = parser.add_argument_group(_SECTION_TITLES[spec.section])
        default = spec.default
        help_text = spec.help if default in (None, "", ()) else f"{spec.help} [default: {_show(default)}]"
        help_text = help_text.replace("%", "%%")
        if spec.kind == BOOL:
            group.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif spec.kind == LIST:
            group.add_argument(spec.flag, dest=spec.name, action="append", metavar=spec.metavar, help=help_text)
        else:
            group.add_argument(
                spec.flag, dest=spec.name, metavar=spec.metavar or _metavar(spec.choices, spec.kind), help=help_text
            )
    return parser


def _metavar(choices: tuple[str, ...] | None, kind: str) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    return {"int": "N", "float": "SECONDS"}.get(kind, "TEXT")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse argv (plus environment and config file) into a validated Config.

    Raises:
        ConfigError: an option value is invalid.
        SystemExit: argparse rejected the command line (exit 2).
    """
    parser = build_parser()
    ns, extras = parser.parse_known_args(argv)
    if extras:
        assert isinstance(parser, _Parser)
        parser.reject_unknown(extras)
    given: dict[str, Any] = {}
    for name, raw in vars(ns).items():
        spec = OPTIONS.get(name)
        if spec is None:
            continue
        if spec.kind == BOOL:
            given[name] = bool(raw)
        elif spec.kind == LIST:
            # Repeated flags accumulate; each may also hold a comma-separated list.
            items: list[str] = []
            for chunk in raw:
                items.extend(parse_value(spec, chunk, f"command line {spec.flag}"))
            given[name] = tuple(items)
        elif raw is not None:
            given[name] = parse_value(spec, raw, f"command line {spec.flag}")
    config = load(given, config_file=getattr(ns, "config", None))
    return config, ns


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastgate`` and ``python -m fastgate``; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in ("status", "ctl"):
        from fastgate import ctl  # a client of a running master: no config, no app

        return ctl.main(words)
    try:
        config, ns = parse_args(argv)
    except (ConfigError, SystemExit) as exc:
        return _invalid_config(exc, argv)
    if getattr(ns, "print_config", False):
        shown = config.flat()
        if shown["ssl_keyfile_password"] is not None:
            shown["ssl_keyfile_password"] = "********"  # a secret: printed configs end up in tickets and logs
        print(json.dumps(shown, indent=2, default=list))
        return EXIT_OK
    if not config.app.app:
        print("fastgate: error: no application given; pass MODULE:ATTR (e.g. 'fastgate main:app')", file=sys.stderr)
        return EXIT_USAGE
    from fastgate import logs

    try:
        logs.configure(config.log)  # a broken --log-config is a config error like any other
    except ConfigError as exc:
        return _invalid_config(exc, argv)
    if getattr(ns, "check_config", False):
        print("fastgate: configuration OK")
        return EXIT_OK
    from fastgate.runner import run

    # SIGHUP re-reads the same command line with the environment and config file of the moment.
    return run(config, reread=lambda: parse_args(argv)[0])


def _invalid_config(exc: ConfigError | SystemExit, argv: Sequence[str] | None) -> int:
    """A configuration error: exit 2, unless this process is a master re-executing itself in
    place (``handover``). That one must not die of a config file edited in the meantime: as
    at any reload, it keeps the configuration it was running."""
    state = handover.peek()
    if state is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        if isinstance(exc, SystemExit):
            raise exc
        print(f"fastgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    detail = f": {exc}" if isinstance(exc, ConfigError) else ""
    print(f"fastgate: error: Reload: invalid configuration ignored, keeping the current one{detail}", file=sys.stderr)
    from fastgate.runner import run

    return run(handover.config_from(state), reread=lambda: parse_args(argv)[0])


def entry_point() -> None:
    sys.exit(main())
