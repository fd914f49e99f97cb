"""Instructions per request of each bench_h1 layer, counted by callgrind.

Runs ``bench_h1``'s layer functions under ``valgrind --tool=callgrind`` with N and 2N
requests; (I(2N) - I(N)) / N is the cost of one request, with start-up and warm-up cancelled
out. Instruction counts do not depend on what else runs on the machine.

    python benchmarks/instructions.py                   # all layers, N = 2000
    python benchmarks/instructions.py --mode h1 -n 5000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("h1", "cycle", "protocol", "close")
WS_MODES = ("ws_websockets", "ws_session", "ws_protocol")  # per WebSocket message, one in flight


def _drive(mode: str, n: int, big: bool) -> None:
    sys.path.insert(0, str(HERE))
    import bench_h1

    request = bench_h1.REQUEST_BIG if big else bench_h1.REQUEST
    fn = bench_h1.MODES[mode]
    fn(200, request)  # warm-up: first-call costs (imports, caches) land in both runs alike
    fn(n, request)


def _count(mode: str, n: int, big: bool) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, __file__, "--drive", mode, "-n", str(n)] + (["--big"] if big else [])
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return callgrind_total(proc.stderr)


def callgrind_total(stderr: str) -> int:
    """The instruction total callgrind prints when its program exits."""
    match = re.search(r"Collected : (\d+)", stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in:\n{stderr}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=[*MODES, *WS_MODES, "all", "ws"], default="all",
                   help="one mode; all: the HTTP ones; ws: the WebSocket ones")
    p.add_argument("-n", type=int, default=2000, help="requests in the smaller run (the other has 2N)")
    p.add_argument("--big", action="store_true", help="the browser-like request with 9 headers")
    p.add_argument("--drive", choices=[*MODES, *WS_MODES], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive:
        _drive(args.drive, args.n, args.big)
        return 0
    for mode in MODES if args.mode == "all" else WS_MODES if args.mode == "ws" else (args.mode,):
        one, two = _count(mode, args.n, args.big), _count(mode, 2 * args.n, args.big)
        print(f"{mode:9} {(two - one) / args.n:10,.0f} instructions/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
