"""What a fastgate process imports at start-up: the modules only some configurations need
are imported when one does, so the master and every worker start faster (and smaller).

Each check runs a fresh interpreter (``sys.modules`` of this one holds whatever other tests
imported) and asserts on the modules it loaded: the master's path through the CLI, and the
worker's entry point, which a forked worker imports after the fork.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastgate.errors import ConfigError
from tests.server import ROOT

# The master's imports on every start: parse the command line, build the Master (binding
# nothing). What was loaded before (the interpreter's start-up, and coverage's tracer under
# `make test`, which reads its own TOML configuration) is left out.
MASTER = """
import json, sys
before = set(sys.modules)
from fastgate.cli import parse_args
from fastgate.supervisor.master import Master
config, _ = parse_args(sys.argv[1:])
Master(config)
print(json.dumps({"workers": config.process.workers, "modules": sorted(set(sys.modules) - before)}))
"""

# What a worker imports after the fork (the master has imported the lines above).
WORKER = """
import json, sys
import fastgate.cli, fastgate.supervisor.master
before = set(sys.modules)
import fastgate.worker.server
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def probe(code: str, *args: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         timeout=60, check=True, cwd=ROOT).stdout
    return json.loads(out.splitlines()[-1])


def test_a_plain_master_imports_no_ssl_toml_or_worker_code() -> None:
    modules = set(probe(MASTER, "tests.apps:app", "--port", "0")["modules"])
    assert "fastgate.supervisor.master" in modules  # the probe ran what it says
    # ssl: only with TLS; tomllib: only with --config; difflib: only for a mistyped option;
    # the worker's code (and uvloop, asyncio, websockets): only in the forked worker.
    for name in ("ssl", "tomllib", "difflib", "fastgate.worker.server", "uvloop", "asyncio", "websockets"):
        assert name not in modules, name


def test_a_master_with_a_config_file_still_reads_it(tmp_path: Path) -> None:
    config = tmp_path / "fastgate.toml"
    config.write_text("workers = 3\n")
    # tomllib, imported where the file is read, in a process that had not loaded it for that.
    assert probe(MASTER, "tests.apps:app", "--config", str(config))["workers"] == 3


def test_the_masters_tls_check_still_runs_when_tls_is_configured(tmp_path: Path) -> None:
    from fastgate import config
    from fastgate.supervisor.master import check_tls

    check_tls(config.build({"app": "tests.apps:app"}))  # no TLS: nothing to check
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="--ssl-certfile: cannot read"):
        check_tls(config.build({"app": "tests.apps:app", "ssl_certfile": missing, "ssl_keyfile": missing}))


def test_a_worker_imports_websockets_only_on_the_first_upgrade() -> None:
    modules = set(probe(WORKER))
    assert "fastgate.worker.protocol" in modules and "uvloop" in modules  # the worker's code came in
    for name in ("websockets", "fastgate.worker.websocket", "fastgate.ws.session", "email", "platform"):
        assert name not in modules, name
