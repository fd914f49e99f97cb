"""Static files and TLS: fastgate against its peers, written to ``benchmarks/TLS_FILES.md``.

* **file 1 MiB**: ``GET /file`` answered by Starlette's ``FileResponse`` (``file_app.py``).
  Under fastgate it sends with ``http.response.pathsend`` (``os.sendfile``, zero copy);
  uvicorn offers no extension, so Starlette streams the file through Python in 64 KiB
  chunks; granian offers pathsend and sends it from Rust.
* **TLS plaintext**: ``GET /`` (13 bytes) over keep-alive HTTPS connections.
* **TLS handshakes**: ``GET /`` with ``Connection: close`` over HTTPS, so every request is
  a new TCP connection and a full TLS handshake (connections/s).

One worker per server, pinned to core 0 with wrk on core 1 (as ``run.py``), one run each:
the ratios are from a single run on a shared machine. The certificate (ECDSA P-256) is
made by ``openssl`` at start.

    python benchmarks/tls_files.py --fastgate-python .venv/bin/python --peers-python benchmarks/.venv-peers/bin/python
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, ROOT, Running, Server, Workload, cpu_seconds, pkg_version, run_wrk  # noqa: E402

APP = "benchmarks.file_app:app"


class FileServer(Server):
    """A ``Server`` running ``file_app`` (optionally over TLS)."""

    tls: tuple[str, str] | None = None

    def argv(self, port: int, workers: int) -> list[str]:
        bindir = str(Path(self.python).parent)
        tls = self.tls
        if self.kind == "fastgate":
            argv = [self.python, "-m", "fastgate", APP, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--no-access-log", "--log-level", "warning"]
            return argv + (["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]] if tls else [])
        if self.kind == "uvicorn":
            argv = [f"{bindir}/uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                    "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
            return argv + (["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]] if tls else [])
        if self.kind == "granian":
            argv = [f"{bindir}/granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--http", "1", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
            return argv + (["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1]] if tls else []) + [APP]
        raise ValueError(self.kind)


class TLSRunning(Running):
    """``Running`` whose readiness probe speaks HTTPS when the server does."""

    def wait_ready(self, timeout: float = 30.0) -> None:
        if getattr(self.server, "tls", None) is None:
            super().wait_ready(timeout)
            return
        import ssl
        import urllib.request

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/", context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.name} did not answer over TLS within {timeout}s")


def make_cert(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return cert, key


def measure(server: FileServer, wl: Workload, scheme: str, args: argparse.Namespace) -> dict[str, Any]:
    r = TLSRunning(server, 1, "0" if args.pinned else None)
    try:
        r.wait_ready()
        r.settle(1)
        if args.warmup:
            run_wrk(r.port, wl, args.warmup, args.connections, "1" if args.pinned else None, scheme=scheme)
        pids = r.pids()
        cpu0 = cpu_seconds(pids)
        res = run_wrk(r.port, wl, args.duration, args.connections, "1" if args.pinned else None, scheme=scheme)
        res["cpu_s"] = cpu_seconds(pids) - cpu0
    finally:
        r.stop()
    res["rps"] = res["requests"] / res["seconds"] if res["seconds"] else 0.0
    res["cpu_us"] = res["cpu_s"] / res["requests"] * 1e6 if res["requests"] else None
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fastgate-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--peers-python", default=str(HERE / ".venv-peers" / "bin" / "python"))
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--out", default=str(HERE / "TLS_FILES.md"))
    args = p.parse_args(argv)
    args.pinned = len(os.sched_getaffinity(0)) >= 2
    for tool in ("wrk", "openssl"):
        if shutil.which(tool) is None:
            print(f"tls_files.py: {tool} not found", file=sys.stderr)
            return 2
    (HERE / "results").mkdir(exist_ok=True)
    pythons = {"fastgate": args.fastgate_python, "uvicorn": args.peers_python, "granian": args.peers_python}
    versions = {name: pkg_version(py, name) for name, py in pythons.items()}
    file_wl = Workload("file", "file 1 MiB", path="/file", bytes_per_request=1024 * 1024)
    plain_wl = Workload("tls-plain", "TLS plaintext")
    close_wl = Workload("tls-close", "TLS handshakes", headers=("Connection: close",))
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cert = make_cert(tmp)
        with open(os.path.join(tmp, "file.bin"), "wb") as f:
            f.write(os.urandom(1024 * 1024))
        os.environ["BENCH_FILE"] = os.path.join(tmp, "file.bin")
        for name in ("fastgate", "uvicorn", "granian"):
            rows.append((file_wl.title, name, measure(FileServer(name, pythons[name]), file_wl, "http", args)))
        for wl in (plain_wl, close_wl):
            for name in ("fastgate", "uvicorn"):
                server = FileServer(name, pythons[name])
                server.tls = cert
                rows.append((wl.title, name, measure(server, wl, "https", args)))
    write_report(rows, versions, args)
    return 0


def write_report(rows: list[tuple[str, str, dict[str, Any]]], versions: dict[str, str],
                 args: argparse.Namespace) -> None:
    by = {(title, name): res for title, name, res in rows}
    lines = [
        "# Static files and TLS",
        "",
        f"`make bench` ({Path(__file__).name}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one worker each, "
        f"{'server on core 0 and wrk on core 1' if args.pinned else 'unpinned'}, {args.connections} connections, "
        f"{args.duration} s per run after {args.warmup} s of warm-up, one run (a shared 2-core machine: read the "
        "ratios, not the absolute numbers). Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "| workload | server | requests/s | ratio to uvicorn | server CPU per request | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for title, name, res in rows:
        base = by.get((title, "uvicorn"))
        ratio = f"{res['rps'] / base['rps']:.2f}×" if base and base["rps"] else "—"
        cpu = f"{res['cpu_us']:.0f} µs" if res["cpu_us"] else "—"
        p99 = f"{res['p99_ms']:.2f} ms" if res.get("p99_ms") is not None else "—"
        extra = f" ({res['rps']:.0f} MiB/s)" if title.startswith("file") else ""
        lines.append(f"| {title} | {name} | {res['rps']:,.0f}{extra} | {ratio} | {cpu} | {p99} |")
    errors = ", ".join(f"{t}/{n} {r['errors']}" for t, n, r in rows if r["errors"])
    lines += ["", "`TLS handshakes` is `Connection: close` over HTTPS: requests/s there is new TLS connections/s.",
              f"Errors (non-2xx, connect/write/timeouts): {errors or 'none'}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
