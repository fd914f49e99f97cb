"""The master process: one thread, no event loop, no app import (unless ``--preload``).

How it works
------------
Before the first fork the master binds every listener, prints the "Listening on" lines,
writes the pid file and installs its signal plumbing: a non-blocking socketpair whose write
end is ``signal.set_wakeup_fd``, and a do-nothing Python handler for each signal it cares
about. The C-level handler writes the signal number into the socket, so nothing runs in
signal context (never ``SIG_IGN`` for SIGCHLD: the kernel would reap children itself).

Then it loops: ``select`` over the wakeup socket, every worker's report pipe and an optional
*reload source* (a readable fd; a byte means "reload like SIGHUP", used by ``--reload``),
with a timeout up to the policy's next deadline. After each wake-up it

1. reads the worker pipes (READY / BEAT / DRAINING / RECYCLE; with --limit-max-memory a
   BEAT comes with the worker's RSS, read from ``/proc/PID/statm``),
2. reaps every exited child with ``waitpid(-1, WNOHANG)``; unknown pids (orphans adopted
   when the master is PID 1) are reaped and logged at debug level; the pre-exec check's
   exit becomes ``UpgradeChecked``,
3. turns the signals into events (SIGHUP first re-reads the configuration),
4. sends a ``Tick``,

feeding each event to the ``Supervisor`` policy and executing the actions it returns. The
master never decides anything itself; ``policy.py`` does.

Every worker also inherits the read end of a *life pipe* whose write end only the master
holds: when the master dies, even by SIGKILL, the pipe reads EOF in every worker and they
drain and exit (no orphans).

``--preload``: after binding, the master imports the app (and the worker code) and calls
``gc.freeze()``, then forks; each worker uses that app object and runs the lifespan itself.
A reload then cannot fork fresh code, so the master re-executes itself in place (``ReExec``,
also SIGUSR2 to upgrade fastgate itself): it hands its sockets, pipes and policy state to
its next image (see ``fastgate/handover.py`` for exactly what crosses ``exec``), which adopts
the running workers as the old generation and reloads from there.

Size: about 950 lines, over the ~500 the design aims at. It is the one loop that executes
the policy's actions, and each input it selects on (signals, worker pipes, children, the
reload source, the control socket, the metrics listener, the handover across exec) adds its
handler here. The next split is by input: the control and metrics listeners' dispatch and
the handover adoption into modules of their own, the loop keeping only select and dispatch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastgate import handover, logs, notify
from fastgate.config import Config, listeners_tls
from fastgate.errors import EXIT_BOOT_FAILED, EXIT_USAGE, AppLoadError, BindError, ConfigError
from fastgate.ipc import BEAT, DRAINING, METRICS, READY, RECYCLE, Decoder
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
from fastgate.supervisor.policy import Phase, Supervisor, WorkerState
from fastgate.supervisor.sockets import Listener, bind_all, from_fd, rebind
from fastgate.supervisor.spawner import (
    Executor,
    ForkSpawner,
    ProcessExecutor,
    Spawner,
    become_worker,
    preload_app,
    report_app_load_error,
)

logger = logging.getLogger("fastgate.error")


def check_tls(config: Config) -> None:
    """``fastgate.tls.check``, with ``ssl`` imported only for a configuration that serves TLS:
    a master without it never needs the module (nor OpenSSL loaded at start-up)."""
    if config.tls_enabled:
        from fastgate.tls import check

        check(config)


HANDLED_SIGNALS = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGCHLD,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
)
MIB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_SLEEP = 1.0  # wake at least this often, so a lost wake-up can never stall the master

_WAKEUP = "wakeup"
_RELOAD = "reload"
_METRICS = "metrics"
_CONTROL = "control"
CONTROL_MARGIN = 10.0  # seconds a waiting control client gets beyond the policy's own timeouts


def policy_settings(config: Config) -> PolicySettings:
    """The policy's numbers from a config."""
    p = config.process
    return PolicySettings(
        workers=max(1, p.workers),
        graceful_timeout=p.timeout_graceful_shutdown,
        healthcheck_timeout=p.timeout_worker_healthcheck,
        boot_timeout=p.timeout_worker_boot,
        shutdown_delay=p.shutdown_delay,
        reload_canary=config.reload.reload,
        dev_reload=config.reload.reload,
        preload=config.app.preload,
        max_memory=p.limit_max_memory * MIB if p.limit_max_memory is not None else None,
        max_lifetime=p.limit_max_lifetime,
        max_lifetime_jitter=p.limit_max_lifetime_jitter,
    )


