"""What observability costs per request: JSON access logs, metrics, request ids.

Drives ``HttpProtocol`` on a fake transport inside a uvloop loop (bench_h1's ``protocol``
mode: everything but the kernel) with one option set at a time, and counts the
instructions per request under callgrind: (I(2N) - I(N)) / N, which the other jobs on the
machine do not disturb. ``--time`` prints CPU µs/request (best of repeats) instead.

Two ways to count for Prometheus are compared on top of the plain run:

* ``metrics``: fastgate's ``--metrics-bind``: the worker's own counters (a few dict and
  list increments per response), shipped with the heartbeat; the snapshot at each beat is
  not per request and is timed apart (``snapshot``).
* ``mp-client``: prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): a
  labelled Counter ``inc``, a Histogram ``observe`` and a bytes Counter ``inc`` per
  response, each writing into the worker's mmap'd file.
* ``client``: the same three calls on prometheus-client's in-memory metrics (what a
  single process would pay; not usable across workers).

``--wrk`` measures the end-to-end figure instead: one fastgate worker (plus its master)
under wrk's plaintext keep-alive load, server CPU seconds per request (utime + stime of
both processes, /proc) for each flag set, as a ratio to the run with neither JSON logs nor
metrics; the variants are interleaved over the repeats and the median is kept.

    python benchmarks/observability.py                 # instructions (needs valgrind)
    python benchmarks/observability.py --time -n 50000
    python benchmarks/observability.py --wrk --repeats 5 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_h1 import REQUEST, FakeTransport, hello  # noqa: E402

from fastgate.config import Config, replace  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"access_log": False},
    "text-log": {"access_log": True},
    "json-log": {"access_log": True, "log_format": "json"},
    "metrics": {"access_log": False, "metrics_bind": "127.0.0.1:0"},
    "request-id": {"access_log": False, "request_id_header": "X-Request-ID"},
    "json+metrics": {"access_log": True, "log_format": "json", "metrics_bind": "127.0.0.1:0"},
    "mp-client": {"access_log": False},
    "client": {"access_log": False},
}


def _client_hook(multiprocess: bool) -> Callable[[], None]:
    """Per-response calls a prometheus-client instrumentation would make."""
    if multiprocess:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fg-mp-")
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests = Counter("req", "r", ["method", "status"], registry=registry)
    duration = Histogram("dur", "d", registry=registry)
    sent = Counter("sent", "s", registry=registry)

    def hook() -> None:
        requests.labels("GET", "2xx").inc()
        duration.observe(0.0001)
        sent.inc(13)

    return hook


def run(variant: str, n: int) -> float:
    """Serve ``n`` keep-alive requests; CPU seconds spent."""
    import logging

    import uvloop

    from fastgate import logs
    from fastgate.worker.protocol import HttpProtocol
    from fastgate.worker.server import Worker

    options = VARIANTS[variant]
    config = replace(Config(), app="bench:hello", log_file=os.devnull, **options)
    logs.configure(config.log)
    hook = _client_hook(variant == "mp-client") if variant in ("mp-client", "client") else None

    async def main() -> float:
        worker = Worker(config, hello, [])
        worker.settings.defaults.date = b"date: Tue, 24 Nov 2026 16:00:00 GMT\r\n"
        proto = HttpProtocol(worker)
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        feed = proto.data_received
        sleep = asyncio.sleep
        t0 = time.process_time()
        for _ in range(n):
            feed(REQUEST)
            if transport.writes == 0 or proto.cycle is not None:
                await sleep(0)
            transport.writes = 0
            if hook is not None:
                hook()
        elapsed = time.process_time() - t0
        assert proto.cycle is None and worker.requests_served >= n
        proto.connection_lost(None)
        worker.sweeper.close()
        return elapsed

    try:
        return uvloop.run(main())
    finally:
        logging.getLogger("fastgate").handlers.clear()


def snapshot_cost(n: int) -> float:
    """µs for one heartbeat snapshot of a busy worker's counters."""
    from fastgate.worker.metrics import WorkerMetrics

    m = WorkerMetrics()
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD"):
        for status in (200, 301, 404, 500):
            m.response(method, status, 0.01, 100)
    for status in (400, 408, 413, 414, 431):
        m.rejected(status, "some rule")
    t0 = time.process_time()
    for _ in range(n):
        m.snapshot(open_http=100, open_ws=10, requests_served=123456)
    return (time.process_time() - t0) / n * 1e6


