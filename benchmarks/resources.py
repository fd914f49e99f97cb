"""Load and resource figures for one worker: idle connections, slowloris, a long soak, idle WebSockets.

Each part starts a real server (``python -m fastgate benchmarks.app:app --workers 1``, and
uvicorn from the peers venv beside it) pinned to core 0, drives it from this process and
wrk pinned to core 1, and reads the worker's RSS and open fds from ``/proc``:

* ``idle``: N keep-alive connections each make one request, then idle. Worker RSS growth
  per connection; then how long the server takes to close them all once they reach
  ``--timeout-keep-alive``, and, with a fresh set, once the worker is SIGTERMed.
* ``slowloris``: wrk's p50/p99 and throughput on normal keep-alive clients, alone and
  beside a swarm of S connections that each trickle one header byte every second (and
  reconnect when closed); what each swarm connection was answered, and after how long
  (``--timeout-request-header``).
* ``soak``: wrk keep-alive until R requests were served; worker RSS and fds at the start,
  after each chunk, and at the end.
* ``ws``: N idle WebSocket connections (one ~1 KiB message echoed on each) with and
  without permessage-deflate: worker RSS growth per connection (``ws_memory.py`` compares
  deflate settings; this compares servers).

    python benchmarks/resources.py --quick       # about 2 minutes, smaller counts
    python benchmarks/resources.py               # the figures of RESOURCES.md (make bench-resources)

Numbers go to stdout as Markdown tables, and to ``benchmarks/results/resources-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import run as bench  # noqa: E402
from benchmarks import ws_memory  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PLAIN = bench.Workload("plaintext", "plaintext keep-alive")


@dataclass
class Sizes:
    idle: int = 10_000  # idle keep-alive connections
    keep_alive: float = 10.0  # --timeout-keep-alive for the idle part (opening must fit in it)
    swarm: int = 1_000  # slowloris connections
    header_timeout: float = 10.0  # --timeout-request-header
    trickle: float = 1.0  # seconds between two header bytes of a slowloris connection
    normal_seconds: int = 15  # each wrk run beside (or without) the swarm
    normal_connections: int = 16
    soak: int = 1_000_000  # requests
    soak_chunk: int = 10  # seconds per wrk run of the soak
    ws: int = 1_000  # idle WebSocket connections


QUICK = Sizes(idle=2_000, keep_alive=4.0, swarm=300, header_timeout=3.0, normal_seconds=5, soak=100_000,
              soak_chunk=3, ws=300)


# ------------------------------------------------------------------ /proc


def rss_kib(pid: int) -> int:
    return ws_memory.rss_kib(pid)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def worker_pid(r: bench.Running, timeout: float = 20.0) -> int:
    """The process that serves: fastgate's only worker (the master's child), or uvicorn itself."""
    deadline = time.monotonic() + timeout
    while True:
        pids = r.pids()
        if r.server.kind != "fastgate":
            return pids[0]
        workers = [p for p in pids[1:] if alive(p)]
        if len(workers) == 1:
            return workers[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one worker under {r.proc.pid}, found {workers}")
        time.sleep(0.05)


def settle_fds(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """Wait until the worker holds at most ``at_most`` fds (closed connections are gone)."""
    deadline = time.monotonic() + timeout
    while True:
        n = open_fds(pid)
        if n <= at_most or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (servers started from here inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pick_loop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


# ------------------------------------------------------------------ idle keep-alive connections

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class IdleClient(asyncio.Protocol):
    """One request, then idle until the server closes; records when each happened."""

    def __init__(self, group: IdleGroup) -> None:
        self.group = group
        self.buf = bytearray()
        self.status = 0
        self.idle_at = 0.0  # response complete
        self.closed_at = 0.0
        self.reset = False
        self.late_bytes = 0  # anything after the response (there should be nothing)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.idle_at:
            self.late_bytes += len(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) >= end + 4 + length:
            self.status = int(self.buf[9:12])
            self.idle_at = time.monotonic()
            self.buf = bytearray()
            self.group.answered()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        self.reset = exc is not None
        self.group.closed()


class IdleGroup:
    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: list[IdleClient] = []
        self.errors: Counter[str] = Counter()
        self._answered = 0
        self._closed = 0
        self._want_answered = asyncio.Event()
        self._want_closed = asyncio.Event()
        self._target = 0

    def answered(self) -> None:
        self._answered += 1
        if self._answered >= self._target:
            self._want_answered.set()

    def closed(self) -> None:
        self._closed += 1
        if self._closed >= len(self.clients):
            self._want_closed.set()

    async def open(self, n: int, batch: int = 500) -> None:
        """Open ``n`` connections, ``batch`` at a time, each answered before the next batch."""
        loop = asyncio.get_running_loop()
        for start in range(0, n, batch):
            count = min(batch, n - start)
            self._target = self._answered + count
            self._want_answered.clear()
            results = await asyncio.gather(
                *(loop.create_connection(lambda: IdleClient(self), "127.0.0.1", self.port) for _ in range(count)),
                return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException):
                    self.errors[type(res).__name__] += 1
                    self._target -= 1
                else:
                    self.clients.append(res[1])  # type: ignore[arg-type]
            if self._answered < self._target:
                await asyncio.wait_for(self._want_answered.wait(), 60)

    async def wait_closed(self, timeout: float) -> bool:
        if self._closed >= len(self.clients):
            return True
        try:
            await asyncio.wait_for(self._want_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close_all(self) -> None:
        for c in self.clients:
            if not c.closed_at:
                c.transport.close()


def close_summary(clients: list[IdleClient], origin: float, deadlines: list[float]) -> dict[str, Any]:
    """When the connections were closed, relative to ``origin`` and to each one's deadline."""
    closed = [c for c in clients if c.closed_at]
    late = [c.closed_at - d for c, d in zip(clients, deadlines, strict=True) if c.closed_at]
    return {
        "closed": len(closed),
        "reset": sum(c.reset for c in closed),
        "late_bytes": sum(c.late_bytes for c in clients),
        "first_close_s": min((c.closed_at for c in closed), default=origin) - origin,
        "all_closed_s": max((c.closed_at for c in closed), default=origin) - origin,
        "late_p50_ms": percentile(late, 50) * 1e3,
        "late_max_ms": max(late, default=float("nan")) * 1e3,
    }


