"""Policy scenarios for re-executing the master in place (SIGUSR2, reloads with --preload) and
for a preloaded app that cannot start: fake spawner, fake clock, no processes."""

from __future__ import annotations

import json
import logging
import signal

from fastgate.errors import EXIT_APP_LOAD_FAILED
from fastgate.supervisor.policy import (
    CheckUpgrade,
    Exit,
    Notify,
    Phase,
    PolicySettings,
    ReExec,
    ReloadEnded,
    ReloadRequested,
    ReloadStarted,
    Resumed,
    SignalReceived,
    Start,
    StopUpgradeCheck,
    Supervisor,
    UpgradeChecked,
    UpgradeFailed,
    WorkerBeat,
    WorkerDraining,
    WorkerRecycle,
    WorkerState,
)
from tests.supervisor.test_policy import FakeSpawner, signals, spawns

SIGKILL, SIGTERM, SIGUSR2, SIGHUP = signal.SIGKILL, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP


def upgrade(f: FakeSpawner, sig: int = SIGUSR2) -> list:
    acts = f.feed(SignalReceived(sig))
    assert acts == [Notify("RELOADING=1"), CheckUpgrade()]
    return f.feed(UpgradeChecked(True))


def test_sigusr2_checks_the_installed_code_then_re_executes_without_touching_the_workers():
    f = FakeSpawner(workers=2)
    f.boot(2)
    assert upgrade(f) == [ReExec("SIGUSR2")]
    assert f.sup.phase is Phase.RUNNING  # the workers are untouched until the new image says so


def test_a_failed_check_keeps_everything_and_tells_systemd_ready_again(caplog):
    f = FakeSpawner(workers=1)
    f.boot(1)
    f.feed(SignalReceived(SIGUSR2))
    acts = f.feed(UpgradeChecked(False, "the check process exited with code 1"))
    assert acts == [Notify("READY=1")]
    assert "Upgrade aborted: the new code does not start: the check process exited with code 1" in caplog.text
    assert f.sup.upgrade is None
    assert upgrade(f) == [ReExec("SIGUSR2")]  # and a later attempt works


def test_exec_failure_rolls_back_like_a_failed_check(caplog):
    f = FakeSpawner(workers=1)
    f.boot(1)
    upgrade(f)
    assert f.feed(UpgradeFailed("No such file or directory")) == [Notify("READY=1")]
    assert "exec failed: No such file or directory" in caplog.text
    assert f.feed(UpgradeFailed("again")) == []  # nothing in progress any more


def test_sighup_with_preload_re_executes_instead_of_forking_old_code():
    f = FakeSpawner(workers=2, preload=True)
    f.boot(2)
    acts = f.feed(ReloadRequested(PolicySettings(workers=2, preload=True)))
    assert acts == [Notify("RELOADING=1"), CheckUpgrade()]
    assert spawns(acts) == []
    assert f.feed(UpgradeChecked(True)) == [ReExec("reload with --preload")]


def test_a_config_that_turns_preload_on_also_re_executes():
    f = FakeSpawner(workers=1)
    f.boot(1)
    acts = f.feed(ReloadRequested(PolicySettings(workers=1, preload=True)))
    assert CheckUpgrade() in acts


def test_a_second_request_during_the_check_is_absorbed(caplog):
    caplog.set_level(logging.INFO, "fastgate.error")
    f = FakeSpawner(workers=1, preload=True)
    f.boot(1)
    f.feed(SignalReceived(SIGHUP))
    assert f.feed(SignalReceived(SIGHUP)) == []
    assert f.feed(SignalReceived(SIGUSR2)) == []
    assert "an upgrade is in progress already" in caplog.text


def test_a_plain_reload_during_the_check_waits_and_runs_if_the_upgrade_fails():
    f = FakeSpawner(workers=1)
    f.boot(1)
    f.feed(SignalReceived(SIGUSR2))
    assert spawns(f.feed(SignalReceived(SIGHUP))) == []
    acts = f.feed(UpgradeChecked(False, "broken"))
    assert ReloadStarted(2) in acts and len(spawns(acts)) == 1