WRK_VARIANTS: dict[str, list[str]] = {
    "off": [],
    "json-log": ["--access-log", "--log-format", "json", "--log-file", os.devnull],
    "metrics": ["--metrics-bind", "127.0.0.1:0"],
    "json+metrics": ["--access-log", "--log-format", "json", "--log-file", os.devnull,
                     "--metrics-bind", "127.0.0.1:0"],
    "request-id": ["--request-id-header", "X-Request-ID"],
}


def wrk_cpu(repeats: int, duration: int, connections: int) -> None:
    """Server CPU µs per request under wrk, per flag set; median of interleaved repeats."""
    import statistics

    import run as bench_run

    server = bench_run.Server("fastgate", sys.executable)
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("0", "1") if ncpu >= 2 else (None, None)
    (HERE / "results").mkdir(exist_ok=True)
    costs: dict[str, list[float]] = {name: [] for name in WRK_VARIANTS}
    workload = bench_run.Workload("plaintext", "plaintext keep-alive")
    for _ in range(repeats):
        for name, extra in WRK_VARIANTS.items():
            with bench_run.running(server, 1, server_cpus, extra) as r:
                bench_run.run_wrk(r.port, workload, 1, connections, client_cpus)  # warm-up
                pids = r.pids()
                cpu0 = bench_run.cpu_seconds(pids)
                res = bench_run.run_wrk(r.port, workload, duration, connections, client_cpus)
                cpu = bench_run.cpu_seconds(pids) - cpu0
            costs[name].append(cpu / res["requests"] * 1e6)
            print(f"  {name:13} {res['requests'] / res['seconds']:9,.0f} req/s  {costs[name][-1]:6.2f} µs CPU/request",
                  flush=True)
    base = statistics.median(costs["off"])
    print(f"load average {os.getloadavg()[0]:.1f}; median of {repeats}:")
    for name, values in costs.items():
        med = statistics.median(values)
        print(f"{name:13} {med:7.2f} µs CPU/request   {med / base:6.3f} x off   "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


def _count(variant: str, n: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
           "--drive", variant, "-n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"), check=True)
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in:\n{proc.stderr}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", choices=list(VARIANTS), help="repeatable; default: all")
    p.add_argument("-n", type=int, default=2000, help="requests (callgrind: the smaller run; the other has 2N)")
    p.add_argument("--time", action="store_true", help="CPU µs/request, best of --repeat, instead of instructions")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--wrk", action="store_true", help="server CPU per request under wrk instead (see above)")
    p.add_argument("--repeats", type=int, default=3, help="--wrk: interleaved repeats")
    p.add_argument("--duration", type=int, default=5, help="--wrk: seconds per run")
    p.add_argument("--connections", type=int, default=64, help="--wrk: connections")
    p.add_argument("--drive", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.wrk:
        wrk_cpu(args.repeats, args.duration, args.connections)
        return 0
    if args.drive:
        run(args.drive, 200)  # warm-up, in both runs alike
        run(args.drive, args.n)
        return 0
    variants = args.variant or list(VARIANTS)
    base: float | None = None
    for variant in variants:
        if args.time:
            run(variant, min(args.n, 2000))
            cost = min(run(variant, args.n) for _ in range(args.repeat)) / args.n * 1e6
            unit = "µs/request"
        else:
            one, two = _count(variant, args.n), _count(variant, 2 * args.n)
            cost = (two - one) / args.n
            unit = "instructions/request"
        if base is None:
            base = cost
        print(f"{variant:13} {cost:12,.2f} {unit}   {cost / base:6.3f} x {variants[0]}", flush=True)
    print(f"snapshot      {snapshot_cost(20000):12,.2f} µs per heartbeat (not per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
