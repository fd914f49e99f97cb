"""Run the same ASGI app under fastgate and its peers and measure each workload.

For every repeat, each server is started (pinned to core 0 on machines with >= 2 cores),
its idle RSS read, then every workload is driven by wrk (or ``ws_load.py`` for WebSocket)
pinned to core 1. Around each measured run the user+sys CPU time of the server's whole
process tree (master and workers) is read from ``/proc``, which gives server CPU per
request, the figure that stays stable on a noisy machine. Results go to
``benchmarks/results/<stamp>.json``; ``report.py`` turns them into the Markdown table and
the chart.

    python benchmarks/run.py                  # full run, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick          # about a minute: fastgate and uvicorn only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str  # as shown in the report
    python: str  # interpreter (its bin/ holds the server's console script)
    version: str = ""
    kind: str = ""  # fastgate, uvicorn, ... (default: the name)
    env: dict[str, str] | None = None  # more environment for the server (FASTGATE_PURE=1)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name

    def argv(self, port: int, workers: int) -> list[str]:
        bindir = str(Path(self.python).parent)
        app = "benchmarks.app:app"
        if self.kind == "fastgate":
            return [self.python, "-m", "fastgate", app, "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        if self.kind == "uvicorn":
            return [f"{bindir}/uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                    "--loop", "uvloop", "--ws", "websockets", "--no-access-log", "--log-level", "warning",
                    *(["--workers", str(workers)] if workers > 1 else [])]
        if self.kind == "granian":
            return [f"{bindir}/granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(workers), "--http", "1", "--loop", "uvloop", "--no-access-log",
                    "--log-level", "warning", app]
        if self.kind == "hypercorn":
            return [f"{bindir}/hypercorn", "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "uvloop",
                    "--log-level", "warning", app]
        if self.kind == "gunicorn":
            return [f"{bindir}/gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers), "-b",
                    f"127.0.0.1:{port}", "--log-level", "warning", app]
        raise ValueError(self.name)


def fastgate_worker_count(requested: int) -> int:
    """--workers N once the supervisor has landed; until then single-process (0)."""
    if (ROOT / "fastgate" / "supervisor" / "master.py").exists():
        return requested
    return 0


def pkg_version(python: str, module: str) -> str:
    # Installed metadata, else the module's __version__ (fastgate runs from this checkout,
    # installed or not).
    code = (f"import importlib, importlib.metadata as m\n"
            f"try: print(m.version({module!r}))\n"
            f"except m.PackageNotFoundError: print(importlib.import_module({module!r}).__version__)")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ /proc


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    tree = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+sys of the given processes (all their threads), plus reaped children."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state (field 3): utime is field 14, stime 15, cutime 16, cstime 17.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def rss_mib(pids: list[int], largest: bool = False) -> float:
    """RSS summed over ``pids`` (or of the largest one: a worker's own footprint)."""
    sizes = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                sizes.append(int(f.read().split()[1]) * PAGE)
        except OSError:
            continue
    if not sizes:
        return 0.0
    return (max(sizes) if largest else sum(sizes)) / 2**20


# ------------------------------------------------------------------ running a server


class Running:
    def __init__(self, server: Server, workers: int, cpus: str | None, extra: Sequence[str] = ()) -> None:
        self.server = server
        self.port = free_port()
        argv = [*server.argv(self.port, workers), *extra]  # extra: more server flags (resources.py)
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(server.env or {}))
        self.log = open(HERE / "results" / f"{server.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.expected_procs = 1

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited with {self.proc.returncode} (see results/*.log)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    s.settimeout(5)
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.name} did not answer within {timeout}s")

    def settle(self, workers: int, timeout: float = 10.0) -> None:
        """Wait until every worker answers (all processes exist and RSS stops moving)."""
        deadline = time.monotonic() + timeout
        last = -1.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            rss = rss_mib(self.pids())
            if abs(rss - last) < 0.5:
                return
            last = rss

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


@contextlib.contextmanager
def running(server: Server, workers: int, cpus: str | None, extra: Sequence[str] = ()) -> Iterator[Running]:
    r = Running(server, workers, cpus, extra)
    try:
        r.wait_ready()
        r.settle(workers)
        yield r
    finally:
        r.stop()


# ------------------------------------------------------------------ workloads


@dataclass
class Workload:
    name: str
    title: str
    path: str = "/"
    script: str | None = None
    headers: tuple[str, ...] = ()
    ws: bool = False
    ws_window: int = 8  # WebSocket messages in flight per connection
    workers: int = 1
    bytes_per_request: int = 0  # response body bytes, for MiB/s


WORKLOADS = [
    Workload("plaintext", "plaintext keep-alive"),
    Workload("json", "JSON", path="/json"),
    Workload("close", "Connection: close", headers=("Connection: close",)),
    Workload("pipelined", "pipelined ×16", script="pipeline.lua"),
    Workload("post", "POST 64 KiB echo", path="/echo", script="post.lua", bytes_per_request=65536),
    Workload("stream", "streamed download 1 MiB", path="/stream", bytes_per_request=16 * 65536),
    Workload("ws", "WebSocket echo 32 B, 8 in flight", ws=True),
    # The usual chat pattern: each client waits for the echo before sending again.
    Workload("ws1", "WebSocket echo 32 B, 1 in flight", ws=True, ws_window=1),
    Workload("workers2", "plaintext, 2 workers", workers=2),
]

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict[str, Any]:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * {"s": 1.0, "ms": 1e-3, "m": 60.0, "us": 1e-6}[m.group(3)]
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        lat[pct] = float(val) * _UNIT[unit]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        # read errors are how wrk counts a server closing after Connection: close; not failures.
        errors += int(m.group(1)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"requests": requests, "seconds": seconds, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "errors": errors}


def run_wrk(port: int, wl: Workload, duration: float, connections: int, cpus: str | None,
            scheme: str = "http") -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s"]
    if cpus is None:
        argv[1] = "-t2"
    for h in wl.headers:
        argv += ["-H", h]
    if wl.script:
        argv += ["-s", str(HERE / "lua" / wl.script)]
    argv.append(f"{scheme}://127.0.0.1:{port}{wl.path}")
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr.strip()}")
    res = parse_wrk(out.stdout)
    if wl.script == "pipeline.lua":
        # wrk times only one response per pipelined batch: its percentiles are meaningless here.
        res["p50_ms"] = res["p99_ms"] = None
    return res


def run_ws(port: int, duration: float, connections: int, cpus: str | None, warmup: float,
           window: int = 8) -> dict[str, Any]:
    # 8 in flight: half the connections (32 x 8 messages); 1 in flight: all of them (64 x 1).
    conns = max(1, connections // 2) if window > 1 else connections
    argv = [sys.executable, str(HERE / "ws_load.py"), "--port", str(port), "--duration", str(duration),
            "--connections", str(conns), "--window", str(window), "--warmup", str(warmup)]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 60)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"ws_load failed: {out.stderr.strip()[-500:]}")
    res = json.loads(lines[-1])
    if res["errors"] and not res["messages"]:
        raise RuntimeError(f"ws_load: {res['errors'][0]}")
    return {"requests": res["messages"], "seconds": res["seconds"], "p50_ms": res["p50_ms"],
            "p99_ms": res["p99_ms"], "errors": len(res["errors"]), "client_cpu_s": res["client_cpu_s"]}


def measure(r: Running, wl: Workload, args: argparse.Namespace, client_cpus: str | None) -> dict[str, Any]:
    # Warm up (JIT-free Python still has caches, allocator arenas, TCP state), then measure.
    if wl.ws:
        pids = r.pids()
        cpu0 = cpu_seconds(pids)
        t0 = time.monotonic()
        res = run_ws(r.port, args.duration, args.connections, client_cpus, warmup=args.warmup, window=wl.ws_window)
        # ws_load's own warm-up and teardown happen outside its measured window but inside
        # ours: scale CPU by the measured share of wall time (the server is saturated throughout).
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pids) - cpu0
        res["cpu_s"] = cpu * min(1.0, res["seconds"] / wall) if wall else cpu
    else:
        if args.warmup > 0:
            run_wrk(r.port, wl, args.warmup, args.connections, client_cpus)
        pids = r.pids()
        cpu0 = cpu_seconds(pids)
        res = run_wrk(r.port, wl, args.duration, args.connections, client_cpus)
        res["cpu_s"] = cpu_seconds(pids) - cpu0
    res["rps"] = res["requests"] / res["seconds"] if res["seconds"] else 0.0
    res["cpu_us"] = res["cpu_s"] / res["requests"] * 1e6 if res["requests"] else None
    res["procs"] = len(pids)
    res["rss_mib"] = rss_mib(pids)
    return res


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastgate vs peers")
    p.add_argument("--quick", action="store_true", help="about one minute: fastgate and uvicorn, 1 repeat")
    p.add_argument("--servers", default=None, help="comma list (default: all, or fastgate,uvicorn with --quick)")
    p.add_argument("--workloads", default=None, help="comma list of " + ",".join(w.name for w in WORKLOADS))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--duration", type=int, default=None, help="seconds per measured run (whole: wrk)")
    p.add_argument("--warmup", type=int, default=None, help="seconds of warm-up before each run (0: none)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--fastgate-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--peers-python", default=str(HERE / ".venv-peers" / "bin" / "python"))
    p.add_argument("--out", default=None, help="Markdown file to write (default RESULTS.md; quick: results/quick.md)")
    p.add_argument("--note", default="", help="free text added to the conditions section")
    p.add_argument("--no-micro", action="store_true", help="skip the bench_h1 micro-benchmark")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=KIND:PYTHON",
                   help="another server entry, e.g. fastgate-py3.12=fastgate:/venv312/bin/python (repeatable)")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 3)
    args.no_micro = args.no_micro or quick
    args.duration = args.duration or (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    # fastgate-pure: the same install with FASTGATE_PURE=1 (the pure-Python build beside the compiled one).
    all_servers = "fastgate,fastgate-pure,uvicorn,granian,hypercorn,gunicorn"
    names = (args.servers or ("fastgate,uvicorn" if quick else all_servers)).split(",")
    wl_names = (args.workloads or ("plaintext,json,close,pipelined,post,stream,ws,ws1" if quick
                                   else ",".join(w.name for w in WORKLOADS))).split(",")
    workloads = [w for w in WORKLOADS if w.name in wl_names]
    if shutil.which("wrk") is None:
        print("run.py: wrk not found; install it (apt-get install wrk) or run `make bench` as root", file=sys.stderr)
        return 2
    (HERE / "results").mkdir(exist_ok=True)
    for log in (HERE / "results").glob("*.log"):
        log.unlink()

    servers = []
    for name in names:
        ours = name in ("fastgate", "fastgate-pure")
        py = os.path.abspath(args.fastgate_python if ours else args.peers_python)
        if not Path(py).exists():
            print(f"run.py: {py} missing (make bench installs it)", file=sys.stderr)
            return 2
        if ours:
            servers.append(Server(name, py, pkg_version(py, "fastgate"), kind="fastgate",
                                  env={"FASTGATE_PURE": "1"} if name == "fastgate-pure" else None))
            continue
        servers.append(Server(name, py, pkg_version(py, name)))
    for extra in args.extra:
        # NAME=KIND:PYTHON, e.g. fastgate-py3.12=fastgate:/path/venv312/bin/python
        name, _, rest = extra.partition("=")
        kind, _, py = rest.partition(":")
        py = os.path.abspath(py)
        if not Path(py).exists():
            print(f"run.py: --extra {extra}: {py} missing", file=sys.stderr)
            return 2
        pyver = subprocess.run([py, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                               text=True).stdout.strip()
        servers.append(Server(name, py, f"{pkg_version(py, kind)} (Python {pyver})", kind=kind))
    ncpu = len(os.sched_getaffinity(0))
    pinned = ncpu >= 2
    server_cpus, client_cpus = ("0", "1") if pinned else (None, None)

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": {"cpus": ncpu, "cpu_model": cpu_model(), "kernel": platform.release(),
                 "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "args": {k: v for k, v in vars(args).items()},
        "servers": {s.name: s.version for s in servers},
        "fastgate_workers": fastgate_worker_count(1),
        "runs": [],
    }
    one_worker = [w for w in workloads if w.workers == 1]
    many = [w for w in workloads if w.workers > 1]
    for rep in range(args.repeats):
        order = servers[rep % len(servers):] + servers[: rep % len(servers)]
        for server in order:
            workers = fastgate_worker_count(1) if server.kind == "fastgate" else 1
            groups = [(workers, server_cpus, client_cpus, one_worker)]
            if many:
                w2 = fastgate_worker_count(2) if server.kind == "fastgate" else 2
                if w2 >= 2:
                    groups.append((w2, None, None, many))  # 2 workers need both cores: nothing pinned
            for nworkers, scpus, ccpus, wls in groups:
                if not wls:
                    continue
                try:
                    with running(server, nworkers, scpus) as r:
                        idle = rss_mib(r.pids())
                        idle_largest = rss_mib(r.pids(), largest=True)
                        for wl in wls:
                            try:
                                res = measure(r, wl, args, ccpus)
                            except RuntimeError as exc:
                                res = {"error": str(exc)[:300]}
                            res.update(server=server.name, workload=wl.name, rep=rep, idle_rss_mib=idle,
                                       idle_largest_mib=idle_largest)
                            results["runs"].append(res)
                            print(fmt_line(res), flush=True)
                except RuntimeError as exc:
                    print(f"{server.name}: {exc}", file=sys.stderr, flush=True)
    # The sans-I/O / protocol micro-benchmark, for each fastgate interpreter in the run.
    results["micro"] = {}
    if not args.no_micro:
        for server in servers:
            if server.kind != "fastgate":
                continue
            out = subprocess.run([server.python, str(HERE / "bench_h1.py"), "-n", "50000", "--repeat", "5"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=600,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT)))
            results["micro"][server.name] = out.stdout.strip() or out.stderr.strip()[-500:]
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["host"]["loadavg_end"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = HERE / "results" / f"{'quick' if quick else 'full'}-{stamp}.json"
    raw.write_text(json.dumps(results, indent=1))

    from report import render  # noqa: E402  (sibling module; needs matplotlib only for the chart)

    out = Path(args.out) if args.out else (HERE / "results" / "quick.md" if quick else HERE / "RESULTS.md")
    md = render(results, out, chart=not quick)
    print()
    print(md)
    print(f"raw results: {raw.relative_to(ROOT)}; report: {out}")
    return 0


def fmt_line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"{res['server']:10} {res['workload']:10} rep {res['rep']}: ERROR {res['error']}"
    return (f"{res['server']:10} {res['workload']:10} rep {res['rep']}: {res['rps']:9.0f}/s "
            f"cpu {res['cpu_us'] or 0:6.1f} us/req  p50 {res['p50_ms'] or 0:.2f} p99 {res['p99_ms'] or 0:.2f} ms"
            f"  rss {res['rss_mib']:.0f} MiB  errors {res['errors']}")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"




if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