def test_sigusr2_during_a_reload_or_the_first_start_runs_when_it_ends():
    f = FakeSpawner(workers=1)
    f.feed(Start())
    (a,) = f.live_pids()
    assert f.feed(SignalReceived(SIGUSR2)) == []
    assert CheckUpgrade() in f.ready(a)
    f.feed(UpgradeChecked(False, "x"))
    (new,) = [f.pid[s.wid] for s in spawns(f.feed(SignalReceived(SIGHUP)))]
    assert f.feed(SignalReceived(SIGUSR2)) == []
    acts = f.ready(new)
    assert ReloadEnded(2, ok=True) in acts and acts[-1] == CheckUpgrade()


def test_the_check_times_out_at_the_boot_timeout():
    f = FakeSpawner(workers=1, boot_timeout=20.0, healthcheck_timeout=100.0)
    f.boot(1)
    f.feed(SignalReceived(SIGUSR2))
    assert f.sup.next_deadline() == 20.0
    acts = f.advance(20.0)
    assert acts[:2] == [StopUpgradeCheck(), Notify("READY=1")]
    assert f.feed(UpgradeChecked(True)) == []  # too late: ignored


def test_stopping_cancels_the_check():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    f.feed(SignalReceived(SIGUSR2))
    acts = f.feed(SignalReceived(SIGTERM))
    assert StopUpgradeCheck() in acts
    assert f.feed(UpgradeChecked(True)) == []
    assert f.feed(SignalReceived(SIGUSR2)) == []
    assert f.exited(a, 0)[-1] == Exit(0)


def roundtrip(f: FakeSpawner) -> FakeSpawner:
    """What the master's next image does: restore from JSON, keep the pid maps."""
    data = json.loads(json.dumps(f.sup.snapshot()))
    g = FakeSpawner()
    g.sup = Supervisor.restore(data)
    g.now, g.next_pid, g.pid, g.wid = f.now, f.next_pid, dict(f.pid), dict(f.wid)
    return g


def test_snapshot_restores_every_field_through_json():
    f = FakeSpawner(workers=3, max_lifetime=50.0, max_memory=1 << 20)
    a, b, c = f.boot(3)
    f.feed(WorkerRecycle(f.wid[a]))
    f.exited(c, -9)  # a crash: backoff pending for slot 2
    f.sup.recycled["memory"] = 2
    g = roundtrip(f)
    assert g.sup.settings == f.sup.settings
    for name in ("phase", "target", "generation", "ever_ready", "pending", "backoff", "recycled", "workers",
                 "_next_wid"):
        assert getattr(g.sup, name) == getattr(f.sup, name), name


def test_resumed_reloads_with_the_adopted_workers_as_the_old_generation():
    f = FakeSpawner(workers=2, healthcheck_timeout=10.0)
    a, b = f.boot(2)
    upgrade(f)
    f.now = 30.0  # the new image took a while: no beat was read meanwhile
    g = roundtrip(f)
    acts = g.feed(Resumed(PolicySettings(workers=2, healthcheck_timeout=10.0)))
    assert not any(s == signal.SIGABRT for _, s, _ in signals(acts))  # beats wait in the pipes
    assert ReloadStarted(2) in acts
    new = [g.pid[s.wid] for s in spawns(acts)]
    assert [g.sup.workers[g.wid[p]].generation for p in new] == [2, 2]
    assert signals(g.ready(new[0])) == [(a, SIGTERM, True)]
    acts = g.ready(new[1])
    assert signals(acts) == [(b, SIGTERM, True)]
    assert ReloadEnded(2, ok=True) in acts and Notify("READY=1") in acts


def test_resumed_takes_a_new_worker_count_from_the_new_configuration():
    f = FakeSpawner(workers=1)
    f.boot(1)
    upgrade(f)
    g = roundtrip(f)
    acts = g.feed(Resumed(PolicySettings(workers=3)))
    assert len(spawns(acts)) == 3


def test_resumed_with_an_app_that_does_not_import_keeps_the_old_workers(caplog):
    f = FakeSpawner(workers=2, preload=True)
    a, b = f.boot(2)
    upgrade(f, SIGHUP)
    g = roundtrip(f)
    acts = g.feed(Resumed(PolicySettings(workers=2, preload=True), app_error="boom"))
    assert acts == [Notify("READY=1")]
    assert "Reload aborted: the new code could not be loaded (boom); the previous workers keep serving" in caplog.text
    assert g.sup.phase is Phase.RUNNING and g.live_pids() == [a, b]
    assert CheckUpgrade() in g.feed(SignalReceived(SIGHUP))  # the next reload tries again


