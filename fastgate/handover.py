"""What a master hands to its next image when it re-executes itself in place.

Why
---
With ``--preload`` the master holds the app, so a reload cannot fork new workers from it:
they would run the old code. And after ``pip install -U fastgate`` nothing short of a new
process image runs the new fastgate. So the master ``exec``s itself (SIGUSR2; SIGHUP and
``--reload`` when preloading): the pid stays (systemd's MAINPID, a container's PID 1, the
pid file), the listening sockets stay open (no connection refused), and the workers, which
are children of that pid, stay too: the new image adopts them as the old generation and
brings up a new one, readiness-gated, as a SIGHUP does.

What crosses ``exec``
---------------------
File descriptors survive ``exec`` unless marked close-on-exec, which Python does for every
fd it opens (PEP 446). Just before ``exec`` the master clears the flag on exactly these:

* every listening socket, with its per-slot ``SO_REUSEPORT`` siblings;
* the life pipe, both ends: the workers hold the read end and drain when it reads EOF, so
  the write end must survive for them to keep serving;
* the read end of every worker's report pipe (READY / BEAT / DRAINING / RECYCLE): the old
  workers keep writing to it, and what they write meanwhile waits in the pipe;
* under ``--reload``, the read end of the file watcher's pipe (the watcher child survives).

Everything else (the signal wakeup socket, the selector, log files) closes and the new
image makes its own. Signals the master handles are blocked across ``exec`` (the mask and
pending signals survive it) and unblocked once the new image has installed its handlers,
so a SIGTERM or SIGCHLD arriving in between is delayed, never lost or fatal.

The rest travels as JSON in one environment variable, ``FASTGATE_HANDOVER``::

    {"version": 1,
     "pid": 4321,                  # only this process adopts it (as systemd's LISTEN_PID)
     "fastgate": "0.1.0",          # version of the image that wrote it (for the log)
     "config": {...},              # the running configuration, as Config.flat(): kept when
                                   # the new image finds the configuration invalid
     "listeners": [{"kind": "tcp", "key": ["tcp", ["127.0.0.1", 8000]], "unix_path": null,
                    "per_slot": true, "backlog": 2048, "fd": 5, "slots": [[1, 9], [2, 10]]}],
     "life": [6, 7],               # the life pipe (read end, write end)
     "pipes": [[3, 11], [4, 12]],  # [worker id, read end of its report pipe]
     "pid_file": true,             # this master wrote --pid
     "watcher": {"pid": 4400, "fd": 13},    # --reload only, else null
     "policy": {...}}              # Supervisor.snapshot(): workers (pid, slot, generation,
                                   # state, deadlines), generation, target, backoffs, ...

Times in the snapshot are ``time.monotonic()`` values: the clock is system-wide, so they
mean the same in the new image. The variable is removed from the environment as soon as
it is read (``take``), so neither workers nor the app's own children see it.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from typing import Any

from fastgate import __version__
from fastgate.config import LIST, OPTIONS, Config, build

ENV = "FASTGATE_HANDOVER"
VERSION = 1  # of this format; bump it when it (or Supervisor.snapshot()) changes shape


def running_version() -> str:
    """The version of the fastgate code this image runs."""
    return __version__


def encode(state: dict[str, Any]) -> str:
    """The JSON text for ``ENV`` (adds the format version, this process's pid and fastgate's version)."""
    return json.dumps({"version": VERSION, "pid": os.getpid(), "fastgate": __version__, **state},
                      separators=(",", ":"))


def peek(environ: MutableMapping[str, str] | None = None) -> dict[str, Any] | None:
    """The state handed over to this process, or None (absent, another pid's, or unreadable)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("version") != VERSION or state.get("pid") != os.getpid():
        return None
    return state


def take(environ: MutableMapping[str, str] | None = None) -> dict[str, Any] | None:
    """Like ``peek``, and remove the variable so that no child inherits it."""
    env = os.environ if environ is None else environ
    state = peek(env)
    env.pop(ENV, None)
    return state


def config_from(state: dict[str, Any]) -> Config:
    """The configuration the previous image was running.

    Raises:
        ConfigError: it does not validate any more (a newer fastgate changed a rule).
    """
    values: dict[str, Any] = {}
    for name, value in state["config"].items():
        spec = OPTIONS.get(name)
        if spec is None:
            continue  # an option this version does not know
        values[name] = tuple(value) if spec.kind == LIST and value is not None else value
    return build(values)
