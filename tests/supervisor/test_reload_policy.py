"""Policy scenarios for --reload (fake spawner, fake clock): the canary reload."""

from __future__ import annotations

import signal

from fastgate.supervisor.policy import Notify, Phase, ReloadRequested, SignalReceived
from tests.supervisor.test_policy import FakeSpawner, signals, spawns

SIGKILL, SIGTERM = signal.SIGKILL, signal.SIGTERM


def test_canary_reload_boots_one_new_worker_before_the_others():
    f = FakeSpawner(workers=3, reload_canary=True)
    old = f.boot(3)
    first = spawns(f.feed(SignalReceived(signal.SIGHUP)))
    assert [(s.slot, s.generation) for s in first] == [(0, 2)]
    canary = f.pid[first[0].wid]
    acts = f.ready(canary)
    # The others start only now, and the canary's slot retires its old worker.
    assert [(s.slot, s.generation) for s in spawns(acts)] == [(1, 2), (2, 2)]
    assert signals(acts) == [(old[0], SIGTERM, True)]
    assert Notify("READY=1") not in acts
    rest = [f.pid[s.wid] for s in spawns(acts)]
    acts = f.ready(*rest)
    assert signals(acts) == [(old[1], SIGTERM, True), (old[2], SIGTERM, True)]
    assert Notify("READY=1") in acts
    assert f.sup.phase is Phase.RUNNING


def test_canary_that_fails_to_import_is_the_only_new_worker():
    """Broken code: one worker fails (one error printed), the old generation keeps serving."""
    f = FakeSpawner(workers=2, reload_canary=True)
    old = f.boot(2)
    (canary,) = spawns(f.feed(ReloadRequested()))
    acts = f.exited(f.pid[canary.wid], 4)
    assert spawns(acts) == []
    assert all(pid not in old for pid, _, _ in signals(acts))
    assert f.sup.phase is Phase.RUNNING and f.sup.reload is None
    assert f.live_pids() == old
    # The next save tries again, canary first.
    assert [(s.slot, s.generation) for s in spawns(f.feed(ReloadRequested()))] == [(0, 3)]


def test_without_canary_a_reload_spawns_the_whole_generation():
    f = FakeSpawner(workers=2)
    f.boot(2)
    assert len(spawns(f.feed(ReloadRequested()))) == 2
