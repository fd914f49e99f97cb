"""How evenly does load spread across workers? Per-worker CPU split under wrk.

Starts a server with 2 workers on an ephemeral port, runs ``wrk -t2 -c64 -d10s`` (64
keep-alive connections), and reads each worker's CPU time from /proc before and after.
A perfect split is 0.50/0.50; the issue's target is within 60/40.

    python benchmarks/worker_balance.py                 # fastgate (per-slot SO_REUSEPORT)
    python benchmarks/worker_balance.py --server uvicorn  # the yardstick: one shared socket
    python benchmarks/worker_balance.py --runs 3 --duration 10

Needs ``wrk`` (apt-get install -y wrk).

Measured on the 2-core dev machine (wrk on the same cores, 3 runs of 8 s each):
fastgate 0.51/0.49, 0.50/0.50, 0.50/0.50; uvicorn --workers 2 on the same
machine 0.51/0.49, 0.54/0.46, 0.54/0.46.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(path) as f:
            out.extend(int(x) for x in f.read().split())
    return out


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start(server: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if server == "fastgate":
        cmd = [sys.executable, "-m", "fastgate", "examples.hello:app", "--port", "0", "--workers", "2",
               "--no-access-log"]
        pattern = re.compile(r"Listening on http://[\d.]+:(\d+)")
    else:
        port = _free_port()
        cmd = [sys.executable, "-m", "uvicorn", "examples.hello:app", "--port", str(port), "--workers", "2",
               "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
        pattern = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = pattern.search(line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"{server} did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_workers(pid: int, n: int) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = [k for k in children(pid) if _is_python(k)]
        if len(kids) >= n:
            return kids[:n]
        time.sleep(0.1)
    raise SystemExit("workers did not start")


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"resource_tracker" not in cmd  # uvicorn's multiprocessing helper is not a worker


def run_once(server: str, duration: int) -> tuple[list[float], str]:
    proc, port = start(server)
    try:
        time.sleep(1.0)  # let every worker finish booting before wrk opens its connections
        workers = wait_workers(proc.pid, 2)
        before = {w: cpu_ticks(w) for w in workers}
        out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, check=True).stdout
        used = {w: cpu_ticks(w) - before[w] for w in workers}
        total = sum(used.values()) or 1
        shares = sorted((used[w] / total for w in workers), reverse=True)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return shares, rps.group(1) if rps else "?"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("fastgate", "uvicorn"), default="fastgate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    for i in range(args.runs):
        shares, rps = run_once(args.server, args.duration)
        print(f"{args.server} run {i + 1}: CPU split {shares[0]:.2f}/{shares[1]:.2f}, {rps} req/s")


if __name__ == "__main__":
    main()
