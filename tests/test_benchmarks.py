"""The benchmark harness: wrk output parsing, /proc accounting, the WebSocket load client's
frames, and the benchmark app served by fastgate."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import httpx
import pytest

from benchmarks import live_instructions, run, ws_load
from tests.server import ROOT, CommandProcess

WRK_OUT = """\
Running 2s test @ http://127.0.0.1:8000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.60ms  212.88us   4.59ms   95.65%
  Latency Distribution
     50%  856.00us
     75%    1.60ms
     90%    1.66ms
     99%    3.05ms
  119839 requests in 3.00s, 17.14MB read
  Socket errors: connect 1, read 7, write 2, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  39928.79
"""


def test_parse_wrk_reads_counts_percentiles_and_errors():
    res = run.parse_wrk(WRK_OUT)
    assert res["requests"] == 119839
    assert res["seconds"] == 3.0
    assert res["p50_ms"] == pytest.approx(0.856)
    assert res["p99_ms"] == pytest.approx(3.05)
    # read errors are wrk's count of servers closing after Connection: close: not failures.
    assert res["errors"] == 1 + 2 + 3 + 5


def test_parse_wrk_rejects_garbage():
    with pytest.raises(RuntimeError):
        run.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_proc_accounting_covers_the_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        pids = run.process_tree(os.getpid())
        assert os.getpid() in pids and child.pid in pids
        assert run.cpu_seconds([os.getpid()]) > 0
        assert run.rss_mib(pids) > run.rss_mib([os.getpid()]) > 1
    finally:
        child.communicate(b"", timeout=10)


@pytest.mark.parametrize("size", [0, 32, 125, 126, 300])
def test_ws_load_client_frame_is_a_masked_text_frame(size):
    payload = bytes(range(256)) * 2
    payload = payload[:size]
    frame = ws_load.client_frame(payload)
    assert frame[0] == 0x81  # FIN + text
    assert frame[1] & 0x80  # masked, as RFC 6455 §5.3 requires of clients
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        length = int.from_bytes(frame[2:4], "big")
        offset = 4
    assert length == size
    mask, data = frame[offset : offset + 4], frame[offset + 4 :]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(data)) == payload


@pytest.mark.e2e
def test_benchmark_app_under_fastgate(serve):
    server = serve("benchmarks.app:app", "--workers", "0", "--no-access-log")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/").text == "Hello, world!"
        assert client.get("/json").json() == {"message": "Hello, world!"}
        body = os.urandom(65536)
        r = client.post("/echo", content=body)
        assert r.status_code == 200 and r.content == body
        r = client.get("/stream")
        assert r.status_code == 200 and len(r.content) == 16 * 65536
        assert client.get("/missing").status_code == 404


def test_live_instructions_client_reads_every_response(serve):
    # The client live_instructions.py drives a server under callgrind with (valgrind itself
    # is too slow for the suite): every request answered 200 and read whole, on both paths,
    # keep-alive and with a connection per request (which the server must close).
    server = serve("benchmarks.app:app", "--workers", "0", "--no-access-log")
    for path in ("/", "/json"):
        for close in (False, True):
            asyncio.run(live_instructions._client(server.port, 64, path, close))
    asyncio.run(live_instructions._client(server.port, 8, "/stream", False))  # chunked, as uvicorn answers
    for close in (False, True):
        with pytest.raises(AssertionError):
            asyncio.run(live_instructions._client(server.port, 8, "/missing", close))  # a 404 is not counted


@pytest.mark.parametrize("big", [False, True])
def test_bench_h1_runs_every_mode(capsys, big):
    from benchmarks import bench_h1

    assert bench_h1.main(["-n", "200", "--repeat", "1", *(["--big"] if big else [])]) == 0
    out = capsys.readouterr().out
    for mode in ("h1", "cycle", "protocol", "close"):
        assert mode in out


@pytest.mark.parametrize("mode", ["bare", "inline", "task"])
def test_floor_server_answers_in_every_mode(mode):
    command = [sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--port", "0", "--mode", mode]
    with CommandProcess(command) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):  # keep-alive: the parser is reused
            r = client.get("/")
            assert r.status_code == 200 and r.text == "Hello, world!"


def test_resources_report_renders_every_part() -> None:
    from benchmarks import resources

    wrk = {"requests": 1000, "seconds": 2.0, "p50_ms": 1.0, "p99_ms": 3.0, "errors": 0, "cpu_us": 20.0}
    results = {
        "idle": [{"server": "fastgate", "how": "keep-alive timeout", "keep_alive_s": 4.0, "connections": 10,
                  "kib_per_conn": 3.25, "fds1": 26, "all_closed_s": 4.2, "late_p50_ms": 100.0, "late_max_ms": 250.0,
                  "reset": 0}],
        "slowloris": [{"server": "fastgate", "alone": wrk, "beside": wrk, "held": 5, "outcomes": {"408": 5},
                       "answered_min_s": 1.0, "answered_p50_s": 1.1, "answered_max_s": 1.2, "still_open_at_end": 5}],
        "soak": [{"server": "fastgate", "requests": 5000, "errors": 0, "p99_ms_range": [1.0, 2.0],
                  "samples": [{"rss_kib": 1024, "fds": 16}, {"rss_kib": 2048, "fds": 16}]}],
        "ws": [{"server": "fastgate", "compression": True, "connections": 10, "kib_per_conn": 26.0,
                "negotiated": "permessage-deflate", "fds0": 16, "fds_after": 16}],
    }
    md = resources.render(results)
    for heading in ("Idle keep-alive", "Slowloris", "Soak", "Idle WebSocket"):
        assert f"### {heading}" in md
    assert "| fastgate | keep-alive timeout (4 s) | 10 | 3.2 |" in md
    assert "408: 5" in md and "1.0 → 2.0 → 2.0 MiB" in md and "| 26.0 |" in md


def test_resources_percentile() -> None:
    from benchmarks import resources

    assert resources.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert resources.percentile([1.0, 2.0], 100) == 2.0


@pytest.mark.e2e
# The clients run on uvloop, which runs pytest-timeout's SIGALRM handler inside a loop callback
# and swallows its exception: past 60 s on a loaded machine the test hung for good instead of
# failing. The thread method ends the test process (xdist reports it and starts another).
@pytest.mark.timeout(180, method="thread")
def test_resources_benchmark_runs_small(capsys) -> None:  # type: ignore[no-untyped-def]
    # Every part of benchmarks/resources.py against a real fastgate, with tiny counts.
    from benchmarks import resources

    parts = "idle,ws" + (",slowloris,soak" if shutil.which("wrk") else "")
    code = resources.main(["--servers", "fastgate", "--parts", parts, "--idle", "40", "--keep-alive", "1",
                           "--ws", "10", "--swarm", "10", "--header-timeout", "1", "--normal-seconds", "1",
                           "--soak", "2000", "--soak-chunk", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| fastgate | keep-alive timeout (1 s) | 40 |" in out and "| fastgate | SIGTERM (1 s) | 40 |" in out
    assert "| fastgate | on | 10 |" in out and "| fastgate | off | 10 |" in out
    if "slowloris" in parts:
        assert "408: " in out and "### Soak" in out


@pytest.mark.e2e
def test_preload_benchmark_measures_a_preloaded_server(serve):
    from benchmarks import preload_memory

    server = serve(preload_memory.APP, "--workers", str(preload_memory.WORKERS), "--preload",
                   env={"PRELOAD_RECORDS": "2000"})
    server.wait_line(r"All 4 worker\(s\) ready", 30)
    idle = preload_memory.measure(server.pid)
    assert 0 < idle.worker_uss < idle.worker_rss and idle.total_pss > idle.master_rss / 2
    preload_memory.load(server.port, 400, connections=4)
    assert int(preload_memory.get(server.port, "/gc").split()[1]) in preload_memory.children(server.pid)
    rollup = preload_memory.smaps_rollup(server.pid)
    assert {"Rss", "Pss", "Private_Clean", "Private_Dirty"} <= set(rollup)


def test_tls_files_report_and_argv(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from benchmarks import tls_files

    server = tls_files.FileServer("fastgate", "/venv/bin/python")
    assert "--ssl-certfile" not in server.argv(8000, 1)
    server.tls = ("/c.pem", "/k.pem")
    argv = server.argv(8000, 1)
    assert argv[argv.index("--ssl-certfile") + 1] == "/c.pem" and argv[argv.index("--ssl-keyfile") + 1] == "/k.pem"
    granian = tls_files.FileServer("granian", "/peers/bin/python")
    granian.tls = ("/c.pem", "/k.pem")
    assert granian.argv(8000, 1)[-1] == tls_files.APP and "--ssl-certificate" in granian.argv(8000, 1)
    res = {"rps": 200.0, "cpu_us": 50.0, "p99_ms": 1.5, "errors": 0}
    rows = [("file 1 MiB", "fastgate", res), ("file 1 MiB", "uvicorn", dict(res, rps=100.0, errors=2))]
    out = tmp_path / "r.md"
    args = argparse.Namespace(pinned=True, connections=32, duration=5, warmup=1, out=str(out))
    tls_files.write_report(rows, {"fastgate": "0.1.0"}, args)
    text = out.read_text()
    assert "| file 1 MiB | fastgate | 200 (200 MiB/s) | 2.00× | 50 µs | 1.50 ms |" in text
    assert "file 1 MiB/uvicorn 2" in text


def test_file_app_sends_with_pathsend_under_fastgate(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    payload = os.urandom(300_000)
    (tmp_path / "f").write_bytes(payload)
    server = serve("benchmarks.file_app:app", env={"BENCH_FILE": str(tmp_path / "f")})
    response = httpx.get(f"{server.url}/file", timeout=10)
    assert response.status_code == 200 and response.content == payload
    assert httpx.get(f"{server.url}/", timeout=10).text == "Hello, world!"