async def idle_round(r: bench.Running, n: int, keep_alive: float, sigterm: bool) -> dict[str, Any]:
    pid = worker_pid(r)
    fds0 = open_fds(pid)
    warm = IdleGroup(r.port)
    await warm.open(200)  # first connections: lazy imports, first allocations
    warm.close_all()
    await warm.wait_closed(10)
    fds0 = settle_fds(pid, fds0)
    await asyncio.sleep(0.3)
    rss0 = rss_kib(pid)
    group = IdleGroup(r.port)
    t0 = time.monotonic()
    await group.open(n)
    opened = time.monotonic()
    rss1, fds1 = rss_kib(pid), open_fds(pid)
    res: dict[str, Any] = {
        "connections": len(group.clients), "connect_errors": dict(group.errors),
        "statuses": dict(Counter(c.status for c in group.clients)),
        "open_s": opened - t0, "rss0_kib": rss0, "rss1_kib": rss1, "fds0": fds0, "fds1": fds1,
        "kib_per_conn": (rss1 - rss0) / max(1, len(group.clients)),
        "keep_alive_s": keep_alive,
    }
    deadlines = [c.idle_at + keep_alive for c in group.clients]
    if sigterm:
        os.kill(pid, signal.SIGTERM)
        t_sig = time.monotonic()
        res["closed_all"] = await group.wait_closed(keep_alive + 60)
        exit_deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < exit_deadline:
            await asyncio.sleep(0.01)
        res["worker_exit_s"] = time.monotonic() - t_sig
        # How long after SIGTERM each connection was closed.
        res.update(close_summary(group.clients, t_sig, [t_sig] * len(group.clients)))
    else:
        res["closed_all"] = await group.wait_closed(keep_alive + 60)
        res.update(close_summary(group.clients, opened, deadlines))
        res["fds_after"] = settle_fds(pid, fds0)
    group.close_all()
    return res


