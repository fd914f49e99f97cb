"""The master process: one thread, no event loop, no app import.

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

1. reads the worker pipes (READY / BEAT / DRAINING),
2. reaps every exited child with ``waitpid(-1, WNOHANG)``; unknown pids (orphans adopted
   when the master is PID 1) are reaped and logged at debug level,
3. turns the signals into events (SIGHUP first re-reads the configuration),
4. sends a ``Tick``,

feeding each event to the ``Supervisor`` policy and executing the actions it returns. The
master never decides anything itself; ``policy.py`` does.

Every worker also inherits the read end of a *life pipe* whose write end only the master
holds: when the master dies, even by SIGKILL, the pipe reads EOF in every worker and they
drain and exit (no orphans).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastgate import logs, notify
from fastgate.config import Config
from fastgate.errors import EXIT_BOOT_FAILED, BindError, ConfigError
from fastgate.ipc import BEAT, DRAINING, READY, decode
from fastgate.supervisor.policy import (
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
from fastgate.supervisor.sockets import Listener, bind_all, rebind
from fastgate.supervisor.spawner import ForkSpawner, Spawner, become_worker

logger = logging.getLogger("fastgate.error")

HANDLED_SIGNALS = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGCHLD,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1,
)
MAX_SLEEP = 1.0  # wake at least this often, so a lost wake-up can never stall the master

_WAKEUP = "wakeup"
_RELOAD = "reload"


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
    )


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
        clock: monotonic time source.
    """

    def __init__(
        self,
        config: Config,
        *,
        reread: Callable[[], Config] | None = None,
        reload_source: Any = None,
        spawner: Spawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.reread = reread
        self.reload_fd: int | None = None
        self.reload_source = reload_source
        if reload_source is not None:
            self.reload_fd = reload_source if isinstance(reload_source, int) else reload_source.fileno()
        self.spawner: Spawner = spawner if spawner is not None else ForkSpawner(self._child_main, block=HANDLED_SIGNALS)
        self.clock = clock
        self.policy = Supervisor(policy_settings(config))
        self.listeners: list[Listener] = []
        self.selector = selectors.DefaultSelector()
        self.pid = os.getpid()
        self.exit_code: int | None = None
        self.pid_to_wid: dict[int, int] = {}
        self.wid_to_fd: dict[int, int] = {}
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
        """Run until the policy says exit; returns the exit code."""
        try:
            self.listeners = bind_all(self.config, per_slot=True)
        except BindError as exc:
            print(f"fastgate: error: {exc}", file=sys.stderr)
            return EXIT_BOOT_FAILED
        try:
            # Handlers first: a script that sees "Listening" may signal us at once.
            self._setup_signals()
            self._write_pid_file()  # before the "Listening" lines, which tell a waiting script we are up
            for listener in self.listeners:
                logger.info("Listening on %s (pid %d)", listener.display, self.pid)
            self._life_r, self._life_w = os.pipe()
            if self.reload_fd is not None:
                os.set_blocking(self.reload_fd, False)
                self.selector.register(self.reload_fd, selectors.EVENT_READ, _RELOAD)
            self._feed(Start())
            while self.exit_code is None:
                self._step()
            return self.exit_code
        finally:
            self._cleanup()

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
            else:
                self._read_pipe(key.data)
        for pid, code in self.spawner.reap():
            wid = self.pid_to_wid.pop(pid, None)
            if wid is None:
                logger.debug("Reaped unknown child %d (exit %d)", pid, code)
                continue
            self._read_pipe(wid)  # a READY/DRAINING written just before exiting
            self._close_pipe(wid)
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
        self._feed(Tick())

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return  # reaping happens on every iteration
        if sig == signal.SIGHUP:
            if self.policy.phase not in (Phase.STOPPING, Phase.EXITED):  # no config reading while stopping
                self._feed(ReloadRequested(self._reload_config()))
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
            for listener in pending.listeners:
                if all(listener is not old for old in self.listeners):
                    logger.info("Listening on %s (pid %d)", listener.display, self.pid)
            self.listeners = pending.listeners

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
        elif isinstance(action, ReleaseSlot):
            for listener in self.listeners:
                listener.release(action.slot)
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
        self.wid_to_fd[action.wid] = handle.fd
        self.selector.register(handle.fd, selectors.EVENT_READ, action.wid)
        return self.policy.handle(Spawned(action.wid, handle.pid), self.clock())

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
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not data:
                self._close_pipe(wid)  # the worker closed it; its exit comes through SIGCHLD
                return
            for message in decode(data):
                if message == BEAT:
                    self._feed(WorkerBeat(wid))
                elif message == READY:
                    self._feed(WorkerReady(wid))
                elif message == DRAINING:
                    self._feed(WorkerDraining(wid))

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
        return become_worker(self.config, mine, report_fd=report_fd, parent_fd=self._life_r, master_pid=self.pid)


@dataclass(slots=True)
class _PendingConfig:
    config: Config
    listeners: list[Listener] | None  # None: the listeners do not change


def _noop(signum: int, frame: object) -> None:
    """The C handler already wrote the signal number to the wakeup socket."""