def read_rss(pid: int) -> int | None:
    """A process's resident set size in bytes (``/proc/PID/statm``), None if unreadable.

    The RSS ``ps`` shows: with ``--preload`` it includes the shared pages the worker maps.
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class Master:
    """Bind, fork workers, supervise them until told to stop.

    Args:
        config: the configuration.
        reread: called on SIGHUP to load the configuration again (the original command
            line, the environment and the config file); a ``ConfigError`` is logged and
            the reload goes on with the current configuration.
        reload_source: a readable fd (or object with ``fileno()``); each readable batch of
            bytes requests a reload, as SIGHUP does. EOF unregisters it. The master closes
            it in every worker it forks. An object with ``read_requests()`` (the dev
            reloader) reads and logs its own messages instead: it returns whether a reload
            is requested and sets ``closed`` at EOF.
        spawner: how workers are started (tests pass a fake).
        executor: how the master re-executes itself (tests pass a fake).
        clock: monotonic time source.
    """

    def __init__(
        self,
        config: Config,
        *,
        reread: Callable[[], Config] | None = None,
        reload_source: Any = None,
        spawner: Spawner | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.reread = reread
        self.reload_fd: int | None = None
        self.reload_source = reload_source
        if reload_source is not None:
            self.reload_fd = reload_source if isinstance(reload_source, int) else reload_source.fileno()
        self.spawner: Spawner = spawner if spawner is not None else ForkSpawner(self._child_main, block=HANDLED_SIGNALS)
        self.executor: Executor = executor if executor is not None else ProcessExecutor()
        self.clock = clock
        self.app: Any = None  # the preloaded app (--preload), shared with every worker forked
        self.policy = Supervisor(policy_settings(config))
        self.listeners: list[Listener] = []
        self.selector = selectors.DefaultSelector()
        self.pid = os.getpid()
        self.exit_code: int | None = None
        self.pid_to_wid: dict[int, int] = {}
        self.wid_to_pid: dict[int, int] = {}
        self.wid_to_fd: dict[int, int] = {}
        self.decoders: dict[int, Decoder] = {}  # per worker pipe: a METRICS message may span reads
        # --metrics-bind: the workers' counters and the scrape endpoint (built in run()).
        self.metrics_store: Any = None
        self.metrics_server: Any = None
        # --control-socket, and the clients waiting for an outcome: (client, generation
        # at the request) for reloads, (client, n) for scales, clients for stop / upgrade.
        self.control: Any = None
        self._reload_waiters: list[tuple[int, int]] = []
        self._scale_waiters: list[tuple[int, int]] = []
        self._stop_waiters: list[int] = []
        self._upgrade_waiters: list[int] = []
        self._check_pid: int | None = None  # the pre-exec check process
        self.resumed_from: dict[str, Any] | None = None  # the handover this image started from
        self._wakeup_r: socket.socket | None = None
        self._wakeup_w: socket.socket | None = None
        self._life_r: int | None = None
        self._life_w: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._pid_file_written = False
        self._pending: _PendingConfig | None = None  # read on SIGHUP, applied when the reload starts
        self._backup: _PendingConfig | None = None  # what a rolled-back reload restores

    # ------------------------------------------------------------ entry

    def run(self) -> int:
        """Run until the policy says exit; returns the exit code.

        A master started by its previous image's ``exec`` (``FASTGATE_HANDOVER`` names this
        pid) adopts that image's sockets and workers instead of binding and starting anew.
        """
        state = handover.take()
        if state is None:
            try:
                check_tls(self.config)
            except ConfigError as exc:
                print(f"fastgate: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            try:
                self.listeners = bind_all(self.config, per_slot=True)
            except BindError as exc:
                print(f"fastgate: error: {exc}", file=sys.stderr)
                return EXIT_BOOT_FAILED
        try:
            settings: PolicySettings | None = None
            if state is not None:
                settings = self._adopt(state)
            process = self.config.process
            if process.metrics_bind is not None or process.control_socket is not None:
                error = self._start_metrics(state)
                if error is None and process.control_socket is not None:
                    error = self._start_control(process.control_socket)
                if error is not None:
                    print(f"fastgate: error: {error}", file=sys.stderr)
                    return EXIT_BOOT_FAILED
            # Handlers first: a script that sees "Listening" may signal us at once.
            self._setup_signals()
            self._write_pid_file()  # before the "Listening" lines, which tell a waiting script we are up
            if state is None:
                for listener in self.listeners:
                    logger.info("Listening on %s (pid %d)", self._describe(listener), self.pid)
                self._life_r, self._life_w = os.pipe()
            if self.reload_fd is not None:
                os.set_blocking(self.reload_fd, False)
                self.selector.register(self.reload_fd, selectors.EVENT_READ, _RELOAD)
            target = self._pending.config if self._pending is not None else self.config
            app_error = self._preload(target) if target.app.preload else None
            if state is None:
                self._feed(Start(app_error))
            else:
                if app_error is not None:
                    self._discard_pending()
                elif self.policy.phase is Phase.BROKEN:
                    # Nothing to roll back to (the app had never started): apply the new
                    # configuration now, as the first start would have.
                    self._on_reload_started()
                    self._on_reload_ended(ok=True)
                self._feed(Resumed(settings, app_error))
            while self.exit_code is None:
                self._step()
            return self.exit_code
        finally:
            self._cleanup()

    def _start_metrics(self, state: dict[str, Any] | None) -> str | None:
        """Bind the scrape endpoint; the error line if that fails."""
        from fastgate.supervisor.metrics import MetricsStore

        store = MetricsStore()
        if state is not None and isinstance(state.get("metrics"), dict):
            store.restore(state["metrics"])  # the exited workers' counts, across exec
        self.metrics_store = store
        if self.config.process.metrics_bind is None:
            return None  # the control socket's status reads the store
        try:
            from fastgate.supervisor.scrape import FastgateCollector, MetricsServer
        except ImportError as exc:
            return f"--metrics-bind needs prometheus-client (pip install 'fastgate[metrics]'): {exc}"
        address = self.config.process.metrics_bind
        try:
            server = MetricsServer(address, self.selector, FastgateCollector(store, self._metric_facts), _METRICS)
        except (OSError, ConfigError) as exc:
            return f"--metrics-bind {address}: {exc}"
        self.metrics_server = server
        logger.info("Metrics on %s", server.display)
        return None

    # ------------------------------------------------------------ control socket

    def _start_control(self, path: str) -> str | None:
        from fastgate.supervisor.control import ControlServer

        try:
            self.control = ControlServer(path, self.selector, _CONTROL, self._on_control)
        except OSError as exc:
            return f"--control-socket {path}: {exc.strerror or exc}"
        logger.info("Control socket at %s", path)
        return None

    def _on_control(self, cid: int, request: dict[str, Any]) -> dict[str, Any] | None:
        """One control command: the answer, or None when it comes with the outcome."""
        cmd = request.get("cmd")
        policy = self.policy
        now = self.clock()
        s = policy.settings
        wait_until = now + s.boot_timeout + s.graceful_timeout + CONTROL_MARGIN
        if cmd == "status":
            return self._status()
        if policy.phase in (Phase.STOPPING, Phase.EXITED):
            return {"ok": False, "error": "the server is stopping"}
        if cmd == "reload":
            self._reload_waiters.append((cid, policy.generation))
            self.control.wait(cid, wait_until)
            self._on_signal(signal.SIGHUP)
            return None
        if cmd == "scale":
            n = request.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                return {"ok": False, "error": "scale needs a worker count >= 1"}
            self._scale_waiters.append((cid, n))
            self.control.wait(cid, wait_until)
            sig = signal.SIGTTIN if n > policy.target else signal.SIGTTOU
            for _ in range(abs(n - policy.target)):
                self._feed(SignalReceived(sig))
            return None
        if cmd == "stop":
            self._stop_waiters.append(cid)
            self.control.wait(cid, now + s.graceful_timeout + CONTROL_MARGIN)
            self._feed(SignalReceived(signal.SIGTERM))
            return None
        if cmd == "upgrade":
            self._upgrade_waiters.append(cid)
            self.control.wait(cid, wait_until)
            self._feed(SignalReceived(signal.SIGUSR2))
            return None
        return {"ok": False, "error": f"unknown command {cmd!r} (status, reload, scale, stop, upgrade)"}

    def _status(self) -> dict[str, Any]:
        policy = self.policy
        now = self.clock()
        live = self.metrics_store.live if self.metrics_store is not None else {}
        workers = []
        for w in sorted(policy.workers.values(), key=lambda w: (w.slot, w.generation)):
            snap = live.get(w.wid, {})
            workers.append({
                "pid": w.pid, "slot": w.slot, "generation": w.generation, "state": w.state.value,
                "uptime": round(now - w.started_at, 3),
                "requests": snap.get("n"),
                "connections": (int(snap.get("h", 0)) + int(snap.get("w", 0))) if snap else None,
                "rss": read_rss(w.pid) if w.pid is not None else None,
                "heartbeat_age": round(now - w.last_seen, 3),
            })
        return {"ok": True, "master": self.pid, "phase": policy.phase.value, "generation": policy.generation,
                "target": policy.target, "workers": workers}

    def _check_control_waiters(self) -> None:
        """Answer the scales that are done and the upgrades the policy gave up."""
        policy = self.policy
        if self._scale_waiters:
            workers = list(policy.workers.values())
            settled = all(w.state is WorkerState.READY for w in workers)
            waiting = []
            for cid, n in self._scale_waiters:
                if settled and len(workers) == n and policy.target == n:
                    self.control.answer(cid, {"ok": True, "verdict": f"{n} worker(s) ready", "workers": n})
                else:
                    waiting.append((cid, n))
            self._scale_waiters = waiting
        if self._upgrade_waiters and policy.upgrade is None and policy.upgrade_queued is None:
            for cid in self._upgrade_waiters:
                self.control.answer(cid, {"ok": False, "verdict": "upgrade aborted (the log says why); "
                                                                  "the running master keeps serving"})
            self._upgrade_waiters = []

    def _answer_reloads(self, generation: int, ok: bool, reason: str) -> None:
        if self.control is None:
            return
        waiting = []
        for cid, before in self._reload_waiters:
            if generation > before:
                reply = ({"ok": True, "verdict": "replaced", "generation": generation} if ok
                         else {"ok": False, "verdict": "rolled back", "reason": reason, "generation": generation})
                self.control.answer(cid, reply)
            else:
                waiting.append((cid, before))
        self._reload_waiters = waiting

    def _metric_facts(self) -> tuple[list[Any], int, dict[str, int]]:
        from fastgate.supervisor.metrics import WorkerView

        policy = self.policy
        workers = [WorkerView(w.wid, w.pid, w.slot, w.generation) for w in policy.workers.values()]
        return workers, policy.generation, {**policy.restarts, **policy.recycled}

    def _preload(self, config: Config) -> str | None:
        """``--preload``: import the app now, before any fork; the error line if it fails."""
        try:
            app = preload_app(config)
        except AppLoadError as exc:
            report_app_load_error(exc)
            return str(exc)
        except Exception as exc:  # fastgate's own worker code did not import (a broken upgrade)
            traceback.print_exc()
            print(f"fastgate: error: could not import fastgate's worker code: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return f"{type(exc).__name__}: {exc}"
        self.app = app
        threads = threading.active_count()
        if threads > 1:
            logger.warning("--preload: importing the app started %d thread(s) in the master; the workers are forked "
                           "without them (a fork copies only the calling thread): start threads, pools and "
                           "connections in the lifespan instead", threads - 1)
        # Everything imported so far goes to the permanent generation: the cyclic GC of a
        # worker never walks it, so it never writes to (and copies) those pages.
        # benchmarks/PRELOAD.md has the figures.
        gc.freeze()
        return None

    # ------------------------------------------------------------ the loop

    def _step(self) -> None:
        deadline = self.policy.next_deadline()
        timeout = MAX_SLEEP if deadline is None else min(MAX_SLEEP, max(0.0, deadline - self.clock()))
        signals: list[int] = []
        reload_requested = False
        for key, _ in self.selector.select(timeout):
            if key.data == _WAKEUP:
                signals.extend(self._drain_wakeup())
            elif key.data == _RELOAD:
                reload_requested |= self._read_reload_source()
            elif key.data == _METRICS:
                self.metrics_server.on_ready(key.fd, self.clock())
            elif key.data == _CONTROL:
                self.control.on_ready(key.fd, self.clock())
            else:
                self._read_pipe(key.data)
        for pid, code in self.spawner.reap():
            wid = self.pid_to_wid.pop(pid, None)
            if wid is None:
                if pid == self._check_pid:
                    self._check_pid = None
                    self._feed(UpgradeChecked(code == 0, f"the check process exited with {_how(code)}"))
                    continue
                logger.debug("Reaped unknown child %d (exit %d)", pid, code)
                continue
            self.wid_to_pid.pop(wid, None)
            self._read_pipe(wid)  # a READY/DRAINING (and its last METRICS) written just before exiting
            self._close_pipe(wid)
            self.decoders.pop(wid, None)
            if self.metrics_store is not None:
                self.metrics_store.retire(wid)
            self._feed(ChildExited(wid, code))
        if reload_requested:
            signals.append(signal.SIGHUP)
        # In arrival order. Repeated SIGCHLD/SIGHUP mean the same as one; repeated
        # SIGTTIN/SIGTTOU/SIGINT each count.
        seen: set[int] = set()
        for sig in signals:
            if sig in (signal.SIGCHLD, signal.SIGHUP):
                if sig in seen:
                    continue
                seen.add(sig)
            self._on_signal(sig)
        if self.metrics_server is not None:
            self.metrics_server.expire(self.clock())
        self._feed(Tick())
        if self.control is not None:
            self._check_control_waiters()
            self.control.expire(self.clock())

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return  # reaping happens on every iteration
        if sig == signal.SIGHUP:
            if self.policy.phase not in (Phase.STOPPING, Phase.EXITED):  # no config reading while stopping
                settings = self._reload_config()
                if self._tls_reload_refused():
                    return
                self._feed(ReloadRequested(settings))
            return
        if sig == signal.SIGUSR1:
            logs.reopen_files()
        self._feed(SignalReceived(sig))

    def _reload_config(self) -> PolicySettings | None:
        """Re-read the configuration for SIGHUP; on error keep the current one.

        The new configuration (and any newly bound listeners) wait in ``_pending`` until
        the policy actually starts the reload (``ReloadStarted``), and are rolled back if
        the new generation fails (``ReloadEnded(ok=False)``).
        """
        if self.reread is None:
            return None
        try:
            new = self.reread()
        except ConfigError as exc:
            logger.error("Reload: invalid configuration ignored, keeping the current one: %s", exc)
            return None
        except SystemExit:
            logger.error("Reload: invalid configuration ignored, keeping the current one")
            return None
        self._discard_pending()
        listeners: list[Listener] | None = None
        if new.listeners_changed(self.config):
            try:
                listeners, _ = rebind(new, self.listeners)
            except BindError as exc:
                logger.error("Reload: %s; configuration ignored, keeping the current one", exc)
                return None
        self._pending = _PendingConfig(new, listeners)
        return policy_settings(new)

    def _tls_reload_refused(self) -> bool:
        """Re-check the certificate files (renewed, perhaps) the new generation will load.

        A pair that does not load now would fail every new worker: the reload is not
        started and the running workers keep serving with the certificate they loaded.
        """
        target = self._pending.config if self._pending is not None else self.config
        try:
            check_tls(target)
        except ConfigError as exc:
            logger.error("Reload refused, the workers keep serving with the certificate they loaded: %s", exc)
            self._discard_pending()
            return True
        return False

    def _tls_flags(self) -> list[bool]:
        """For each current listener, whether it serves TLS under the current config."""
        return listeners_tls(self.config, [listener.key for listener in self.listeners])

    def _describe(self, listener: Listener) -> str:
        flags = self._tls_flags()
        index = next(i for i, current in enumerate(self.listeners) if current is listener)
        return listener.describe(flags[index])

    def _discard_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.listeners is not None:
            for listener in pending.listeners:
                if all(listener is not current for current in self.listeners):
                    listener.close()

    def _on_reload_started(self) -> None:
        pending, self._pending = self._pending, None
        self._backup = _PendingConfig(self.config, self.listeners)
        if pending is None:
            return
        if pending.config.log != self.config.log:
            logs.configure(pending.config.log)
        self.config = pending.config
        if pending.listeners is not None:
            old_listeners, self.listeners = self.listeners, pending.listeners
            for listener in pending.listeners:
                if all(listener is not old for old in old_listeners):
                    logger.info("Listening on %s (pid %d)", self._describe(listener), self.pid)

    def _on_reload_ended(self, ok: bool) -> None:
        backup, self._backup = self._backup, None
        if backup is None or backup.listeners is None:
            return
        keep, drop = (self.listeners, backup.listeners) if ok else (backup.listeners, self.listeners)
        for listener in drop:
            if all(listener is not k for k in keep):
                # Workers that still use it hold their own copies until they exit.
                listener.close()
        if not ok:
            if backup.config.log != self.config.log:
                logs.configure(backup.config.log)
            self.config = backup.config
            self.listeners = backup.listeners

    def _feed(self, event: Event) -> None:
        queue: list[Action] = self.policy.handle(event, self.clock())
        while queue:
            action = queue.pop(0)
            queue.extend(self._execute(action))

    def _execute(self, action: Action) -> list[Action]:
        if isinstance(action, Spawn):
            return self._spawn(action)
        if isinstance(action, SendSignal):
            self.spawner.send_signal(action.pid, action.signum, action.group)
        elif isinstance(action, Notify):
            notify.sd_notify(action.state)
        elif isinstance(action, CloseListeners):
            for listener in self.listeners:
                listener.close()
        elif isinstance(action, ReloadStarted):
            self._on_reload_started()
        elif isinstance(action, ReloadEnded):
            self._on_reload_ended(action.ok)
            self._answer_reloads(action.generation, action.ok, action.reason)
        elif isinstance(action, ReleaseSlot):
            for listener in self.listeners:
                listener.release(action.slot)
        elif isinstance(action, CheckUpgrade):
            return self._start_check()
        elif isinstance(action, StopUpgradeCheck):
            if self._check_pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(self._check_pid, signal.SIGKILL)
                self._check_pid = None  # reaped as an unknown child
        elif isinstance(action, ReExec):
            return self._reexec(action.reason)
        elif isinstance(action, Exit):
            self.exit_code = action.code
        return []

    def _spawn(self, action: Spawn) -> list[Action]:
        for listener in self.listeners:
            listener.socket_for(action.slot)  # bind the slot's sockets before forking
        try:
            handle = self.spawner.spawn(action.slot, action.generation)
        except OSError as exc:
            return self.policy.handle(SpawnFailed(action.wid, str(exc)), self.clock())
        os.set_blocking(handle.fd, False)  # the loop must never block on one worker
        self.pid_to_wid[handle.pid] = action.wid
        self.wid_to_pid[action.wid] = handle.pid
        self.wid_to_fd[action.wid] = handle.fd
        self.selector.register(handle.fd, selectors.EVENT_READ, action.wid)
        return self.policy.handle(Spawned(action.wid, handle.pid), self.clock())

    # ------------------------------------------------------------ re-exec in place

    def _inherited_fds(self) -> list[int]:
        """Every fd the next image adopts (see ``fastgate/handover.py``)."""
        fds = [sock.fileno() for listener in self.listeners for sock in listener.all_sockets()]
        fds += [fd for fd in (self._life_r, self._life_w, self.reload_fd) if fd is not None]
        fds += list(self.wid_to_fd.values())
        return fds

    def _start_check(self) -> list[Action]:
        listeners = [sock.fileno() for listener in self.listeners for sock in listener.all_sockets()]
        try:
            self._check_pid = self.executor.start_check(listeners)
        except OSError as exc:
            return self.policy.handle(UpgradeChecked(False, f"cannot start the check: {exc}"), self.clock())
        return []

    def _handover_state(self, reason: str) -> dict[str, Any]:
        watcher = None
        if self.reload_fd is not None:
            watcher_pid = getattr(self.reload_source, "pid", None)
            watcher = {"pid": watcher_pid, "fd": self.reload_fd}
        return {
            "reason": reason,
            "config": self.config.flat(),
            "listeners": [
                {
                    "kind": listener.kind,
                    "key": list(listener.key) if listener.key is not None else None,
                    "unix_path": listener.unix_path,
                    "per_slot": listener.per_slot,
                    "backlog": listener.backlog,
                    "fd": listener.sock.fileno(),
                    "slots": [[slot, sock.fileno()] for slot, sock in listener.slot_socks.items()],
                }
                for listener in self.listeners
            ],
            "life": [self._life_r, self._life_w],
            "pipes": [[wid, fd] for wid, fd in self.wid_to_fd.items()],
            "pid_file": self._pid_file_written,
            "watcher": watcher,
            "policy": self.policy.snapshot(),
            "metrics": self.metrics_store.to_json() if self.metrics_store is not None else None,
        }

    def _reexec(self, reason: str) -> list[Action]:
        """Replace this image with the installed code: same pid, same sockets, same workers.

        Returns only if ``exec`` failed (the policy then rolls back); on success the new
        image carries on (``run`` with a handover).
        """
        self._discard_pending()  # the new image reads the configuration itself
        if self.control is not None:
            # The control socket does not cross exec (the new image binds it again): answer now.
            verdict = {"ok": True, "verdict": f"re-executing the master in place ({reason}); the new image "
                                              "adopts the workers and reloads them"}
            for cid in [c for c, _ in self._reload_waiters] + self._upgrade_waiters:
                self.control.answer_now(cid, verdict)
            self._reload_waiters, self._upgrade_waiters = [], []
        env = dict(os.environ)
        env[handover.ENV] = handover.encode(self._handover_state(reason))
        fds = self._inherited_fds()
        logger.info("Re-executing the master in place (pid %d): %d worker(s) and %d listener(s) handed over",
                    self.pid, len(self.wid_to_fd), len(self.listeners))
        for handler in logging.getLogger("fastgate").handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked, signals wait for the new image's handlers instead of killing the process
        # (the default action) or vanishing between exec and the new set_wakeup_fd.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        was_inheritable = {fd: os.get_inheritable(fd) for fd in fds}
        try:
            for fd in fds:
                os.set_inheritable(fd, True)
            self.executor.exec(env)
        except OSError as exc:
            for fd, inheritable in was_inheritable.items():
                os.set_inheritable(fd, inheritable)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            return self.policy.handle(UpgradeFailed(str(exc)), self.clock())

    def _adopt(self, state: dict[str, Any]) -> PolicySettings | None:
        """Take over what the previous image handed over; the settings the new config asks for.

        The previous image's configuration stays current and the one this image read is
        *pending*, exactly as after a SIGHUP's re-read: the reload that ``Resumed`` starts
        applies it, and a failed reload restores the previous one.
        """
        self.resumed_from = state
        for raw in state["listeners"]:
            key = raw["key"]
            if key is not None:
                kind, value = key
                key = (kind, tuple(value) if isinstance(value, list) else value)
            listener = Listener(from_fd(raw["fd"]), raw["kind"], unix_path=raw["unix_path"], key=key,
                                per_slot=raw["per_slot"], backlog=raw["backlog"])
            for slot, fd in raw["slots"]:
                listener.slot_socks[int(slot)] = from_fd(fd)
            self.listeners.append(listener)
        self._life_r, self._life_w = state["life"]
        for fd in (self._life_r, self._life_w):
            os.set_inheritable(fd, False)
        self._pid_file_written = bool(state["pid_file"])
        self.policy = Supervisor.restore(state["policy"])
        for w in self.policy.workers.values():
            if w.pid is not None:
                self.pid_to_wid[w.pid] = w.wid
                self.wid_to_pid[w.wid] = w.pid
        for wid, fd in state["pipes"]:
            os.set_inheritable(fd, False)
            os.set_blocking(fd, False)
            self.wid_to_fd[wid] = fd
            self.selector.register(fd, selectors.EVENT_READ, wid)
        watcher = state.get("watcher")
        if watcher is not None and watcher["fd"] != self.reload_fd:
            # --reload was switched off: the watcher the previous image started goes.
            os.close(watcher["fd"])
            if watcher["pid"]:
                with contextlib.suppress(OSError):
                    os.kill(watcher["pid"], signal.SIGKILL)
        logger.info("fastgate %s re-executed in place (pid %d, %s; was %s): %d worker(s) adopted",
                    handover.running_version(), self.pid, state.get("reason", "?"), state.get("fastgate", "?"),
                    len(self.policy.workers))
        new = self.config
        try:
            old = handover.config_from(state)
        except ConfigError:
            old = new
        self.config = old
        try:
            check_tls(new)
        except ConfigError as exc:
            logger.error("Reload: %s; configuration ignored, keeping the current one", exc)
            return None
        listeners: list[Listener] | None = None
        if new.listeners_changed(old):
            try:
                listeners, _ = rebind(new, self.listeners)
            except BindError as exc:
                logger.error("Reload: %s; configuration ignored, keeping the current one", exc)
                return None
        if new != old or listeners is not None:
            self._pending = _PendingConfig(new, listeners)
        return policy_settings(new)

    # ------------------------------------------------------------ fds

    def _drain_wakeup(self) -> list[int]:
        assert self._wakeup_r is not None
        out: list[int] = []
        while True:
            try:
                data = self._wakeup_r.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            out.extend(data)
        return out

    def _read_reload_source(self) -> bool:
        assert self.reload_fd is not None
        read_requests = getattr(self.reload_source, "read_requests", None)
        if read_requests is not None:
            requested = bool(read_requests())
            if not getattr(self.reload_source, "closed", False):
                return requested
            data = b""
        else:
            try:
                data = os.read(self.reload_fd, 4096)
            except BlockingIOError:
                return False
        if not data:
            logger.warning("The reload watcher went away; file changes no longer reload")
            self.selector.unregister(self.reload_fd)
            self.reload_fd = None
            return False
        return True

    def _read_pipe(self, wid: int) -> None:
        fd = self.wid_to_fd.get(wid)
        if fd is None:
            return
        decoder = self.decoders.get(wid)
        if decoder is None:
            decoder = self.decoders[wid] = Decoder()
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_pipe(wid)  # the worker closed it; its exit comes through SIGCHLD
                return
            for kind, payload in decoder.feed(data):
                if kind == BEAT:
                    rss: int | None = None
                    if self.policy.settings.max_memory is not None:
                        pid = self.wid_to_pid.get(wid)
                        rss = read_rss(pid) if pid is not None else None
                    self._feed(WorkerBeat(wid, rss))
                elif kind == READY:
                    self._feed(WorkerReady(wid))
                elif kind == DRAINING:
                    self._feed(WorkerDraining(wid))
                elif kind == RECYCLE:
                    self._feed(WorkerRecycle(wid))
                elif kind == METRICS and self.metrics_store is not None:
                    self.metrics_store.update(wid, payload)

    def _close_pipe(self, wid: int) -> None:
        fd = self.wid_to_fd.pop(wid, None)
        if fd is not None:
            self.selector.unregister(fd)
            os.close(fd)

    # ------------------------------------------------------------ setup / teardown

    def _setup_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup_r, self._wakeup_w = r, w
        self.selector.register(r, selectors.EVENT_READ, _WAKEUP)
        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, _noop)
        self._old_wakeup_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        # A previous image blocked these across exec (see _reexec): what arrived meanwhile
        # is delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _write_pid_file(self) -> None:
        path = self.config.process.pid_file
        if not path:
            return
        with open(path, "w") as f:
            f.write(f"{self.pid}\n")
        self._pid_file_written = True

    def _cleanup(self) -> None:
        if self._wakeup_w is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
        self._discard_pending()
        if self.control is not None:
            code = self.exit_code if self.exit_code is not None else 0
            for cid in self._stop_waiters:
                self.control.answer_now(cid, {"ok": True, "verdict": "stopped", "exit_code": code})
            self.control.close()
            self.control = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        for listener in self.listeners + (self._backup.listeners or [] if self._backup else []):
            listener.close()
        for wid in list(self.wid_to_fd):
            self._close_pipe(wid)
        self.selector.close()
        for sock in (self._wakeup_r, self._wakeup_w):
            if sock is not None:
                sock.close()
        for fd in (self._life_r, self._life_w):
            if fd is not None:
                os.close(fd)
        self._life_r = self._life_w = None
        path = self.config.process.pid_file
        if self._pid_file_written and path:
            with contextlib.suppress(OSError):
                with open(path) as f:
                    if f.read().strip() == str(self.pid):
                        os.unlink(path)

    # ------------------------------------------------------------ in the child

    def _child_main(self, slot: int, generation: int, report_fd: int) -> int:  # pragma: no cover - child
        """Right after fork: drop everything the master owns, then become a worker."""
        signal.set_wakeup_fd(-1)
        # Not the servers' close(): that would unlink socket files the master still serves.
        for server in (self.metrics_server, self.control):
            if server is not None:
                for client in server.clients.values():
                    client.sock.close()
                server.sock.close()
        self.selector.close()
        for sock in (self._wakeup_r, self._wakeup_w):
            if sock is not None:
                sock.close()
        for fd in self.wid_to_fd.values():
            os.close(fd)
        if self.reload_fd is not None:
            os.close(self.reload_fd)
        if self._life_w is not None:
            os.close(self._life_w)
        mine = [listener.socket_for(slot) for listener in self.listeners]
        keep = {id(s) for s in mine}
        for listener in self.listeners:
            for sock in listener.all_sockets():
                if id(sock) not in keep:
                    sock.close()
        assert self._life_r is not None
        tls = self._tls_flags()
        return become_worker(self.config, mine, report_fd=report_fd, parent_fd=self._life_r, master_pid=self.pid,
                             app=self.app, tls=tls)


@dataclass(slots=True)
class _PendingConfig:
    config: Config
    listeners: list[Listener] | None  # None: the listeners do not change


def _noop(signum: int, frame: object) -> None:
    """The C handler already wrote the signal number to the wakeup socket."""


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"
