"""``fastgate status`` and ``fastgate ctl``: the client side of the master's control socket.

    fastgate status --control-socket PATH [--json]
    fastgate ctl reload|stop|upgrade --control-socket PATH
    fastgate ctl scale N --control-socket PATH

One JSON line goes to the master, one comes back (``fastgate.supervisor.control``); the
commands that change something answer when the outcome is known. The socket path may also
come from ``FASTGATE_CONTROL_SOCKET``, as the server's option does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


def request(path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one command and wait for its answer.

    Raises:
        OSError: the socket cannot be reached, or the master hung up without answering.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the master closed the connection without answering")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ConnectionError(f"unexpected answer {reply!r}")
    return reply


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / (1024 * 1024):.1f}M"


def _num(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def format_status(status: dict[str, Any]) -> str:
    """The ``fastgate status`` screen: the master's line, then one row per worker."""
    lines = [f"master {status['master']}  {status['phase']}  generation {status['generation']}  "
             f"workers {len(status['workers'])}/{status['target']}"]
    header = ("PID", "SLOT", "GEN", "STATE", "UPTIME", "REQUESTS", "CONNS", "RSS", "BEAT")
    rows = [header]
    for w in status["workers"]:
        rows.append((_num(w["pid"]), str(w["slot"]), str(w["generation"]), w["state"], _duration(w["uptime"]),
                     _num(w["requests"]), _num(w["connections"]), _mib(w["rss"]),
                     f"{w['heartbeat_age']:.1f}s ago"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.rjust(width) if i not in (3,) else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """``fastgate status ...`` or ``fastgate ctl ...`` (``argv`` starts with the word)."""
    parser = argparse.ArgumentParser(prog=f"fastgate {argv[0]}")
    parser.add_argument("--control-socket", default=os.environ.get("FASTGATE_CONTROL_SOCKET"),
                        help="the master's --control-socket PATH")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the answer (default: 5 for status, 600 for ctl)")
    if argv[0] == "status":
        parser.add_argument("--json", action="store_true", help="print the status as JSON")
    else:
        parser.add_argument("command", choices=("reload", "scale", "stop", "upgrade"))
        parser.add_argument("n", nargs="?", type=int, help="scale: the worker count")
    args = parser.parse_args(list(argv[1:]))
    if not args.control_socket:
        parser.error("--control-socket PATH is required (or FASTGATE_CONTROL_SOCKET)")
    if argv[0] == "status":
        message: dict[str, Any] = {"cmd": "status"}
        timeout = args.timeout or 5.0
    else:
        message = {"cmd": args.command}
        if args.command == "scale":
            if args.n is None:
                parser.error("scale needs N")
            message["n"] = args.n
        timeout = args.timeout or 600.0
    try:
        reply = request(args.control_socket, message, timeout)
    except (OSError, ValueError) as exc:
        print(f"fastgate: error: {args.control_socket}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if argv[0] == "status":
        print(json.dumps(reply, indent=2) if args.json else format_status(reply))
        return EXIT_OK if reply.get("ok") else EXIT_FAILED
    if reply.get("ok"):
        print(f"{args.command}: {reply.get('verdict', 'done')}")
        return EXIT_OK
    detail = reply.get("reason") or reply.get("error") or ""
    print(f"{args.command}: {reply.get('verdict', 'failed')}{': ' + detail if detail else ''}", file=sys.stderr)
    return EXIT_FAILED
