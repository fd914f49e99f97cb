"""What --preload saves: memory (PSS/USS from /proc/PID/smaps_rollup) and time to ready of
4 workers serving an app that holds about 100 MiB of Python objects (benchmarks/preload_app.py).

Variants, each started fresh:

* ``no preload``: every worker imports the app itself (fastgate's default);
* ``preload, no gc.freeze``: the master imports it before forking (``gc.freeze`` patched out);
* ``preload`` (what ``--preload`` does): the master imports it, ``gc.freeze()``, then forks;
* ``preload, gc off during import``: the recipe of the CPython docs, ``gc.disable()`` from
  interpreter start until the ``gc.freeze()`` before the fork, so that no collection in the
  master leaves freed holes in the app's pages.

For each: the time from starting the command to "All 4 worker(s) ready"; then memory when
idle, after a fixed number of ``GET /`` and after five times as many (each reads 8 random
records: their reference counts change, which writes to their pages), and after one full
``gc.collect()`` in every worker (``GET /gc``), which any long-running worker does sooner or
later; and the time from SIGHUP to "Reload complete".

PSS (proportional set size) charges each shared page to its sharers in equal parts, so the
sum over the master and its workers is what the whole server really occupies. USS (Private
Clean + Private Dirty) is what a worker holds alone: what killing it would give back.

    python benchmarks/preload_memory.py                       # 3 repeats, medians
    python benchmarks/preload_memory.py --repeats 1 --requests 10000
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.preload_app:app"
WORKERS = 4
LISTEN = re.compile(r"Listening on http://127\.0\.0\.1:(\d+)")
MIB = 1024 * 1024

# How each variant runs fastgate: extra flags, and Python run first in the master's process.
PATCH_NO_FREEZE = "import gc; gc.freeze = lambda: None"
PATCH_GC_OFF = ("import gc; gc.disable(); _freeze = gc.freeze\n"
                "def _freeze_then_enable(): _freeze(); gc.enable()\n"
                "gc.freeze = _freeze_then_enable")
VARIANTS: dict[str, tuple[list[str], str]] = {
    "no preload": ([], ""),
    "preload, no gc.freeze": (["--preload"], PATCH_NO_FREEZE),
    "preload (gc.freeze before fork)": (["--preload"], ""),
    "preload, gc off during import": (["--preload"], PATCH_GC_OFF),
}


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in bytes (Rss, Pss, Private_Dirty, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(x) for x in f.read().split()]
    return sorted(out)


@dataclass
class Memory:
    total_pss: float  # MiB, master + workers
    worker_uss: float  # MiB, mean over the workers
    worker_rss: float  # MiB, mean: what ps and --limit-max-memory see
    master_rss: float


def measure(master: int) -> Memory:
    workers = children(master)
    assert len(workers) == WORKERS, workers
    rolls = {pid: smaps_rollup(pid) for pid in [master, *workers]}
    uss = [rolls[p]["Private_Clean"] + rolls[p]["Private_Dirty"] for p in workers]
    return Memory(
        total_pss=sum(r["Pss"] for r in rolls.values()) / MIB,
        worker_uss=statistics.mean(uss) / MIB,
        worker_rss=statistics.mean(rolls[p]["Rss"] for p in workers) / MIB,
        master_rss=rolls[master]["Rss"] / MIB,
    )


def load(port: int, requests: int, connections: int = 8) -> None:
    """``requests`` GET / over ``connections`` keep-alive connections; every answer must be a 200."""
    request = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
    errors: list[str] = []

    def client(n: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            buf = b""
            for _ in range(n):
                sock.sendall(request)
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(65536)
                head, _, buf = buf.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(head.decode(errors="replace"))
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                while len(buf) < length:
                    buf += sock.recv(65536)
                buf = buf[length:]

    threads = [threading.Thread(target=client, args=(requests // connections,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests: {errors[:3]}")


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


@dataclass
class Run:
    ready_s: float
    reload_s: float = 0.0
    memory: dict[str, Memory] = field(default_factory=dict)


class Server:
    def __init__(self, flags: list[str], patch: str) -> None:
        argv = ["fastgate", APP, "--workers", str(WORKERS), "--port", "0", "--no-access-log", *flags]
        code = f"{patch}\nimport sys\nfrom fastgate.cli import main\nsys.exit(main({argv[1:]!r}))"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.wait(LISTEN).group(1))

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait(self, pattern: re.Pattern[str] | str, timeout: float = 120.0, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if m := regex.search(line):
                        return m
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"no {regex.pattern!r}:\n" + "".join(self.lines))
                self.cond.wait(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def one_run(flags: list[str], patch: str, requests: int) -> Run:
    server = Server(flags, patch)
    try:
        server.wait(r"All \d+ worker\(s\) ready")
        run = Run(ready_s=time.monotonic() - server.started)
        time.sleep(1.0)
        run.memory["idle"] = measure(server.proc.pid)
        load(server.port, requests)
        run.memory[f"after {requests:,} requests"] = measure(server.proc.pid)
        load(server.port, 4 * requests)  # does sharing erode as the workers read more of the data?
        run.memory[f"after {5 * requests:,} requests"] = measure(server.proc.pid)
        collected: set[int] = set()
        while len(collected) < WORKERS:  # connections spread over the workers' sockets
            collected.add(int(get(server.port, "/gc").split()[1]))
        run.memory["after gc.collect()"] = measure(server.proc.pid)
        mark = len(server.lines)
        hup = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        server.wait(r"Reload complete", start=mark)
        run.reload_s = time.monotonic() - hup
        return run
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20000, help="GET / sent after the idle measurement")
    args = parser.parse_args()
    results: dict[str, list[Run]] = {}
    for _ in range(args.repeats):
        for name, (flags, patch) in VARIANTS.items():
            results.setdefault(name, []).append(one_run(flags, patch, args.requests))
            print(f"{name}: ready {results[name][-1].ready_s:.2f}s", file=sys.stderr)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"{WORKERS} workers, app of about 100 MiB of Python objects; median of {args.repeats} run(s).\n")
    print("| variant | ready | SIGHUP to reloaded | state | total PSS | USS per worker | RSS per worker | "
          "master RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        for i, state in enumerate(runs[0].memory):
            mem = [r.memory[state] for r in runs]
            head = (f"| {name} | {med([r.ready_s for r in runs]):.2f} s | {med([r.reload_s for r in runs]):.2f} s "
                    if i == 0 else "| | | ")
            print(head + f"| {state} | {med([m.total_pss for m in mem]):.0f} MiB | "
                  f"{med([m.worker_uss for m in mem]):.1f} MiB | {med([m.worker_rss for m in mem]):.0f} MiB | "
                  f"{med([m.master_rss for m in mem]):.0f} MiB |")


if __name__ == "__main__":
    main()
