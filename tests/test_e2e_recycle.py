"""End to end: drain-first recycling by max requests, memory and lifetime, under load.

Each recycle must start the replacement, see it READY, and only then tell the old worker to
drain, so that a load client counting failures sees none.
"""

from __future__ import annotations

import re

import pytest

from tests.server import ServerProcess, wait_for
from tests.supervisor.util import LoadClient, alive, get
from tests.test_e2e_supervisor_reload import generation_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = "tests.supervisor.sup_apps:app"
RECYCLING = re.compile(r"Recycling worker (\d+) \(slot \d+, ([a-z-]+)\): (.*); its replacement starts first")
REPLACES = re.compile(r"Worker (\d+) replaces worker (\d+) \(recycled for ([a-z-]+); (\d+) so far\)")


def drain_first(server: ServerProcess) -> list[tuple[int, int, str]]:
    """Every completed recycle as (old pid, new pid, reason), checked to be drain-first:
    announced, then the replacement READY, then the old worker told to drain, then its exit."""
    lines = server.output.splitlines()
    done = []
    for i, line in enumerate(lines):
        m = REPLACES.search(line)
        if not m:
            continue
        new, old, reason = int(m.group(1)), int(m.group(2)), m.group(3)
        announced = [j for j, x in enumerate(lines[:i]) if (r := RECYCLING.search(x)) and int(r.group(1)) == old]
        ready = [j for j, x in enumerate(lines[:i]) if f"Worker {new} (slot" in x and "ready" in x]
        exited = [j for j, x in enumerate(lines) if f"Worker {old} exited" in x]
        assert announced and ready and announced[-1] < ready[-1], f"{old} -> {new}:\n{server.output}"
        assert all(j > i for j in exited), f"worker {old} exited before its replacement was ready"
        done.append((old, new, reason))
    return done


def test_max_requests_recycles_drain_first_under_load(serve):
    server = serve(APP, "--workers", "2", "--limit-max-requests", "100", "--limit-max-requests-jitter", "20")
    generation_ready(server, 1, 2)
    with LoadClient(server, threads=4) as load:
        wait_for(lambda: len(drain_first(server)) >= 4, 60, what="4 recycles")
    print(f"max-requests recycling under load: sent {load.sent}, failed {len(load.failures)}, "
          f"recycles {len(drain_first(server))}")
    assert load.failures == []
    assert {reason for _, _, reason in drain_first(server)} == {"max-requests"}
    assert "Served" in server.output and "asking the master for a replacement" in server.output
    # Each worker served its limit (100..120) and then at most what arrived while its
    # replacement booted: no worker is cut short.
    for old, _, _ in drain_first(server)[:2]:
        assert load.pids[old] >= 100


def test_memory_limit_recycles_the_worker_above_it_and_no_other(serve):
    server = serve(APP, "--workers", "2", "--limit-max-memory", "70", "--timeout-worker-healthcheck", "2")
    workers = generation_ready(server, 1, 2)
    with LoadClient(server, threads=3) as load:
        load.wait_requests(50)
        status, body = get(server, "/grow?mb=80")
        grown = int(body)
        assert status == 200 and grown in workers
        match = server.wait_line(rf"Recycling worker {grown} \(slot \d+, memory\): RSS (\d+\.\d) MiB is above "
                                 r"--limit-max-memory 70 MiB", 30)
        assert float(match.group(1)) > 80
        server.wait_line(rf"replaces worker {grown} \(recycled for memory; 1 so far\)", 30)
        wait_for(lambda: not alive(grown), 30, what="the grown worker gone")
        load.wait_requests(50)
    assert load.failures == []
    assert [(old, reason) for old, _, reason in drain_first(server)] == [(grown, "memory")]
    (other,) = workers - {grown}
    assert alive(other)  # below the limit: untouched


def test_lifetime_recycles_every_worker_in_turn_with_jitter(serve):
    server = serve(APP, "--workers", "2", "--limit-max-lifetime", "2", "--limit-max-lifetime-jitter", "1")
    first = generation_ready(server, 1, 2)
    with LoadClient(server, threads=4) as load:
        wait_for(lambda: len(drain_first(server)) >= 4, 90, what="4 lifetime recycles")
    print(f"lifetime recycling under load: sent {load.sent}, failed {len(load.failures)}")
    assert load.failures == []
    done = drain_first(server)
    assert {reason for _, _, reason in done} == {"lifetime"}
    assert first <= {old for old, _, _ in done}
    details = [m.group(3) for line in server.lines if (m := RECYCLING.search(line))]
    assert all(re.fullmatch(r"it served \d+\.\ds \(--limit-max-lifetime 2s\)", d) for d in details), details
    served = [float(d.split()[2][:-1]) for d in details]
    assert all(2.0 <= s <= 3.0 + 2.0 for s in served), served  # lifetime + jitter, plus a late tick
