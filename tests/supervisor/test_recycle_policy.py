"""Policy scenarios for drain-first recycling (max-requests, memory, lifetime): fake spawner, fake clock."""

from __future__ import annotations

import logging
import signal

import pytest

from fastgate.supervisor.policy import (
    MIB,
    Exit,
    Phase,
    ReloadEnded,
    SendSignal,
    SignalReceived,
    Start,
    WorkerBeat,
    WorkerDraining,
    WorkerRecycle,
    WorkerState,
)
from tests.supervisor.test_policy import FakeSpawner, signals, spawns

SIGKILL, SIGTERM = signal.SIGKILL, signal.SIGTERM


def test_max_requests_spawns_the_replacement_first_and_retires_the_old_worker_once_it_is_ready(caplog):
    caplog.set_level(logging.INFO, "fastgate.error")
    f = FakeSpawner(workers=2)
    a, b = f.boot(2)
    acts = f.feed(WorkerRecycle(f.wid[a]))
    (spawn,) = spawns(acts)
    assert (spawn.slot, spawn.generation) == (0, 1)  # same slot: it shares the slot's socket
    assert signals(acts) == []  # the old worker keeps accepting meanwhile
    new = f.pid[spawn.wid]
    assert f.sup.workers[f.wid[a]].state is WorkerState.READY
    acts = f.ready(new)
    assert signals(acts) == [(a, SIGTERM, True)]
    assert f.sup.recycled["max-requests"] == 1
    assert f.exited(a, 0) == [SendSignal(a, SIGKILL, True)]  # the rest of its process group
    assert spawns(f.advance(1.0)) == []
    assert f.live_pids() == sorted([b, new])
    text = caplog.text
    assert f"Recycling worker {a} (slot 0, max-requests)" in text
    assert f"Worker {new} replaces worker {a} (recycled for max-requests; 1 so far)" in text


def test_memory_limit_is_checked_on_each_beat_and_below_it_nothing_happens():
    f = FakeSpawner(workers=1, max_memory=100 * MIB)
    (a,) = f.boot(1)
    assert f.feed(WorkerBeat(f.wid[a], rss=100 * MIB)) == []  # at the limit is fine
    assert f.feed(WorkerBeat(f.wid[a], rss=None)) == []  # unreadable: no decision
    (spawn,) = spawns(f.feed(WorkerBeat(f.wid[a], rss=100 * MIB + 1)))
    assert f.sup.workers[f.wid[a]].recycle_reason == "memory"
    # Further beats above the limit start nothing more: one replacement at a time.
    assert spawns(f.feed(WorkerBeat(f.wid[a], rss=300 * MIB))) == []
    assert signals(f.ready(f.pid[spawn.wid])) == [(a, SIGTERM, True)]
    assert f.sup.recycled == {"memory": 1}


def test_memory_limit_unset_ignores_the_rss():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    assert f.feed(WorkerBeat(f.wid[a], rss=10_000 * MIB)) == []


def test_lifetime_with_jitter_recycles_at_ready_plus_lifetime_plus_a_random_share_of_the_jitter():
    f = FakeSpawner(workers=2, max_lifetime=100.0, max_lifetime_jitter=10.0)
    shares = iter([0.0, 0.5, 0.9])
    f.sup.rng = lambda: next(shares)
    f.feed(Start())
    a, b = f.live_pids()
    f.ready(a)
    f.now = 2.0
    f.ready(b)
    assert f.sup.next_deadline() == pytest.approx(30.0)  # heartbeat deadline first
    for _ in range(20):  # beat every 5 s up to t=100
        f.advance(5.0)
        f.feed(WorkerBeat(f.wid[a]))
        f.feed(WorkerBeat(f.wid[b]))
    assert f.now == 102.0
    # a: 0 + 100 + 0.0 * 10 = 100 -> due; b: 2 + 100 + 0.5 * 10 = 107 -> not yet
    assert [w.recycle_reason for w in (f.sup.workers[f.wid[a]], f.sup.workers[f.wid[b]])] == ["lifetime", None]
    (ra,) = [p for p in f.live_pids() if p not in (a, b)]
    assert f.sup.next_deadline() == pytest.approx(min(102.0 + 60.0, 107.0, 100.0 + 30.0))
    f.ready(ra)  # ra gets its own lifetime: 102 + 100 + 0.9 * 10
    assert f.sup.workers[f.wid[ra]].recycle_at == pytest.approx(211.0)
    f.exited(a, 0)
    acts = f.advance(5.0)  # t=107: b is due
    assert len(spawns(acts)) == 1
    assert f.sup.workers[f.wid[b]].recycle_reason == "lifetime"


def test_one_recycle_at_a_time_then_the_next_due_worker():
    f = FakeSpawner(workers=3)
    a, b, c = f.boot(3)
    for pid in (b, a, c):
        f.feed(WorkerRecycle(f.wid[pid]))
    first = [p for p in f.live_pids() if p not in (a, b, c)]
    assert len(first) == 1  # b's replacement only: a and c wait
    assert f.sup.next_deadline() == 30.0  # waiting their turn adds no deadline
    assert f.sup.workers[f.wid[first[0]]].slot == 1
    acts = f.ready(first[0])
    assert signals(acts) == [(b, SIGTERM, True)]
    (second,) = spawns(acts)  # the next one starts as soon as the first replacement is ready
    assert second.slot == 0
    (third,) = spawns(f.ready(f.pid[second.wid]))
    assert third.slot == 2


