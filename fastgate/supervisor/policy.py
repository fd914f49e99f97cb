"""The supervisor policy: events in, actions out. No processes, no clock, no ``os``.

How it works
------------
The master (``master.py``) turns everything that happens into an *event*: a signal arrived,
a child exited, a worker wrote READY / BEAT / DRAINING on its pipe, or time passed (``Tick``).
It feeds each event to ``Supervisor.handle(event, now)`` and executes the *actions* that
come back: ``Spawn`` a worker, ``SendSignal`` to a worker (or its whole process group),
``Notify`` systemd, ``CloseListeners``, ``ReleaseSlot``, ``Exit``. ``now`` is a monotonic
time the caller passes in, so tests drive a fake clock and a fake spawner and never fork.

Vocabulary: a *slot* is a place for one worker (0..target-1); each slot has its own
listening sockets when the master spreads load with per-slot SO_REUSEPORT sockets. A
*generation* is the set of workers started by one (re)load. A worker is identified by a
``wid`` the policy assigns; the master maps wids to pids and pipes.

A slot is *occupied* by a worker that is BOOTING or READY. In STARTING and RUNNING phases
every slot below ``target`` that is not occupied gets a worker: at once when its previous
worker left on purpose (recycling, health abort), after an exponential backoff when it
crashed (0.1 s doubling to 10 s, reset once a worker stayed up ``stable_after`` seconds).

Reload (SIGHUP) is readiness-gated: a new generation is spawned beside the old one; each
READY from the new generation retires one old worker (preferably the one in the same slot)
with SIGTERM to its process group. If a new worker exits before READY or misses the boot
deadline, the reload is aborted: the new workers that are not ready are killed and the old
ones keep serving.

In the first generation, a worker that exits with EXIT_BOOT_FAILED / EXIT_APP_LOAD_FAILED
before any worker was ever READY stops the master with that code: no crash loop. (With
``--reload --preload`` the master waits for the next change instead, in the BROKEN phase.)

Recycling is drain-first. A READY worker becomes *due* when it reports --limit-max-requests
(``WorkerRecycle``), when a heartbeat shows its RSS above --limit-max-memory, or when it has
served --limit-max-lifetime (plus jitter). One due worker at a time gets a replacement in
its slot; only when the replacement is READY is the old worker sent SIGTERM, so the slot
never stops accepting. One at a time bounds the extra memory to one worker (the moment a
memory limit fires is the worst moment to double the fleet). A replacement that fails to
boot is killed; the old worker keeps serving and is tried again after a backoff.

Upgrading in place (SIGUSR2 always; SIGHUP and --reload when the app is preloaded): the
policy asks for a pre-exec check (``CheckUpgrade``: a fresh interpreter imports the
installed fastgate), then ``ReExec``. The master hands its state over across ``exec``
(``snapshot``) and the new image rebuilds the policy with ``restore`` and feeds
``Resumed``, which starts an ordinary readiness-gated reload with the adopted workers as
the old generation, or keeps them serving if the new image could not load the app.

Size: about 780 lines, over the ~500 the design aims at: one state machine (phases, workers,
reloads, recycling, upgrades) whose handlers read and change the same records; split across
modules, one transition would span files. Recycling and upgrading are the candidates to
move out as helpers over the records once their rules settle.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastgate.errors import EXIT_APP_LOAD_FAILED, EXIT_BOOT_FAILED, EXIT_OK
from fastgate.supervisor.events import (
    Action,
    CheckUpgrade,
    ChildExited,
    CloseListeners,
    Event,
    Exit,
    Notify,
    PolicySettings,
    ReExec,
    ReleaseSlot,
    ReloadEnded,
    ReloadRequested,
    ReloadStarted,
    Resumed,
    SendSignal,
    SignalReceived,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StopUpgradeCheck,
    Tick,
    UpgradeChecked,
    UpgradeFailed,
    WorkerBeat,
    WorkerDraining,
    WorkerReady,
    WorkerRecycle,
)

__all__ = [
    "ABORT_GRACE", "KILL_MARGIN", "KILL_REPEAT", "Action", "CheckUpgrade", "ChildExited",
    "CloseListeners", "Event", "Exit", "Notify", "Phase", "PolicySettings", "ReExec", "ReleaseSlot", "ReloadEnded",
    "ReloadRequested", "ReloadStarted", "Resumed", "SendSignal", "SignalReceived", "Spawn", "SpawnFailed",
    "Spawned", "Start", "StopUpgradeCheck", "Supervisor", "Tick", "UpgradeChecked", "UpgradeFailed",
    "WorkerBeat", "WorkerDraining", "WorkerReady", "WorkerRecord", "WorkerRecycle", "WorkerState",
]

logger = logging.getLogger("fastgate.error")

KILL_MARGIN = 1.0  # seconds past a worker's own drain deadline before SIGKILL (lifespan shutdown)
KILL_REPEAT = 5.0  # a worker SIGKILLed but not reaped yet is SIGKILLed again this often
ABORT_GRACE = 1.0  # seconds faulthandler gets to print after SIGABRT before SIGKILL
MIB = 1024 * 1024


# ----------------------------------------------------------------- state


class Phase(enum.Enum):
    STARTING = "starting"  # first generation booting; boot failures are fatal
    RUNNING = "running"
    RELOADING = "reloading"  # a new generation boots beside the old one
    BROKEN = "broken"  # --reload --preload: the app never started; waiting for a change
    STOPPING = "stopping"  # workers drain (graceful) or die (fast); exit when none is left
    EXITED = "exited"


class WorkerState(enum.Enum):
    SPAWNING = "spawning"  # Spawn emitted, pid not known yet
    BOOTING = "booting"  # forked, importing the app / running lifespan startup
    READY = "ready"  # serving
    DRAINING = "draining"  # told to stop, or recycling itself: it will exit
    ABORTED = "aborted"  # silent too long: SIGABRT sent, SIGKILL follows

    @property
    def occupies_slot(self) -> bool:
        return self in (WorkerState.SPAWNING, WorkerState.BOOTING, WorkerState.READY)


@dataclass(slots=True)
class WorkerRecord:
    wid: int
    slot: int
    generation: int
    started_at: float
    last_seen: float
    pid: int | None = None
    state: WorkerState = WorkerState.SPAWNING
    ready_at: float | None = None
    kill_at: float | None = None  # SIGKILL the group at this time if still alive
    recycle_at: float | None = None  # --limit-max-lifetime (+ jitter) expires
    recycle_reason: str | None = None  # due for recycling: "max-requests", "memory" or "lifetime"
    recycle_detail: str = ""  # what the log says about it
    recycle_failures: int = 0  # replacements that failed to boot, for the retry backoff
    recycle_retry_at: float | None = None  # next attempt after a failed replacement
    replaces: int | None = None  # on a replacement: the wid of the worker it recycles


@dataclass(slots=True)
class ReloadState:
    generation: int
    old_settings: PolicySettings
    old_target: int
    new_wids: set[int] = field(default_factory=set)
    waiting_slots: list[int] = field(default_factory=list)  # canary mode: spawned once one is READY


# ----------------------------------------------------------------- the policy


class Supervisor:
    """Decide what the master does. Feed events with ``handle``; execute the actions.

    Args:
        settings: timeouts, worker count and backoff parameters.
        rng: returns a float in [0, 1) for the lifetime jitter (tests pass a fixed one).
    """

    def __init__(self, settings: PolicySettings, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rng = rng
        self.target = max(1, settings.workers)
        self.phase = Phase.STARTING
        self.generation = 1
        self.workers: dict[int, WorkerRecord] = {}
        self.exit_code = EXIT_OK
        self.ever_ready = False
        self.reload: ReloadState | None = None
        self.reload_queued: ReloadRequested | None = None
        self.pending: dict[int, float] = {}  # slot -> time its replacement may spawn
        self.backoff: dict[int, float] = {}  # slot -> last crash delay
        self.recycled: Counter[str] = Counter()  # completed recycles by reason
        # Workers replaced, by why: "crash", "health-check", "reload" (recycles are in
        # ``recycled``); read by the master's metrics.
        self.restarts: Counter[str] = Counter()
        self.upgrade: str | None = None  # an upgrade (re-exec) is being checked: its reason
        self.upgrade_deadline: float | None = None
        self.upgrade_queued: str | None = None
        self._next_wid = 1
        self._stop_started = False

    # ------------------------------------------------------------ public

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; return the actions to execute, in order."""
        if self.phase is Phase.EXITED:
            return []
        out: list[Action] = []
        handler = getattr(self, "_on_" + type(event).__name__)
        handler(event, now, out)
        self._expire(now, out)
        if self.phase in (Phase.STARTING, Phase.RUNNING):
            self._fill_slots(now, out)
        if self.phase is Phase.RUNNING:
            self._run_recycles(now, out)
        if self.phase is Phase.STOPPING and not self.workers:
            self.phase = Phase.EXITED
            out.append(Exit(self.exit_code))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which a ``Tick`` would change something, or None."""
        times: list[float] = list(self.pending.values())
        if self.upgrade_deadline is not None:
            times.append(self.upgrade_deadline)
        s = self.settings
        for w in self.workers.values():
            if w.kill_at is not None:
                times.append(w.kill_at)
            elif w.state is WorkerState.BOOTING:
                times.append(w.started_at + s.boot_timeout)
            elif w.state is WorkerState.READY:
                times.append(w.last_seen + s.healthcheck_timeout)
                if w.recycle_reason is None and w.recycle_at is not None:
                    times.append(w.recycle_at)
                elif w.recycle_reason is not None and w.recycle_retry_at is not None:
                    times.append(w.recycle_retry_at)
        return min(times) if times else None

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values() if w.pid is not None]

    # ------------------------------------------------------------ events

    def _on_Start(self, event: Start, now: float, out: list[Action]) -> None:
        if event.app_error is not None:
            # The master printed the error already (--preload imports before forking).
            self._first_generation_failed(now, out, EXIT_APP_LOAD_FAILED, "")
            return
        logger.info("Starting %d worker(s)", self.target)
        # _fill_slots spawns them.

    def _on_Spawned(self, event: Spawned, now: float, out: list[Action]) -> None:
        w = self.workers.get(event.wid)
        if w is None:
            return
        w.pid = event.pid
        if w.state is WorkerState.SPAWNING:
            w.state = WorkerState.BOOTING
        elif w.kill_at is not None and w.state is WorkerState.DRAINING:
            # Stopped before its pid was known (e.g. SIGQUIT right after Spawn).
            out.append(SendSignal(event.pid, signal.SIGKILL, group=True))

    def _on_SpawnFailed(self, event: SpawnFailed, now: float, out: list[Action]) -> None:
        logger.error("Could not start a worker: %s", event.reason)
        w = self.workers.get(event.wid)
        if w is not None:
            self._on_ChildExited(ChildExited(event.wid, EXIT_BOOT_FAILED), now, out)

    def _on_WorkerReady(self, event: WorkerReady, now: float, out: list[Action]) -> None:
        w = self.workers.get(event.wid)
        if w is None or w.state is not WorkerState.BOOTING:
            return
        w.state = WorkerState.READY
        w.ready_at = w.last_seen = now
        s = self.settings
        if s.max_lifetime is not None:
            w.recycle_at = now + s.max_lifetime + self.rng() * s.max_lifetime_jitter
        self.ever_ready = True
        logger.info("Worker %s (slot %d, generation %d) ready", w.pid, w.slot, w.generation)
        reload = self.reload
        if w.replaces is not None:
            self._replacement_ready(w, now, out)
        elif reload is not None and w.wid in reload.new_wids:
            for slot in reload.waiting_slots:
                reload.new_wids.add(self._spawn(slot, reload.generation, now, out).wid)
            reload.waiting_slots = []
            self._retire_old_for(w, now, out)
            if all(self.workers[x].state is WorkerState.READY for x in reload.new_wids if x in self.workers):
                self._finish_reload(now, out)
        elif self.phase is Phase.STARTING and self._ready_count() >= self.target:
            self.phase = Phase.RUNNING
            out.append(Notify("READY=1"))
            logger.info("All %d worker(s) ready", self.target)
            self._maybe_run_queued_reload(now, out)

    def _on_WorkerBeat(self, event: WorkerBeat, now: float, out: list[Action]) -> None:
        w = self.workers.get(event.wid)
        if w is None:
            return
        w.last_seen = now
        limit = self.settings.max_memory
        if limit is not None and event.rss is not None and event.rss > limit:
            self._due(w, "memory", f"RSS {event.rss / MIB:.1f} MiB is above --limit-max-memory {limit / MIB:g} MiB")

    def _on_WorkerRecycle(self, event: WorkerRecycle, now: float, out: list[Action]) -> None:
        w = self.workers.get(event.wid)
        if w is not None:
            self._due(w, "max-requests", "it served --limit-max-requests requests")

    def _on_WorkerDraining(self, event: WorkerDraining, now: float, out: list[Action]) -> None:
        w = self.workers.get(event.wid)
        if w is None:
            return
        w.last_seen = now
        if w.state.occupies_slot:
            # The worker stops by itself (--limit-max-requests, or its master vanished):
            # _fill_slots starts its successor now, while it finishes in-flight requests.
            w.state = WorkerState.DRAINING
            w.kill_at = now + self.settings.graceful_timeout + KILL_MARGIN
            if self.reload is not None and w.wid in self.reload.new_wids:
                self.reload.new_wids.discard(w.wid)

    def _on_ChildExited(self, event: ChildExited, now: float, out: list[Action]) -> None:
        w = self.workers.pop(event.wid, None)
        if w is None:
            return
        if w.pid is not None:
            # Whatever the app started in the worker's process group goes with it.
            out.append(SendSignal(w.pid, signal.SIGKILL, group=True))
        how = f"signal {-event.code}" if event.code < 0 else f"code {event.code}"
        if self.phase is Phase.STOPPING:
            logger.info("Worker %s exited (%s)", w.pid, how)
        elif w.state is WorkerState.DRAINING:
            logger.info("Worker %s exited (%s)", w.pid, how)
        elif w.state is WorkerState.ABORTED:
            logger.error("Worker %s (stuck) exited (%s)", w.pid, how)
            self.restarts["health-check"] += 1
        elif (
            self.phase is Phase.STARTING
            and not self.ever_ready
            and event.code in (EXIT_BOOT_FAILED, EXIT_APP_LOAD_FAILED)
        ):
            what = "could not load the app" if event.code == EXIT_APP_LOAD_FAILED else "failed to boot"
            self._first_generation_failed(now, out, event.code, f"Worker {w.pid} {what} (exit {event.code})")
        elif w.replaces is not None and w.replaces in self.workers:
            self._recycle_failed(w, now, f"its replacement {w.pid} exited before it was ready ({how})")
        elif self.reload is not None and w.wid in self.reload.new_wids:
            self._abort_reload(now, out, f"a new worker exited before it was ready ({how})")
        else:
            uptime = now - w.ready_at if w.ready_at is not None else 0.0
            previous = self.backoff.get(w.slot)
            s = self.settings
            if previous is None or uptime >= s.stable_after:
                delay = s.backoff_initial
            else:
                delay = min(previous * 2, s.backoff_max)
            self.backoff[w.slot] = delay
            self.restarts["crash"] += 1
            logger.error("Worker %s exited unexpectedly (%s); restarting slot %d in %.1fs", w.pid, how, w.slot, delay)
            if w.slot < self.target:
                self.pending[w.slot] = now + delay
        if self.phase is not Phase.STOPPING and w.slot >= self.target:
            if not any(x.slot == w.slot for x in self.workers.values()):
                out.append(ReleaseSlot(w.slot))

    def _on_Tick(self, event: Tick, now: float, out: list[Action]) -> None:
        pass  # _expire does the work after every event

    def _on_ReloadRequested(self, event: ReloadRequested, now: float, out: list[Action]) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.settings.preload or (event.settings is not None and event.settings.preload):
            # The master holds the (old) app: forking would serve old code. Load the new
            # code in a new image of the master instead (it reloads the config itself).
            self._request_upgrade("reload with --preload", now, out)
            return
        if self.phase is not Phase.RUNNING or self.upgrade is not None:
            # One reload at a time; the last request wins and runs when this one ends.
            logger.info("Reload requested while %s: it will follow", self.phase.value)
            self.reload_queued = event
            return
        self._start_reload(event.settings, now, out)

    def _on_SignalReceived(self, event: SignalReceived, now: float, out: list[Action]) -> None:
        sig = event.signum
        if sig == signal.SIGHUP:
            self._on_ReloadRequested(ReloadRequested(), now, out)
        elif sig == signal.SIGUSR2:
            self._request_upgrade("SIGUSR2", now, out)
        elif sig == signal.SIGTERM:
            self._stop(now, out, fast=False, reason="SIGTERM")
        elif sig == signal.SIGINT:
            # Ctrl-C: graceful; a second one while stopping forces.
            self._stop(now, out, fast=self._stop_started, reason="SIGINT")
        elif sig == signal.SIGQUIT:
            self._stop(now, out, fast=True, reason="SIGQUIT")
        elif sig == signal.SIGTTIN and self.phase not in (Phase.STOPPING, Phase.BROKEN):
            self.target += 1
            logger.info("SIGTTIN: %d worker(s)", self.target)
        elif sig == signal.SIGTTOU and self.phase not in (Phase.STOPPING, Phase.BROKEN):
            if self.target <= 1:
                logger.info("SIGTTOU ignored: at least one worker runs")
                return
            self.target -= 1
            logger.info("SIGTTOU: %d worker(s)", self.target)
            self.pending = {s: t for s, t in self.pending.items() if s < self.target}
            for w in list(self.workers.values()):
                if w.slot >= self.target and w.state.occupies_slot:
                    self._retire(w, now, out)
        elif sig == signal.SIGUSR1:
            out.extend(SendSignal(pid, signal.SIGUSR1) for pid in self.pids())

    # ------------------------------------------------------------ helpers

    def _spawn(self, slot: int, generation: int, now: float, out: list[Action]) -> WorkerRecord:
        wid = self._next_wid
        self._next_wid += 1
        w = WorkerRecord(wid=wid, slot=slot, generation=generation, started_at=now, last_seen=now)
        self.workers[wid] = w
        self.pending.pop(slot, None)
        out.append(Spawn(wid, slot, generation))
        return w

    def _fill_slots(self, now: float, out: list[Action]) -> None:
        occupied = {w.slot for w in self.workers.values() if w.state.occupies_slot}
        for slot in range(self.target):
            if slot in occupied:
                self.pending.pop(slot, None)
                continue
            due = self.pending.get(slot)
            if due is None or due <= now:
                self._spawn(slot, self.generation, now, out)

    def _ready_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state is WorkerState.READY)

    def _retire(self, w: WorkerRecord, now: float, out: list[Action]) -> None:
        w.state = WorkerState.DRAINING
        w.replaces = None  # a retired replacement replaces nobody
        w.kill_at = now + self.settings.graceful_timeout + KILL_MARGIN
        if w.pid is not None:
            out.append(SendSignal(w.pid, signal.SIGTERM, group=True))

    def _kill(self, w: WorkerRecord, now: float, out: list[Action]) -> None:
        w.state = WorkerState.DRAINING
        w.replaces = None
        w.kill_at = now + KILL_REPEAT
        if w.pid is not None:
            out.append(SendSignal(w.pid, signal.SIGKILL, group=True))

    def _expire(self, now: float, out: list[Action]) -> None:
        s = self.settings
        if self.upgrade_deadline is not None and now >= self.upgrade_deadline:
            out.append(StopUpgradeCheck())
            self._upgrade_failed(now, out, f"the check did not finish within --timeout-worker-boot {s.boot_timeout:g}s")
        for w in list(self.workers.values()):
            if w.kill_at is not None:
                if now >= w.kill_at and w.pid is not None:
                    if w.state is WorkerState.ABORTED:
                        logger.error("Worker %s still alive after SIGABRT: SIGKILL", w.pid)
                    else:
                        logger.warning("Worker %s did not exit in time: SIGKILL", w.pid)
                    out.append(SendSignal(w.pid, signal.SIGKILL, group=True))
                    w.kill_at = now + KILL_REPEAT  # repeat rarely until it is reaped
                continue
            if w.state is WorkerState.BOOTING and now - w.started_at >= s.boot_timeout:
                msg = f"worker {w.pid} not ready within --timeout-worker-boot {s.boot_timeout:g}s"
                if self.reload is not None and w.wid in self.reload.new_wids:
                    self._abort_reload(now, out, msg)
                elif self.phase is Phase.STARTING and not self.ever_ready:
                    self._first_generation_failed(now, out, EXIT_BOOT_FAILED, msg[0].upper() + msg[1:])
                    return
                elif w.replaces is not None:
                    self._recycle_failed(w, now, f"its replacement: {msg}")
                    self._kill(w, now, out)
                else:
                    logger.error("%s: killing it", msg[0].upper() + msg[1:])
                    self._kill(w, now, out)
            elif w.state is WorkerState.READY and w.recycle_at is not None and now >= w.recycle_at:
                w.recycle_at = None
                assert w.ready_at is not None
                self._due(w, "lifetime", f"it served {now - w.ready_at:.1f}s (--limit-max-lifetime "
                                         f"{s.max_lifetime:g}s)")
            if w.state is WorkerState.READY and now - w.last_seen >= s.healthcheck_timeout:
                logger.error(
                    "Worker %s sent no heartbeat for %.1fs (--timeout-worker-healthcheck): SIGABRT",
                    w.pid, now - w.last_seen,
                )
                w.state = WorkerState.ABORTED
                w.kill_at = now + ABORT_GRACE
                if w.pid is not None:
                    out.append(SendSignal(w.pid, signal.SIGABRT))

    # ------------------------------------------------------------ recycling

    def _due(self, w: WorkerRecord, reason: str, detail: str) -> None:
        """Mark a serving worker for drain-first recycling (once)."""
        if w.state is WorkerState.READY and w.recycle_reason is None:
            w.recycle_reason, w.recycle_detail = reason, detail

    def _run_recycles(self, now: float, out: list[Action]) -> None:
        """Start the replacement of one due worker, unless a replacement is booting already."""
        if any(w.replaces is not None and w.state.occupies_slot for w in self.workers.values()):
            return
        due = [
            w for w in self.workers.values()
            if w.state is WorkerState.READY and w.recycle_reason is not None and w.slot < self.target
            and (w.recycle_retry_at is None or w.recycle_retry_at <= now)
        ]
        if not due:
            return
        old = min(due, key=lambda w: (w.recycle_retry_at or 0.0, w.started_at))
        new = self._spawn(old.slot, self.generation, now, out)
        new.replaces = old.wid
        logger.info("Recycling worker %s (slot %d, %s): %s; its replacement starts first",
                    old.pid, old.slot, old.recycle_reason, old.recycle_detail)

    def _replacement_ready(self, new: WorkerRecord, now: float, out: list[Action]) -> None:
        old = self.workers.get(new.replaces) if new.replaces is not None else None
        new.replaces = None
        if old is None or old.state is not WorkerState.READY or old.recycle_reason is None:
            return  # it left on its own meanwhile: the replacement simply takes the slot
        self.recycled[old.recycle_reason] += 1
        logger.info("Worker %s replaces worker %s (recycled for %s; %d so far): it drains now",
                    new.pid, old.pid, old.recycle_reason, self.recycled[old.recycle_reason])
        self._retire(old, now, out)

    def _recycle_failed(self, new: WorkerRecord, now: float, reason: str) -> None:
        old = self.workers.get(new.replaces) if new.replaces is not None else None
        new.replaces = None
        if old is None:
            return
        old.recycle_failures += 1
        s = self.settings
        delay = min(s.backoff_max, s.backoff_initial * 2 ** old.recycle_failures)
        old.recycle_retry_at = now + delay
        logger.error("Recycling worker %s aborted: %s; it keeps serving (next attempt in %.1fs)",
                     old.pid, reason, delay)

    def _cancel_recycles(self, now: float, out: list[Action]) -> None:
        for w in list(self.workers.values()):
            if w.replaces is not None:
                w.replaces = None
                self._retire(w, now, out)

    # ------------------------------------------------------------ reload

    def _start_reload(self, settings: PolicySettings | None, now: float, out: list[Action]) -> None:
        self._cancel_recycles(now, out)  # the reload replaces every worker anyway
        self.phase = Phase.RELOADING
        self.generation += 1
        reload = self.reload = ReloadState(self.generation, self.settings, self.target)
        if settings is not None:
            # A worker count changed by SIGTTIN/SIGTTOU survives a reload unless the
            # configuration itself now asks for a different count.
            if settings.workers != self.settings.workers:
                self.target = max(1, settings.workers)
            self.settings = settings
        out.append(Notify("RELOADING=1"))
        out.append(ReloadStarted(self.generation))
        logger.info("Reloading: starting generation %d (%d worker(s))", self.generation, self.target)
        self.pending.clear()
        slots = list(range(self.target))
        if self.settings.reload_canary:
            slots, reload.waiting_slots = slots[:1], slots[1:]
        for slot in slots:
            reload.new_wids.add(self._spawn(slot, self.generation, now, out).wid)

    def _old_workers(self) -> list[WorkerRecord]:
        reload = self.reload
        assert reload is not None
        return sorted(
            (w for w in self.workers.values() if w.generation < reload.generation and w.state.occupies_slot),
            key=lambda w: w.started_at,
        )

    def _retire_old_for(self, new: WorkerRecord, now: float, out: list[Action]) -> None:
        old = self._old_workers()
        if not old:
            return
        same_slot = [w for w in old if w.slot == new.slot]
        self.restarts["reload"] += 1
        self._retire((same_slot or old)[0], now, out)

    def _finish_reload(self, now: float, out: list[Action]) -> None:
        for w in self._old_workers():
            self.restarts["reload"] += 1
            self._retire(w, now, out)
        logger.info("Reload complete: generation %d serving", self.generation)
        self.reload = None
        self.phase = Phase.RUNNING
        out.append(ReloadEnded(self.generation, ok=True))
        out.append(Notify("READY=1"))
        self._maybe_run_queued_reload(now, out)

    def _abort_reload(self, now: float, out: list[Action], reason: str) -> None:
        reload = self.reload
        assert reload is not None
        logger.error("Reload aborted: %s; the previous workers keep serving", reason)
        for wid in reload.new_wids:
            w = self.workers.get(wid)
            if w is not None and w.state is not WorkerState.READY:
                self._kill(w, now, out)
        self.settings = reload.old_settings
        self.target = reload.old_target
        self.reload = None
        self.phase = Phase.RUNNING
        out.append(ReloadEnded(reload.generation, ok=False, reason=reason))
        out.append(Notify("READY=1"))
        # Slots whose old worker was already retired keep their ready new worker; any
        # slot left empty is refilled by _fill_slots.
        self._maybe_run_queued_reload(now, out)

    def _maybe_run_queued_reload(self, now: float, out: list[Action]) -> None:
        upgrade, self.upgrade_queued = self.upgrade_queued, None
        if upgrade is not None:
            # An upgrade reloads everything; a reload queued beside it runs only if it fails.
            self._request_upgrade(upgrade, now, out)
            return
        queued, self.reload_queued = self.reload_queued, None
        if queued is not None:
            self._on_ReloadRequested(queued, now, out)

    # ------------------------------------------------------------ first generation

    def _first_generation_failed(self, now: float, out: list[Action], code: int, message: str) -> None:
        """No worker ever started: stop with ``code``, or with --reload --preload wait for a fix."""
        if self.settings.dev_reload and self.settings.preload:
            if message:
                logger.error("%s", message)
            for w in self._live():
                if w.state is not WorkerState.DRAINING:
                    self._kill(w, now, out)
            self.pending.clear()
            self.phase = Phase.BROKEN
            logger.error("The app could not start: fix it and save; waiting for a change (Ctrl-C to quit)")
            return
        if message:
            logger.error("%s: stopping", message)
        self._stop(now, out, fast=True, code=code, kill=True)

    # ------------------------------------------------------------ upgrade (re-exec in place)

    def _request_upgrade(self, reason: str, now: float, out: list[Action]) -> None:
        if self.phase is Phase.STOPPING:
            return
        if self.upgrade is not None:
            logger.info("%s: an upgrade is in progress already; it loads the code of the moment", reason)
            return
        if self.phase in (Phase.STARTING, Phase.RELOADING):
            logger.info("%s while %s: re-executing the master will follow", reason, self.phase.value)
            self.upgrade_queued = reason
            return
        self.upgrade = reason
        self.upgrade_deadline = now + self.settings.boot_timeout
        logger.info("%s: re-executing the master in place (pid kept); checking that the installed fastgate "
                    "starts", reason)
        out.append(Notify("RELOADING=1"))
        out.append(CheckUpgrade())

    def _on_UpgradeChecked(self, event: UpgradeChecked, now: float, out: list[Action]) -> None:
        if self.upgrade is None:
            return  # timed out or stopping meanwhile
        if not event.ok:
            self._upgrade_failed(now, out, f"the new code does not start: {event.detail}")
            return
        self.upgrade_deadline = None
        out.append(ReExec(self.upgrade))

    def _on_UpgradeFailed(self, event: UpgradeFailed, now: float, out: list[Action]) -> None:
        if self.upgrade is not None:
            self._upgrade_failed(now, out, f"exec failed: {event.reason}")

    def _upgrade_failed(self, now: float, out: list[Action], reason: str) -> None:
        logger.error("Upgrade aborted: %s; this master and its workers keep serving", reason)
        self.upgrade = self.upgrade_deadline = None
        out.append(Notify("READY=1"))
        self._maybe_run_queued_reload(now, out)

    def _on_Resumed(self, event: Resumed, now: float, out: list[Action]) -> None:
        # The master was away while the new image started: whatever the workers wrote
        # meanwhile waits in their pipes, so nobody counts as silent for that time.
        for w in self.workers.values():
            w.last_seen = max(w.last_seen, now)
        self.upgrade = self.upgrade_deadline = None
        if event.app_error is not None:
            if self.phase is Phase.BROKEN:
                self._first_generation_failed(now, out, EXIT_APP_LOAD_FAILED, "")
                return
            # As a reload whose new workers cannot import: whatever serves keeps serving,
            # and a slot left empty is refilled (its worker imports the app itself).
            logger.error("Reload aborted: the new code could not be loaded (%s); the previous workers keep serving",
                         event.app_error)
            out.append(Notify("READY=1"))
            return
        if self.phase is Phase.BROKEN:
            if event.settings is not None:
                self.settings = event.settings
                self.target = max(1, event.settings.workers)
            self.phase = Phase.STARTING
            logger.info("Starting %d worker(s)", self.target)
            return
        self._start_reload(event.settings, now, out)

    # ------------------------------------------------------------ handover across exec

    def snapshot(self) -> dict[str, Any]:
        """The policy's state as plain JSON values, for the master's next image (``restore``).

        Its shape is part of the handover format: change it, bump ``handover.VERSION``.
        """
        return {
            "settings": dataclasses.asdict(self.settings),
            "phase": self.phase.value,
            "target": self.target,
            "generation": self.generation,
            "ever_ready": self.ever_ready,
            "next_wid": self._next_wid,
            "pending": [[slot, due] for slot, due in self.pending.items()],
            "backoff": [[slot, delay] for slot, delay in self.backoff.items()],
            "recycled": dict(self.recycled),
            "restarts": dict(self.restarts),
            "workers": [{**dataclasses.asdict(w), "state": w.state.value} for w in self.workers.values()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any], rng: Callable[[], float] = random.random) -> Supervisor:
        """Rebuild the policy from ``snapshot()`` output; feed ``Resumed`` next."""
        sup = cls(PolicySettings(**data["settings"]), rng)
        sup.phase = Phase(data["phase"])
        sup.target = int(data["target"])
        sup.generation = int(data["generation"])
        sup.ever_ready = bool(data["ever_ready"])
        sup._next_wid = int(data["next_wid"])
        sup.pending = {int(slot): float(due) for slot, due in data["pending"]}
        sup.backoff = {int(slot): float(delay) for slot, delay in data["backoff"]}
        sup.recycled = Counter({str(k): int(v) for k, v in data["recycled"].items()})
        # .get: a snapshot from an image without restart counts still restores.
        sup.restarts = Counter({str(k): int(v) for k, v in data.get("restarts", {}).items()})
        for raw in data["workers"]:
            w = WorkerRecord(**{**raw, "state": WorkerState(raw["state"])})
            sup.workers[w.wid] = w
        return sup

    # ------------------------------------------------------------ stop

    def _stop(
        self, now: float, out: list[Action], *, fast: bool, code: int = EXIT_OK, reason: str = "",
        kill: bool = False,
    ) -> None:
        first = not self._stop_started
        if not first and not fast:
            return
        self._stop_started = True
        if first:
            self.exit_code = code
            out.append(Notify("STOPPING=1"))
            out.append(CloseListeners())
        self.phase = Phase.STOPPING
        self.reload = None
        self.reload_queued = None
        self.upgrade_queued = None
        if self.upgrade is not None:
            out.append(StopUpgradeCheck())
            self.upgrade = self.upgrade_deadline = None
        self.pending.clear()
        s = self.settings
        if reason:
            how = "fast" if fast else "graceful"
            logger.info("%s: %s shutdown of %d worker(s)", reason, how, len(self.workers))
        for w in self._live():
            if kill:
                self._kill(w, now, out)
            elif fast:
                w.state = WorkerState.DRAINING
                w.kill_at = now + s.fast_timeout
                if w.pid is not None:
                    # The worker alone: SIGQUIT would make the app's children dump core; they get
                    # SIGKILL with the rest of the group once the worker is reaped.
                    out.append(SendSignal(w.pid, signal.SIGQUIT))
            elif w.state is not WorkerState.DRAINING or w.kill_at is None:
                w.state = WorkerState.DRAINING
                w.kill_at = now + s.shutdown_delay + s.graceful_timeout + KILL_MARGIN
                if w.pid is not None:
                    out.append(SendSignal(w.pid, signal.SIGTERM, group=True))
            else:
                # Already draining (reload, recycling): it keeps its deadline.
                pass

    def _live(self) -> Iterable[WorkerRecord]:
        return list(self.workers.values())
