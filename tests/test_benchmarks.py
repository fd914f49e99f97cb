"""The benchmark harness: wrk output parsing, /proc accounting, the WebSocket load client's
frames, and the benchmark app served by fastgate."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from benchmarks import run, ws_load
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