def test_a_replacement_that_fails_to_boot_leaves_the_old_worker_serving_and_retries_with_backoff(caplog):
    f = FakeSpawner(workers=1, max_memory=MIB, backoff_initial=0.5, backoff_max=4.0, healthcheck_timeout=1000.0)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerBeat(f.wid[a], rss=2 * MIB)))
    r1 = f.pid[spawn.wid]
    acts = f.exited(r1, 4)
    assert signals(acts) == [(r1, SIGKILL, True)]
    assert spawns(acts) == []  # no crash-restart of the slot: the old worker holds it
    assert f.sup.workers[f.wid[a]].state is WorkerState.READY
    assert "Recycling worker" in caplog.text and "aborted" in caplog.text and "it keeps serving" in caplog.text
    assert f.sup.next_deadline() == pytest.approx(1.0)  # 0.5 * 2
    assert spawns(f.advance(0.9)) == []
    (spawn,) = spawns(f.advance(0.1))
    r2 = f.pid[spawn.wid]
    f.advance(60.0)  # boot timeout of the second replacement
    assert f.sup.workers[f.wid[r2]].state is WorkerState.DRAINING
    assert f.sup.workers[f.wid[a]].recycle_retry_at == pytest.approx(61.0 + 2.0)
    assert f.sup.workers[f.wid[a]].state is WorkerState.READY


def test_a_worker_that_leaves_while_its_replacement_boots_is_simply_succeeded():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    f.feed(WorkerDraining(f.wid[a]))  # an old-style worker draining itself
    assert spawns(f.exited(a, 0)) == []  # its slot is held by the booting replacement
    assert signals(f.ready(r)) == []
    assert f.sup.recycled == {}
    assert f.live_pids() == [r]


def test_a_reload_cancels_a_recycle_in_flight_and_replaces_everything():
    f = FakeSpawner(workers=2)
    a, b = f.boot(2)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    acts = f.feed(SignalReceived(signal.SIGHUP))
    assert (r, SIGTERM, True) in signals(acts)  # the recycle's replacement goes
    new = [f.pid[s.wid] for s in spawns(acts)]
    assert len(new) == 2
    acts = f.ready(*new)
    assert ReloadEnded(2, ok=True) in acts
    assert sorted(p for p, sig, _ in signals(acts) if sig == SIGTERM) == sorted([a, b])


def test_recycling_waits_while_reloading_and_while_starting():
    f = FakeSpawner(workers=1, max_memory=MIB)
    f.feed(Start())
    (a,) = f.live_pids()
    f.ready(a)
    acts = f.feed(SignalReceived(signal.SIGHUP))
    (new,) = [f.pid[s.wid] for s in spawns(acts)]
    assert spawns(f.feed(WorkerBeat(f.wid[a], rss=2 * MIB))) == []  # reloading: the reload replaces it
    f.ready(new)
    assert f.sup.phase is Phase.RUNNING
    (spawn,) = spawns(f.feed(WorkerBeat(f.wid[new], rss=2 * MIB)))
    assert spawn.generation == 2


def test_sigttou_retires_a_due_worker_and_its_replacement_without_recycling_it():
    f = FakeSpawner(workers=2)
    a, b = f.boot(2)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[b])))
    r = f.pid[spawn.wid]
    acts = f.feed(SignalReceived(signal.SIGTTOU))
    assert sorted(p for p, _, _ in signals(acts)) == sorted([b, r])
    assert signals(f.ready(r)) == []  # already draining: nothing to do
    f.feed(WorkerRecycle(f.wid[a]))
    assert len(f.live_pids()) == 4  # a's replacement boots in slot 0


def test_stop_while_a_replacement_boots_drains_everything():
    f = FakeSpawner(workers=1, graceful_timeout=5.0)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    acts = f.feed(SignalReceived(signal.SIGTERM))
    assert sorted(p for p, _, _ in signals(acts)) == sorted([a, r])
    f.exited(a, 0)
    assert f.exited(r, -15)[-1] == Exit(0)


def test_a_replacement_that_crashes_after_the_old_worker_left_is_an_ordinary_crash():
    f = FakeSpawner(workers=1, backoff_initial=0.5)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    f.feed(WorkerDraining(f.wid[a]))
    f.exited(a, 0)
    assert spawns(f.exited(r, 1)) == []  # the slot restarts after the crash backoff
    assert f.sup.next_deadline() == pytest.approx(0.5)
    assert len(spawns(f.advance(0.5))) == 1


def test_a_replacement_that_times_out_after_the_old_worker_left_is_killed():
    f = FakeSpawner(workers=1, boot_timeout=10.0, healthcheck_timeout=100.0)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    f.feed(WorkerDraining(f.wid[a]))
    f.exited(a, 0)
    assert signals(f.advance(10.0)) == [(r, SIGKILL, True)]
    assert f.sup.workers[f.wid[r]].state is WorkerState.DRAINING


def test_recycle_reports_of_unknown_or_draining_workers_are_ignored():
    f = FakeSpawner(workers=1, max_memory=MIB)
    (a,) = f.boot(1)
    assert f.feed(WorkerRecycle(999)) == []
    f.feed(WorkerDraining(f.wid[a]))
    (successor,) = [p for p in f.live_pids() if p != a]
    assert f.feed(WorkerRecycle(f.wid[a])) == []
    assert f.feed(WorkerBeat(f.wid[a], rss=2 * MIB)) == []
    assert f.sup.workers[f.wid[a]].recycle_reason is None
    assert successor
