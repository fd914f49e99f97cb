"""The supervisor policy's vocabulary: its settings, the events it is fed and the actions it returns.

Events are facts (``ChildExited``, ``WorkerReady``, ``SignalReceived``); actions are verbs
(``Spawn``, ``SendSignal``, ``Exit``). ``policy.py`` turns the one into the other; ``master.py``
produces the events and executes the actions. Both import from here; ``policy`` re-exports
every name, so ``from fastgate.supervisor.policy import Spawn`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The numbers the policy needs, taken from ``Config.process`` (and ``app.preload``)."""

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
    # --reload again: an app that cannot start at all is waited on (not an exit) when the
    # master preloads it (without --preload the runner starts a new master instead).
    dev_reload: bool = False
    # --preload: the master holds the app, so a reload (SIGHUP, --reload) re-executes the
    # master in place instead of forking a new generation from the old code.
    preload: bool = False
    # Recycling: RSS limit in bytes (--limit-max-memory), lifetime in seconds and its jitter.
    max_memory: int | None = None
    max_lifetime: float | None = None
    max_lifetime_jitter: float = 0.0


# ----------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Start:
    """The master has bound its sockets: spawn the first generation.

    ``app_error`` is set when ``--preload`` could not import the app (already printed).
    """

    app_error: str | None = None


@dataclass(frozen=True, slots=True)
class Resumed:
    """First event of a master re-executed in place, after ``Supervisor.restore``.

    ``settings`` come from the configuration the new image read (None: unchanged);
    ``app_error`` is set when the new image could not preload the app.
    """

    settings: PolicySettings | None = None
    app_error: str | None = None


@dataclass(frozen=True, slots=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """SIGHUP or the dev-reload pipe; ``settings`` is the re-read config (None: unchanged)."""

    settings: PolicySettings | None = None


@dataclass(frozen=True, slots=True)
class UpgradeChecked:
    """The pre-exec check finished: does the installed fastgate start? (``detail``: why not)."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class UpgradeFailed:
    """``exec`` itself failed (the master image was not replaced)."""

    reason: str


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
    """A heartbeat; ``rss`` (bytes) is read by the master when ``--limit-max-memory`` is set."""

    wid: int
    rss: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerDraining:
    wid: int


@dataclass(frozen=True, slots=True)
class WorkerRecycle:
    """The worker reached ``--limit-max-requests``; it serves on until told to drain."""

    wid: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; deadlines may have expired."""


Event = (
    Start | Resumed | SignalReceived | ReloadRequested | UpgradeChecked | UpgradeFailed | Spawned | SpawnFailed
    | ChildExited | WorkerReady | WorkerBeat | WorkerDraining | WorkerRecycle | Tick
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
    """The reload of ``generation`` completed (``ok``) or was rolled back (``reason``: why)."""

    generation: int
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CheckUpgrade:
    """Start the pre-exec check: a fresh interpreter imports the installed fastgate's master
    code. Its exit comes back as ``UpgradeChecked``."""


@dataclass(frozen=True, slots=True)
class StopUpgradeCheck:
    """The check is no longer wanted (timed out, or shutdown began): kill it."""


@dataclass(frozen=True, slots=True)
class ReExec:
    """Replace the master's image in place (same pid), handing over sockets and workers."""

    reason: str


@dataclass(frozen=True, slots=True)
class Exit:
    code: int


Action = (
    Spawn | SendSignal | Notify | CloseListeners | ReleaseSlot | ReloadStarted | ReloadEnded | CheckUpgrade
    | StopUpgradeCheck | ReExec | Exit
)