def run_idle(servers: list[bench.Server], sizes: Sizes, cpus: str | None) -> list[dict[str, Any]]:
    out = []
    for server in servers:
        for sigterm in (False, True):
            extra = ["--timeout-keep-alive", f"{sizes.keep_alive:g}"]  # uvicorn takes integers only
            with bench.running(server, 1, cpus, extra) as r:
                res = arun(idle_round(r, sizes.idle, sizes.keep_alive, sigterm))
            res.update(server=server.name, how="SIGTERM" if sigterm else "keep-alive timeout")
            print(f"idle {server.name:9} {res['how']:18}: {res['connections']} conns, "
                  f"{res['kib_per_conn']:.1f} KiB/conn, all closed {res['all_closed_s']:.2f}s "
                  f"(late p50 {res['late_p50_ms']:.0f} max {res['late_max_ms']:.0f} ms), "
                  f"reset {res['reset']}" + (f", worker exit {res['worker_exit_s']:.2f}s" if sigterm else ""),
                  flush=True)
            out.append(res)
    return out


# ------------------------------------------------------------------ slowloris


class Slow(asyncio.Protocol):
    """A request head that never ends: one more header byte every ``trickle`` seconds."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.buf = bytearray()
        self.t0 = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: ")  # type: ignore[attr-defined]
        self.swarm.connected += 1
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(random.random() * self.swarm.trickle, self.tick)

    def tick(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"a")  # type: ignore[attr-defined]
            self.timer = asyncio.get_running_loop().call_later(self.swarm.trickle, self.tick)

    def data_received(self, data: bytes) -> None:
        self.buf += data

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.swarm.lost(self, exc)


@dataclass
class Swarm:
    port: int
    size: int
    trickle: float
    running: bool = True
    connected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    answered_after: list[float] = field(default_factory=list)
    members: set[Slow] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def connect_one(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(lambda: Slow(self), "127.0.0.1", self.port)
        except OSError as exc:
            self.outcomes[f"connect error {type(exc).__name__}"] += 1
            return
        self.members.add(proto)

    async def start(self) -> None:
        for start in range(0, self.size, 200):
            await asyncio.gather(*(self.connect_one() for _ in range(start, min(self.size, start + 200))))

    def lost(self, member: Slow, exc: Exception | None) -> None:
        self.members.discard(member)
        if not self.running:
            return
        status = bytes(member.buf[9:12]) if member.buf.startswith(b"HTTP/1.1 ") else b""
        if status:
            self.outcomes[status.decode()] += 1
            self.answered_after.append(time.monotonic() - member.t0)
        else:
            self.outcomes["reset" if exc is not None else "closed without an answer"] += 1
        task = asyncio.get_running_loop().create_task(self.connect_one())  # an attacker comes back
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop(self) -> int:
        self.running = False
        still = len(self.members)
        for member in list(self.members):
            member.transport.close()
        return still


async def wrk_async(port: int, seconds: int, connections: int, cpus: str | None) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
            f"http://127.0.0.1:{port}/"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode().strip()}")
    return bench.parse_wrk(out.decode())


async def slowloris_round(r: bench.Running, sizes: Sizes, cpus: str | None) -> dict[str, Any]:
    pid = worker_pid(r)
    pids = r.pids()
    await wrk_async(r.port, 1, sizes.normal_connections, cpus)  # warm-up
    cpu0 = bench.cpu_seconds(pids)
    alone = await wrk_async(r.port, sizes.normal_seconds, sizes.normal_connections, cpus)
    alone["cpu_us"] = (bench.cpu_seconds(pids) - cpu0) / max(1, alone["requests"]) * 1e6
    swarm = Swarm(r.port, sizes.swarm, sizes.trickle)
    started = time.monotonic()
    await swarm.start()
    held = len(swarm.members)
    fds_swarm = open_fds(pid)
    cpu0 = bench.cpu_seconds(pids)
    beside = await wrk_async(r.port, sizes.normal_seconds, sizes.normal_connections, cpus)
    beside["cpu_us"] = (bench.cpu_seconds(pids) - cpu0) / max(1, beside["requests"]) * 1e6
    # The swarm lives at least one header deadline (plus the sweep's slack), so that a server
    # that has one shows it, whatever the length of the wrk run.
    await asyncio.sleep(max(0.0, started + sizes.header_timeout + 2 - time.monotonic()))
    still_open = swarm.stop()
    for task in list(swarm.tasks):
        task.cancel()
    after = swarm.answered_after
    return {
        "alone": alone, "beside": beside, "swarm": sizes.swarm, "held": held, "fds_with_swarm": fds_swarm,
        "outcomes": dict(swarm.outcomes), "still_open_at_end": still_open,
        "answered_min_s": min(after, default=float("nan")), "answered_p50_s": percentile(after, 50),
        "answered_max_s": max(after, default=float("nan")), "header_timeout_s": sizes.header_timeout,
    }


def run_slowloris(servers: list[bench.Server], sizes: Sizes, cpus: str | None,
                  client_cpus: str | None) -> list[dict[str, Any]]:
    out = []
    for server in servers:
        extra = ["--timeout-request-header", f"{sizes.header_timeout:g}"] if server.kind == "fastgate" else []
        with bench.running(server, 1, cpus, extra) as r:
            res = arun(slowloris_round(r, sizes, client_cpus))
        res["server"] = server.name
        a, b = res["alone"], res["beside"]
        print(f"slowloris {server.name:9}: alone {a['requests'] / a['seconds']:.0f}/s p50 {a['p50_ms']:.2f} "
              f"p99 {a['p99_ms']:.2f} ms; beside {res['held']} slow conns {b['requests'] / b['seconds']:.0f}/s "
              f"p50 {b['p50_ms']:.2f} p99 {b['p99_ms']:.2f} ms, errors {b['errors']}; swarm answered "
              f"{res['outcomes']} after {res['answered_min_s']:.2f}-{res['answered_max_s']:.2f}s, "
              f"{res['still_open_at_end']} still open", flush=True)
        out.append(res)
    return out


# ------------------------------------------------------------------ soak


def run_soak(servers: list[bench.Server], sizes: Sizes, cpus: str | None,
             client_cpus: str | None) -> list[dict[str, Any]]:
    out = []
    for server in servers:
        with bench.running(server, 1, cpus) as r:
            pid = worker_pid(r)
            samples = [{"requests": 0, "rss_kib": rss_kib(pid), "fds": open_fds(pid)}]
            fds_idle = samples[0]["fds"]
            total = errors = 0
            p99s = []
            while total < sizes.soak:
                res = bench.run_wrk(r.port, PLAIN, sizes.soak_chunk, 64, client_cpus)
                total += res["requests"]
                errors += res["errors"]
                p99s.append(res["p99_ms"])
                samples.append({"requests": total, "rss_kib": rss_kib(pid), "fds": settle_fds(pid, fds_idle, 5)})
                print(f"soak {server.name:9}: {total:>9,} requests, worker RSS {samples[-1]['rss_kib'] / 1024:.1f} "
                      f"MiB, fds {samples[-1]['fds']}", flush=True)
            out.append({"server": server.name, "requests": total, "errors": errors, "samples": samples,
                        "p99_ms_range": [min(p99s), max(p99s)], "same_pid": worker_pid(r) == pid})
    return out


# ------------------------------------------------------------------ idle WebSockets


async def ws_round(r: bench.Running, n: int, compression: bool) -> dict[str, Any]:
    pid = worker_pid(r)
    url = f"ws://127.0.0.1:{r.port}/"
    mode = "deflate" if compression else None
    fds_idle = open_fds(pid)
    warm = await ws_memory.open_connections(url, 20, mode)
    await asyncio.sleep(0.3)
    rss0 = rss_kib(pid)
    conns = await ws_memory.open_connections(url, n, mode)
    await asyncio.sleep(0.5)
    rss1, fds1 = rss_kib(pid), open_fds(pid)
    negotiated = conns[0].response.headers.get("Sec-WebSocket-Extensions") or "-"  # type: ignore[attr-defined]
    await asyncio.gather(*(ws.close() for ws in conns + warm))  # type: ignore[attr-defined]
    return {"connections": n, "kib_per_conn": (rss1 - rss0) / n, "fds0": fds_idle, "fds1": fds1,
            "fds_after": settle_fds(pid, fds_idle), "negotiated": negotiated}


def run_ws(servers: list[bench.Server], sizes: Sizes, cpus: str | None) -> list[dict[str, Any]]:
    out = []
    for server in servers:
        for compression in (False, True):
            if server.kind == "fastgate":
                extra = [] if compression else ["--no-ws-per-message-deflate"]
            else:
                extra = ["--ws-per-message-deflate", "true" if compression else "false"]
            with bench.running(server, 1, cpus, extra) as r:
                res = arun(ws_round(r, sizes.ws, compression))
            res.update(server=server.name, compression=compression)
            print(f"ws {server.name:9} deflate {'on ' if compression else 'off'}: {res['kib_per_conn']:.1f} KiB/conn "
                  f"({res['negotiated']}), fds {res['fds0']} -> {res['fds1']} -> {res['fds_after']}", flush=True)
            out.append(res)
    return out


# ------------------------------------------------------------------ report


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    if results.get("idle"):
        add("### Idle keep-alive connections\n")
        add("| server | closed by | connections | worker KiB / connection | fds open | all closed after | "
            "each closed after its deadline (or SIGTERM): p50 / max | resets | worker exit |")
        add("|---|---|---|---|---|---|---|---|---|")
        for x in results["idle"]:
            origin = "SIGTERM" if x["how"] == "SIGTERM" else "last response"
            exit_s = f"{x['worker_exit_s']:.2f} s" if "worker_exit_s" in x else "-"
            add(f"| {x['server']} | {x['how']} ({x['keep_alive_s']:g} s) | {x['connections']:,} | "
                f"{x['kib_per_conn']:.1f} | {x['fds1']:,} | {x['all_closed_s']:.2f} s after {origin} | "
                f"{x['late_p50_ms']:.0f} / {x['late_max_ms']:.0f} ms | {x['reset']} | {exit_s} |")
        add("")
    if results.get("slowloris"):
        add("### Slowloris swarm beside normal keep-alive clients\n")
        add("| server | normal clients | req/s | p50 ms | p99 ms | CPU µs/req | errors | swarm answered | "
            "after (min / p50 / max) | swarm still open at the end |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for x in results["slowloris"]:
            for label, w in (("alone", x["alone"]), (f"beside {x['held']:,} slowloris", x["beside"])):
                swarm = "-" if label == "alone" else (", ".join(f"{k}: {v:,}" for k, v in x["outcomes"].items())
                                                      or "nothing")
                after = "-" if label == "alone" else (
                    f"{x['answered_min_s']:.2f} / {x['answered_p50_s']:.2f} / {x['answered_max_s']:.2f} s"
                    if x["outcomes"] else "-")
                still = "-" if label == "alone" else f"{x['still_open_at_end']:,}"
                add(f"| {x['server']} | {label} | {w['requests'] / w['seconds']:,.0f} | {w['p50_ms']:.2f} | "
                    f"{w['p99_ms']:.2f} | {w['cpu_us']:.1f} | {w['errors']} | {swarm} | {after} | {still} |")
        add("")
    if results.get("soak"):
        add("### Soak\n")
        add("| server | requests | errors | worker RSS: idle → after the first chunk → end (max) | "
            "fds: idle → end | wrk p99 range |")
        add("|---|---|---|---|---|---|")
        for x in results["soak"]:
            s = x["samples"]
            peak = max(v["rss_kib"] for v in s)
            add(f"| {x['server']} | {x['requests']:,} | {x['errors']} | {s[0]['rss_kib'] / 1024:.1f} → "
                f"{s[1]['rss_kib'] / 1024:.1f} → {s[-1]['rss_kib'] / 1024:.1f} MiB ({peak / 1024:.1f}) | "
                f"{s[0]['fds']} → {s[-1]['fds']} | {x['p99_ms_range'][0]:.2f}–{x['p99_ms_range'][1]:.2f} ms |")
        add("")
    if results.get("ws"):
        add("### Idle WebSocket connections\n")
        add("| server | permessage-deflate | connections | worker KiB / connection | negotiated | fds after close |")
        add("|---|---|---|---|---|---|")
        for x in results["ws"]:
            add(f"| {x['server']} | {'on' if x['compression'] else 'off'} | {x['connections']:,} | "
                f"{x['kib_per_conn']:.1f} | `{x['negotiated']}` | {x['fds0']} → {x['fds_after']} |")
        add("")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def arun(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=pick_loop()) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """This process (the clients) on the client core while measuring."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller counts and shorter runs (about 2 minutes)")
    p.add_argument("--parts", default="idle,slowloris,soak,ws", help="comma list of idle,slowloris,soak,ws")
    p.add_argument("--servers", default=None, help="comma list: fastgate,uvicorn (default: both if the peers venv "
                                                    "exists)")
    p.add_argument("--fastgate-python", default=sys.executable)
    p.add_argument("--peers-python", default=str(HERE / ".venv-peers" / "bin" / "python"))
    for name, value in vars(Sizes()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    overrides = {k: getattr(args, k) for k in vars(Sizes()) if getattr(args, k) is not None}
    sizes = Sizes(**{**vars(sizes), **overrides})
    parts = args.parts.split(",")
    if ("slowloris" in parts or "soak" in parts) and shutil.which("wrk") is None:
        print("resources.py: wrk not found; install it (apt-get install wrk) or run `make bench-resources` as root",
              file=sys.stderr)
        return 2
    names = (args.servers or ("fastgate,uvicorn" if Path(args.peers_python).exists() else "fastgate")).split(",")
    servers = []
    for name in names:
        py = os.path.abspath(args.fastgate_python if name == "fastgate" else args.peers_python)
        servers.append(bench.Server(name, py, bench.pkg_version(py, name)))
    hard = raise_nofile()
    if hard < sizes.idle + 100:
        print(f"resources.py: RLIMIT_NOFILE hard limit {hard} < {sizes.idle + 100}: --idle lowered", file=sys.stderr)
        sizes.idle = hard - 100
    (HERE / "results").mkdir(exist_ok=True)
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("0", "1") if ncpu >= 2 else (None, None)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": {"cpus": ncpu, "cpu_model": bench.cpu_model(), "kernel": platform.release(),
                 "python": platform.python_version(), "loadavg_start": os.getloadavg(), "nofile": hard},
        "servers": {s.name: s.version for s in servers},
        "sizes": vars(sizes),
    }
    with pinned(client_cpus):
        if "idle" in parts:
            results["idle"] = run_idle(servers, sizes, server_cpus)
        if "slowloris" in parts:
            results["slowloris"] = run_slowloris(servers, sizes, server_cpus, client_cpus)
        if "soak" in parts:
            results["soak"] = run_soak(servers, sizes, server_cpus, client_cpus)
        if "ws" in parts:
            results["ws"] = run_ws(servers, sizes, server_cpus)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results["host"]["loadavg_end"] = os.getloadavg()
    raw = HERE / "results" / f"resources-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.write_text(json.dumps(results, indent=1))
    print()
    print(f"Servers: {', '.join(f'{k} {v}' for k, v in results['servers'].items())}; one worker pinned to core 0, "
          f"clients on core 1; {ncpu} CPUs ({results['host']['cpu_model']}), Python {platform.python_version()}, "
          f"load average {results['host']['loadavg_start'][0]:.1f} → {results['host']['loadavg_end'][0]:.1f}.\n")
    print(render(results))
    print(f"raw results: {raw.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
