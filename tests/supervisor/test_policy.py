"""Scenario tests of the supervisor policy: a fake spawner, a fake clock, no processes."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from fastgate.supervisor.policy import (
    KILL_MARGIN,
    Action,
    ChildExited,
    CloseListeners,
    Event,
    Exit,
    Notify,
    Phase,
    PolicySettings,
    ReleaseSlot,
    ReloadEnded,
    ReloadRequested,
    ReloadStarted,
    SendSignal,
    SignalReceived,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    Supervisor,
    Tick,
    WorkerBeat,
    WorkerDraining,
    WorkerReady,
)

SIGKILL, SIGTERM, SIGQUIT, SIGABRT = signal.SIGKILL, signal.SIGTERM, signal.SIGQUIT, signal.SIGABRT


class FakeSpawner:
    """Plays the master: executes Spawn by inventing a pid and reporting it back."""

    def __init__(self, **settings: Any) -> None:
        self.sup = Supervisor(PolicySettings(**settings))
        self.now = 0.0
        self.next_pid = 100
        self.pid: dict[int, int] = {}  # wid -> pid
        self.wid: dict[int, int] = {}  # pid -> wid
        self.spawns: list[Spawn] = []
        self.log: list[Action] = []

    def feed(self, event: Event) -> list[Action]:
        out: list[Action] = []
        queue = self.sup.handle(event, self.now)
        while queue:
            action = queue.pop(0)
            out.append(action)
            if isinstance(action, Spawn):
                self.spawns.append(action)
                pid = self.next_pid
                self.next_pid += 1
                self.pid[action.wid], self.wid[pid] = pid, action.wid
                queue.extend(self.sup.handle(Spawned(action.wid, pid), self.now))
        self.log.extend(out)
        return out

    def advance(self, seconds: float) -> list[Action]:
        self.now += seconds
        return self.feed(Tick())

    def live_pids(self) -> list[int]:
        return sorted(self.pid[w] for w in self.sup.workers)

    def ready(self, *pids: int) -> list[Action]:
        out: list[Action] = []
        for pid in pids:
            out += self.feed(WorkerReady(self.wid[pid]))
        return out

    def exited(self, pid: int, code: int) -> list[Action]:
        return self.feed(ChildExited(self.wid[pid], code))

    def boot(self, n: int) -> list[int]:
        """Start and make every first-generation worker ready."""
        self.feed(Start())
        pids = self.live_pids()
        assert len(pids) == n
        acts = self.ready(*pids)
        assert Notify("READY=1") in acts
        return pids


def signals(actions: list[Action]) -> list[tuple[int, int, bool]]:
    return [(a.pid, a.signum, a.group) for a in actions if isinstance(a, SendSignal)]


def spawns(actions: list[Action]) -> list[Spawn]:
    return [a for a in actions if isinstance(a, Spawn)]


def test_start_spawns_the_workers_and_notifies_ready_when_all_are_ready():
    f = FakeSpawner(workers=3)
    acts = f.feed(Start())
    assert [(s.slot, s.generation) for s in spawns(acts)] == [(0, 1), (1, 1), (2, 1)]
    assert f.sup.phase is Phase.STARTING
    pids = f.live_pids()
    assert Notify("READY=1") not in f.ready(pids[0], pids[1])
    assert f.ready(pids[2]) == [Notify("READY=1")]
    assert f.sup.phase is Phase.RUNNING


def test_crash_restarts_with_exponential_backoff_then_resets_after_a_stable_period():
    f = FakeSpawner(workers=1, stable_after=60.0)
    (pid,) = f.boot(1)
    assert spawns(f.exited(pid, -9)) == []  # not at once: 0.1 s backoff
    assert f.sup.next_deadline() == pytest.approx(0.1)
    assert spawns(f.advance(0.05)) == []
    assert len(spawns(f.advance(0.05))) == 1
    delays = []
    for _ in range(8):  # crash while booting again and again: 0.2, 0.4, ... capped at 10
        (pid,) = f.live_pids()
        f.exited(pid, 1)
        delays.append(round(f.sup.next_deadline() - f.now, 3))
        f.advance(delays[-1])
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    (pid,) = f.live_pids()
    f.ready(pid)
    for _ in range(13):  # stays up (beating) for more than stable_after
        f.advance(5.0)
        f.feed(WorkerBeat(f.wid[pid]))
    f.exited(pid, -11)
    assert f.sup.next_deadline() - f.now == pytest.approx(0.1)


def test_boot_failure_in_first_generation_exits_with_the_workers_code_without_retrying():
    f = FakeSpawner(workers=3)
    f.feed(Start())
    a, b, c = f.live_pids()
    acts = f.exited(a, 4)
    # The siblings are killed at once (group), no respawn, the master exits with 4.
    assert sorted(signals(acts)) == [(a, SIGKILL, True), (b, SIGKILL, True), (c, SIGKILL, True)]
    assert spawns(acts) == []
    assert Notify("STOPPING=1") in acts
    f.exited(b, 4)
    assert f.exited(c, -9)[-1] == Exit(4)


def test_lifespan_failure_exits_3():
    f = FakeSpawner(workers=1)
    f.feed(Start())
    assert f.exited(f.live_pids()[0], 3)[-1] == Exit(3)


def test_boot_timeout_in_first_generation_exits_3():
    f = FakeSpawner(workers=1, boot_timeout=5.0)
    f.feed(Start())
    (pid,) = f.live_pids()
    acts = f.advance(5.0)
    assert (pid, SIGKILL, True) in signals(acts)
    assert f.exited(pid, -9)[-1] == Exit(3)


def test_exit_code_4_after_a_worker_was_ready_is_a_crash_not_a_boot_failure():
    f = FakeSpawner(workers=2)
    a, b = f.boot(2)
    acts = f.exited(a, 4)
    assert not any(isinstance(x, Exit) for x in acts)
    assert len(spawns(f.advance(0.1))) == 1


def test_rolling_reload_is_gated_on_ready_and_retires_old_workers_one_by_one():
    f = FakeSpawner(workers=2, graceful_timeout=30.0, healthcheck_timeout=100.0)
    old0, old1 = f.boot(2)
    acts = f.feed(SignalReceived(signal.SIGHUP))
    assert Notify("RELOADING=1") in acts
    assert acts.index(ReloadStarted(2)) < acts.index(spawns(acts)[0])  # config switched before forking
    new = spawns(acts)
    assert [(s.slot, s.generation) for s in new] == [(0, 2), (1, 2)]
    assert signals(acts) == []  # nobody is stopped before a new worker is ready
    new0, new1 = f.pid[new[0].wid], f.pid[new[1].wid]
    f.advance(1.0)
    acts = f.ready(new0)
    assert signals(acts) == [(old0, SIGTERM, True)]  # the same slot's old worker
    assert Notify("READY=1") not in acts
    acts = f.ready(new1)
    assert signals(acts) == [(old1, SIGTERM, True)]
    assert Notify("READY=1") in acts and ReloadEnded(2, ok=True) in acts
    assert f.sup.phase is Phase.RUNNING
    f.exited(old0, 0)
    # old1 ignores SIGTERM: SIGKILL after the graceful timeout.
    assert signals(f.advance(30.0 + KILL_MARGIN - 0.01)) == []
    assert signals(f.advance(0.01)) == [(old1, SIGKILL, True)]
    acts = f.exited(old1, -9)
    assert spawns(acts) == []  # a retired worker is not replaced
    assert f.live_pids() == [new0, new1]


def test_reload_rolls_back_when_a_new_worker_fails_to_boot():
    f = FakeSpawner(workers=2)
    old0, old1 = f.boot(2)
    new = spawns(f.feed(ReloadRequested(PolicySettings(workers=2))))
    new0, new1 = f.pid[new[0].wid], f.pid[new[1].wid]
    acts = f.exited(new0, 4)  # broken app: import error in the new generation
    assert signals(acts) == [(new0, SIGKILL, True), (new1, SIGKILL, True)]
    assert Notify("READY=1") in acts
    assert ReloadEnded(2, ok=False, reason="a new worker exited before it was ready (code 4)") in acts
    assert f.sup.phase is Phase.RUNNING
    f.exited(new1, -9)
    # The old generation was never told anything and nothing is respawned.
    assert all(pid not in (old0, old1) for pid, _, _ in signals(f.log))
    assert spawns(f.advance(1.0)) == []
    assert f.live_pids() == [old0, old1]


def test_reload_rolls_back_when_a_new_worker_misses_the_boot_deadline():
    f = FakeSpawner(workers=1, boot_timeout=10.0)
    (old,) = f.boot(1)
    (new,) = spawns(f.feed(SignalReceived(signal.SIGHUP)))
    acts = f.advance(10.0)
    assert signals(acts) == [(f.pid[new.wid], SIGKILL, True)]
    assert f.sup.phase is Phase.RUNNING and f.sup.reload is None
    assert old in f.live_pids()


def test_reload_with_new_settings_changes_the_worker_count_and_rollback_restores_it():
    f = FakeSpawner(workers=1)
    f.boot(1)
    acts = f.feed(ReloadRequested(PolicySettings(workers=3)))
    assert len(spawns(acts)) == 3
    new = [f.pid[s.wid] for s in spawns(acts)]
    killed = signals(f.exited(new[0], 1))
    assert killed == [(new[0], SIGKILL, True), (new[1], SIGKILL, True), (new[2], SIGKILL, True)]
    assert f.sup.target == 1 and f.sup.settings.workers == 1
    f.exited(new[1], -9)
    assert spawns(f.exited(new[2], -9)) == []
    assert len(f.live_pids()) == 1


def test_reload_requested_during_a_reload_runs_after_it():
    f = FakeSpawner(workers=1)
    f.boot(1)
    (first,) = spawns(f.feed(SignalReceived(signal.SIGHUP)))
    assert spawns(f.feed(SignalReceived(signal.SIGHUP))) == []
    acts = f.ready(f.pid[first.wid])
    assert [s.generation for s in spawns(acts)] == [3]


def test_graceful_shutdown_kills_stragglers_after_the_timeout_and_exits_0():
    f = FakeSpawner(workers=2, graceful_timeout=10.0, shutdown_delay=2.0)
    a, b = f.boot(2)
    acts = f.feed(SignalReceived(signal.SIGTERM))
    assert acts[:2] == [Notify("STOPPING=1"), CloseListeners()]
    assert signals(acts) == [(a, SIGTERM, True), (b, SIGTERM, True)]
    f.exited(a, 0)
    assert signals(f.advance(2.0 + 10.0 + KILL_MARGIN - 0.01)) == []
    assert signals(f.advance(0.01)) == [(b, SIGKILL, True)]
    assert f.exited(b, -9)[-1] == Exit(0)


def test_second_sigint_forces_a_fast_shutdown():
    f = FakeSpawner(workers=1, fast_timeout=2.0)
    (pid,) = f.boot(1)
    assert signals(f.feed(SignalReceived(signal.SIGINT))) == [(pid, SIGTERM, True)]
    assert signals(f.feed(SignalReceived(signal.SIGINT))) == [(pid, SIGQUIT, False)]
    assert signals(f.advance(2.0)) == [(pid, SIGKILL, True)]
    assert f.exited(pid, -9)[-1] == Exit(0)


def test_sigquit_is_fast_and_sigterm_during_it_does_not_slow_it_down():
    f = FakeSpawner(workers=1, fast_timeout=2.0, graceful_timeout=30.0)
    (pid,) = f.boot(1)
    assert signals(f.feed(SignalReceived(signal.SIGQUIT))) == [(pid, SIGQUIT, False)]
    assert signals(f.feed(SignalReceived(signal.SIGTERM))) == []
    assert signals(f.advance(2.0)) == [(pid, SIGKILL, True)]


def test_shutdown_with_no_worker_exits_at_once_and_ignores_later_events():
    f = FakeSpawner(workers=1)
    (pid,) = f.boot(1)
    f.exited(pid, -9)  # crashed; respawn pending
    acts = f.feed(SignalReceived(signal.SIGTERM))
    assert acts[-1] == Exit(0)
    assert f.feed(SignalReceived(signal.SIGHUP)) == []


def test_ttin_and_ttou_change_the_worker_count_never_below_one():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    acts = f.feed(SignalReceived(signal.SIGTTIN))
    assert [(s.slot) for s in spawns(acts)] == [1]
    b = f.live_pids()[1]
    f.ready(b)
    acts = f.feed(SignalReceived(signal.SIGTTOU))
    assert signals(acts) == [(b, SIGTERM, True)]
    assert spawns(acts) == []
    assert f.exited(b, 0) == [SendSignal(b, SIGKILL, True), ReleaseSlot(1)]
    assert signals(f.feed(SignalReceived(signal.SIGTTOU))) == []
    assert f.sup.target == 1 and f.live_pids() == [a]


def test_silent_worker_gets_sigabrt_then_sigkill_and_is_replaced():
    f = FakeSpawner(workers=1, healthcheck_timeout=3.0)
    (pid,) = f.boot(1)
    f.advance(2.0)
    f.feed(WorkerBeat(f.wid[pid]))
    assert signals(f.advance(2.9)) == []  # beat reset the clock
    acts = f.advance(0.1)
    assert signals(acts) == [(pid, SIGABRT, False)]  # the worker alone: faulthandler prints
    assert len(spawns(acts)) == 1  # its replacement starts at once
    assert signals(f.advance(1.0)) == [(pid, SIGKILL, True)]
    acts = f.exited(pid, -9)
    assert spawns(acts) == []
    assert len(f.live_pids()) == 1


def test_recycling_worker_is_replaced_as_soon_as_it_starts_draining():
    f = FakeSpawner(workers=1)
    (pid,) = f.boot(1)
    acts = f.feed(WorkerDraining(f.wid[pid]))
    assert [s.slot for s in spawns(acts)] == [0]
    assert signals(acts) == []
    assert spawns(f.exited(pid, 0)) == []


def test_sigusr1_is_forwarded_to_every_worker():
    f = FakeSpawner(workers=2)
    a, b = f.boot(2)
    assert signals(f.feed(SignalReceived(signal.SIGUSR1))) == [(a, signal.SIGUSR1, False),
                                                               (b, signal.SIGUSR1, False)]


def test_spawn_failure_is_retried_with_backoff():
    f = FakeSpawner(workers=1)
    f.boot(1)
    sup = f.sup
    (wid,) = sup.workers
    f.exited(f.pid[wid], -9)
    acts = f.advance(0.1)
    (spawn,) = spawns(acts)
    sup.workers[spawn.wid].pid = None  # pretend fork failed before a pid existed
    f.feed(SpawnFailed(spawn.wid, "EAGAIN"))
    assert sup.next_deadline() - f.now == pytest.approx(0.2)


def test_worker_count_from_ttin_survives_a_reload_unless_the_config_changes_it():
    f = FakeSpawner(workers=1)
    f.boot(1)
    f.feed(SignalReceived(signal.SIGTTIN))
    assert len(spawns(f.feed(ReloadRequested(PolicySettings(workers=1))))) == 2
    for pid in f.live_pids():
        f.ready(pid)
    assert len(spawns(f.feed(ReloadRequested(PolicySettings(workers=4))))) == 4


def test_replacement_that_never_gets_ready_is_killed_and_retried():
    f = FakeSpawner(workers=1, boot_timeout=5.0)
    (pid,) = f.boot(1)
    f.exited(pid, -9)
    f.advance(0.1)
    (booting,) = f.live_pids()
    acts = f.advance(5.0)
    assert signals(acts) == [(booting, SIGKILL, True)]
    assert not any(isinstance(a, Exit) for a in acts)  # not fatal once the app has served
    assert len(spawns(acts)) == 1  # the boot timeout itself spaced the attempts
    assert spawns(f.exited(booting, -9)) == []


def test_reload_to_fewer_workers_retires_all_old_ones():
    f = FakeSpawner(workers=3)
    old = f.boot(3)
    new = spawns(f.feed(ReloadRequested(PolicySettings(workers=1))))
    assert len(new) == 1
    acts = f.ready(f.pid[new[0].wid])
    assert sorted(signals(acts)) == [(pid, SIGTERM, True) for pid in old]
    for pid in old:
        f.exited(pid, 0)
    assert f.live_pids() == [f.pid[new[0].wid]]


def test_old_worker_crashing_during_a_reload_is_not_respawned_twice():
    f = FakeSpawner(workers=2)
    old0, old1 = f.boot(2)
    new = spawns(f.feed(SignalReceived(signal.SIGHUP)))
    f.exited(old1, -9)  # the old worker of slot 1 dies meanwhile
    for s in new:
        f.ready(f.pid[s.wid])
    assert f.sup.phase is Phase.RUNNING
    f.exited(old0, 0)
    assert spawns(f.advance(1.0)) == []
    assert f.live_pids() == sorted(f.pid[s.wid] for s in new)


def test_graceful_stop_keeps_the_deadline_of_a_worker_already_draining():
    f = FakeSpawner(workers=1, graceful_timeout=10.0)
    (pid,) = f.boot(1)
    f.feed(WorkerDraining(f.wid[pid]))  # recycling
    (successor,) = [p for p in f.live_pids() if p != pid]
    f.advance(5.0)
    acts = f.feed(SignalReceived(signal.SIGTERM))
    assert signals(acts) == [(successor, SIGTERM, True)]  # the recycling one drains already
    assert signals(f.advance(5.0 + KILL_MARGIN)) == [(pid, SIGKILL, True)]


def test_worker_spawned_just_before_a_fast_stop_is_killed_once_its_pid_is_known():
    sup = Supervisor(PolicySettings(workers=1))
    (spawn,) = sup.handle(Start(), 0.0)
    assert isinstance(spawn, Spawn)
    acts = sup.handle(SignalReceived(signal.SIGQUIT), 0.0)
    assert signals(acts) == []  # no pid yet
    assert sup.handle(Spawned(spawn.wid, 4242), 0.0) == [SendSignal(4242, SIGKILL, True)]
    assert sup.handle(ChildExited(spawn.wid, -9), 0.1)[-1] == Exit(0)


def test_events_for_unknown_workers_are_ignored():
    f = FakeSpawner(workers=1)
    f.boot(1)
    for event in (WorkerReady(999), WorkerBeat(999), WorkerDraining(999), ChildExited(999, 0),
                  Spawned(999, 1), SpawnFailed(999, "x")):
        assert f.feed(event) == []


def test_next_deadline_is_the_earliest_boot_health_or_kill_deadline():
    f = FakeSpawner(workers=2, boot_timeout=20.0, healthcheck_timeout=10.0, graceful_timeout=3.0)
    f.feed(Start())
    a, b = f.live_pids()
    assert f.sup.next_deadline() == 20.0  # both booting
    f.now = 1.0
    f.ready(a)
    assert f.sup.next_deadline() == 11.0  # a's heartbeat deadline
    f.feed(SignalReceived(signal.SIGTTOU))  # retires slot 1 (b): SIGKILL due at 1 + 3 + margin
    assert f.sup.next_deadline() == 1.0 + 3.0 + KILL_MARGIN


def test_new_worker_recycling_during_a_reload_does_not_block_its_completion():
    f = FakeSpawner(workers=2)
    f.boot(2)
    new = [f.pid[s.wid] for s in spawns(f.feed(SignalReceived(signal.SIGHUP)))]
    f.ready(new[0])
    f.feed(WorkerDraining(f.wid[new[0]]))  # hit --limit-max-requests already
    acts = f.ready(new[1])
    assert ReloadEnded(2, ok=True) in acts
    assert f.sup.phase is Phase.RUNNING


def test_a_worker_sharing_a_released_slot_keeps_the_slot_sockets():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    f.feed(SignalReceived(signal.SIGTTIN))
    b = f.live_pids()[1]
    f.ready(b)
    f.feed(SignalReceived(signal.SIGHUP))  # generation 2 also has a worker in slot 1
    new = [p for p in f.live_pids() if p not in (a, b)]
    for pid in new:
        f.ready(pid)
    f.feed(SignalReceived(signal.SIGTTOU))  # slot 1 goes: its new worker is retired
    assert f.exited(b, 0) == [SendSignal(b, SIGKILL, True)]  # new[1] still holds slot 1
    assert ReleaseSlot(1) in f.exited(new[1], -9)  # a crash of a retired worker: no respawn
    assert spawns(f.advance(1.0)) == []


def test_unknown_signals_and_reloads_while_stopping_are_ignored():
    f = FakeSpawner(workers=1)
    (pid,) = f.boot(1)
    assert f.feed(SignalReceived(signal.SIGWINCH)) == []
    f.feed(SignalReceived(signal.SIGTERM))
    assert f.feed(ReloadRequested(PolicySettings(workers=3))) == []
    assert f.feed(SignalReceived(signal.SIGTTIN)) == []
    assert f.exited(pid, 0)[-1] == Exit(0)
    assert f.feed(Tick()) == []  # exited: nothing more