def test_resumed_mid_recycle_cancels_the_replacement():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    (spawn,) = spawns(f.feed(WorkerRecycle(f.wid[a])))
    r = f.pid[spawn.wid]
    upgrade(f)
    g = roundtrip(f)
    acts = g.feed(Resumed())
    assert (r, SIGTERM, True) in signals(acts)
    assert g.sup.workers[g.wid[r]].state is WorkerState.DRAINING


def test_a_preload_failure_at_start_exits_4_with_nothing_spawned():
    sup = Supervisor(PolicySettings(workers=2, preload=True))
    acts = sup.handle(Start(app_error="could not import module 'x'"), 0.0)
    assert spawns(acts) == []
    assert acts[-1] == Exit(EXIT_APP_LOAD_FAILED)


def test_dev_reload_with_preload_waits_for_a_fix_instead_of_exiting(caplog):
    f = FakeSpawner(workers=2, preload=True, dev_reload=True)
    assert f.feed(Start(app_error="boom")) == []
    assert f.sup.phase is Phase.BROKEN
    assert "fix it and save; waiting for a change" in caplog.text
    assert f.feed(SignalReceived(signal.SIGTTIN)) == [] and f.sup.target == 2
    assert upgrade(f, SIGHUP) == [ReExec("reload with --preload")]
    g = roundtrip(f)
    assert g.feed(Resumed(PolicySettings(workers=2, preload=True, dev_reload=True), app_error="still")) == []
    assert g.sup.phase is Phase.BROKEN
    upgrade(g, SIGHUP)
    h = roundtrip(g)
    acts = h.feed(Resumed(PolicySettings(workers=3, preload=True, dev_reload=True)))
    assert h.sup.phase is Phase.STARTING and len(spawns(acts)) == 3
    assert Notify("READY=1") in h.ready(*h.live_pids())


def test_dev_reload_with_preload_a_lifespan_failure_of_the_first_workers_waits_too():
    f = FakeSpawner(workers=2, preload=True, dev_reload=True)
    f.feed(Start())
    a, b = f.live_pids()
    acts = f.exited(a, 3)
    assert (b, SIGKILL, True) in signals(acts)
    assert f.sup.phase is Phase.BROKEN
    assert spawns(f.exited(b, -9)) == []
    assert spawns(f.advance(30.0)) == []
    assert f.feed(SignalReceived(SIGTERM))[-1] == Exit(0)


def test_a_preload_failure_after_a_resume_with_no_worker_left_refills_the_slot_after_its_backoff():
    f = FakeSpawner(workers=1)
    (a,) = f.boot(1)
    upgrade(f)
    f.exited(a, -9)  # gone during the exec, and not replaced yet (backoff)
    g = roundtrip(f)
    assert spawns(g.feed(Resumed(app_error="boom"))) == []
    assert g.sup.phase is Phase.RUNNING
    assert len(spawns(g.advance(0.1))) == 1


def test_beats_and_memory_still_apply_to_adopted_workers():
    f = FakeSpawner(workers=1, max_memory=1 << 20)
    (a,) = f.boot(1)
    upgrade(f)
    g = roundtrip(f)
    g.feed(Resumed(app_error="keep the old ones"))
    assert len(spawns(g.feed(WorkerBeat(g.wid[a], rss=2 << 20)))) == 1


def test_waiting_for_a_fix_leaves_a_worker_already_draining_to_its_deadline():
    f = FakeSpawner(workers=2, preload=True, dev_reload=True, graceful_timeout=5.0)
    f.feed(Start())
    a, b = f.live_pids()
    f.feed(WorkerDraining(f.wid[a]))  # its master seemed gone, say: it drains by itself
    acts = f.exited(b, 3)
    assert (a, SIGKILL, True) not in signals(acts)  # not killed: it keeps its drain deadline
    assert f.sup.phase is Phase.BROKEN
    upgrade(f, SIGHUP)
    g = roundtrip(f)
    g.feed(Resumed())  # no new settings: the same two workers
    assert g.sup.phase is Phase.STARTING and g.sup.target == 2
