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
before any worker was ever READY stops the master with that code: no crash loop.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastgate.errors import EXIT_APP_LOAD_FAILED, EXIT_BOOT_FAILED, EXIT_OK

logger = logging.getLogger("fastgate.error")

KILL_MARGIN = 1.0  # seconds past a worker's own drain deadline before SIGKILL (lifespan shutdown)
KILL_REPEAT = 5.0  # a worker SIGKILLed but not reaped yet is SIGKILLed again this often
ABORT_GRACE = 1.0  # seconds faulthandler gets to print after SIGABRT before SIGKILL


# ----------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The numbers the policy needs, taken from ``Config.process``."""

    workers: int = 1
    graceful_timeout: float = 30.0
    healthcheck_timeout: float = 30.0
    boot_timeout: float = 60.0
    shutdown_delay: float = 0.0
    fast_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    stable_after: float = 60.0
    # --reload: boot one new worker first and the rest once it is READY, so broken code
    # fails (and prints its error) once rather than once per worker.
    reload_canary: bool = False


# ----------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Start:
    """The master has bound its sockets: spawn the first generation."""


@dataclass(frozen=True, slots=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """SIGHUP or the dev-reload pipe; ``settings`` is the re-read config (None: unchanged)."""

    settings: PolicySettings | None = None


@dataclass(frozen=True, slots=True)
class Spawned:
    wid: int
    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    wid: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A worker was reaped. ``code`` is its exit code, or ``-signum`` if a signal killed it."""

    wid: int
    code: int


@dataclass(frozen=True, slots=True)
class WorkerReady:
    wid: int


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    wid: int


@dataclass(frozen=True, slots=True)
class WorkerDraining:
    wid: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; deadlines may have expired."""


Event = (
    Start | SignalReceived | ReloadRequested | Spawned | SpawnFailed | ChildExited | WorkerReady | WorkerBeat
    | WorkerDraining | Tick
)


# ----------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Spawn:
    wid: int
    slot: int
    generation: int


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Signal a worker; ``group`` signals its whole process group (the app's children too)."""

    pid: int
    signum: int
    group: bool = False


@dataclass(frozen=True, slots=True)
class Notify:
    """A systemd ``sd_notify`` state line such as ``READY=1``."""

    state: str


@dataclass(frozen=True, slots=True)
class CloseListeners:
    """Shutdown began: the master drops its copies of the listening sockets."""


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """No worker uses this slot any more (SIGTTOU): its sockets may be closed."""

    slot: int


@dataclass(frozen=True, slots=True)
class ReloadStarted:
    """A reload begins: workers of ``generation`` use the configuration the reload read."""

    generation: int


@dataclass(frozen=True, slots=True)
class ReloadEnded:
    """The reload of ``generation`` completed (``ok``) or was rolled back."""

    generation: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Exit:
    code: int


Action = Spawn | SendSignal | Notify | CloseListeners | ReleaseSlot | ReloadStarted | ReloadEnded | Exit


# ----------------------------------------------------------------- state


class Phase(enum.Enum):
    STARTING = "starting"  # first generation booting; boot failures are fatal
    RUNNING = "running"
    RELOADING = "reloading"  # a new generation boots beside the old one
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
    """

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
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
        if self.phase is Phase.STOPPING and not self.workers:
            self.phase = Phase.EXITED
            out.append(Exit(self.exit_code))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which a ``Tick`` would change something, or None."""
        times: list[float] = list(self.pending.values())
        s = self.settings
        for w in self.workers.values():
            if w.kill_at is not None:
                times.append(w.kill_at)
            elif w.state is WorkerState.BOOTING:
                times.append(w.started_at + s.boot_timeout)
            elif w.state is WorkerState.READY:
                times.append(w.last_seen + s.healthcheck_timeout)
        return min(times) if times else None

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values() if w.pid is not None]

    # ------------------------------------------------------------ events

    def _on_Start(self, event: Start, now: float, out: list[Action]) -> None:
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
        self.ever_ready = True
        logger.info("Worker %s (slot %d, generation %d) ready", w.pid, w.slot, w.generation)
        reload = self.reload
        if reload is not None and w.wid in reload.new_wids:
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
        if w is not None:
            w.last_seen = now

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
        elif (
            self.phase is Phase.STARTING
            and not self.ever_ready
            and event.code in (EXIT_BOOT_FAILED, EXIT_APP_LOAD_FAILED)
        ):
            what = "could not load the app" if event.code == EXIT_APP_LOAD_FAILED else "failed to boot"
            logger.error("Worker %s %s (exit %d): stopping", w.pid, what, event.code)
            self._stop(now, out, fast=True, code=event.code, kill=True)
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
        if self.phase is not Phase.RUNNING:
            # One reload at a time; the last request wins and runs when this one ends.
            logger.info("Reload requested while %s: it will follow", self.phase.value)
            self.reload_queued = event
            return
        self._start_reload(event.settings, now, out)

    def _on_SignalReceived(self, event: SignalReceived, now: float, out: list[Action]) -> None:
        sig = event.signum
        if sig == signal.SIGHUP:
            self._on_ReloadRequested(ReloadRequested(), now, out)
        elif sig == signal.SIGTERM:
            self._stop(now, out, fast=False, reason="SIGTERM")
        elif sig == signal.SIGINT:
            # Ctrl-C: graceful; a second one while stopping forces.
            self._stop(now, out, fast=self._stop_started, reason="SIGINT")
        elif sig == signal.SIGQUIT:
            self._stop(now, out, fast=True, reason="SIGQUIT")
        elif sig == signal.SIGTTIN and self.phase is not Phase.STOPPING:
            self.target += 1
            logger.info("SIGTTIN: %d worker(s)", self.target)
        elif sig == signal.SIGTTOU and self.phase is not Phase.STOPPING:
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
        w.kill_at = now + self.settings.graceful_timeout + KILL_MARGIN
        if w.pid is not None:
            out.append(SendSignal(w.pid, signal.SIGTERM, group=True))

    def _kill(self, w: WorkerRecord, now: float, out: list[Action]) -> None:
        w.state = WorkerState.DRAINING
        w.kill_at = now + KILL_REPEAT
        if w.pid is not None:
            out.append(SendSignal(w.pid, signal.SIGKILL, group=True))

    def _expire(self, now: float, out: list[Action]) -> None:
        s = self.settings
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
                    logger.error("%s: stopping", msg[0].upper() + msg[1:])
                    self._stop(now, out, fast=True, code=EXIT_BOOT_FAILED, kill=True)
                    return
                else:
                    logger.error("%s: killing it", msg[0].upper() + msg[1:])
                    self._kill(w, now, out)
            elif w.state is WorkerState.READY and now - w.last_seen >= s.healthcheck_timeout:
                logger.error(
                    "Worker %s sent no heartbeat for %.1fs (--timeout-worker-healthcheck): SIGABRT",
                    w.pid, now - w.last_seen,
                )
                w.state = WorkerState.ABORTED
                w.kill_at = now + ABORT_GRACE
                if w.pid is not None:
                    out.append(SendSignal(w.pid, signal.SIGABRT))

    # ------------------------------------------------------------ reload

    def _start_reload(self, settings: PolicySettings | None, now: float, out: list[Action]) -> None:
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
        self._retire((same_slot or old)[0], now, out)

    def _finish_reload(self, now: float, out: list[Action]) -> None:
        for w in self._old_workers():
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
        out.append(ReloadEnded(reload.generation, ok=False))
        out.append(Notify("READY=1"))
        # Slots whose old worker was already retired keep their ready new worker; any
        # slot left empty is refilled by _fill_slots.
        self._maybe_run_queued_reload(now, out)

    def _maybe_run_queued_reload(self, now: float, out: list[Action]) -> None:
        queued, self.reload_queued = self.reload_queued, None
        if queued is not None:
            self._start_reload(queued.settings, now, out)

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
