"""deploy/docker/Dockerfile: its essentials, and its CMD + HEALTHCHECK run for real.

No Docker engine runs on these machines, so the image is not built. Instead the static
tests pin what makes the container behave (exec form, non-root, stop signal, health
check on fastgate's health path), and one test runs the image's command line the way the
runtime would: as PID 1 in a PID namespace, as the image's non-root uid, with the image's
environment; then it runs the HEALTHCHECK command and stops the server with the
STOPSIGNAL.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, Instruction, exec_form, fastgate_config, free_port, parse_dockerfile, render
from tests.server import ROOT, CommandProcess, wait_for

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
FINAL = max(i.stage for i in INSTRUCTIONS)
DOCKER_STOP_TIMEOUT = 10.0  # docker stop's default grace before SIGKILL


def _final(keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.keyword == keyword and i.stage == FINAL]


def _last(keyword: str) -> str:
    found = _final(keyword)
    assert found, f"the final stage has no {keyword}"
    return found[-1].args


def _cmd() -> list[str]:
    cmd = exec_form(_last("CMD"))
    assert cmd is not None, "CMD must be in exec form (a JSON array)"
    return cmd


def _healthcheck() -> list[str]:
    text = _last("HEALTHCHECK")
    options, _, command = text.partition("CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    argv = exec_form(command.strip())
    assert argv is not None, "HEALTHCHECK CMD must be in exec form"
    return argv


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _final("ENV"):
        for pair in shlex.split(instruction.args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _unsearchable(path: Path, uid: int, gid: int) -> Path | None:
    """The topmost directory on ``path`` that ``uid``/``gid`` (no other groups) may not search."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _expose(paths: list[Path], uid: int, gid: int, stage: Path) -> list[str]:
    """Shell commands, run as root in the test's private mount namespace, that make each of
    ``paths`` reachable for ``uid`` at its own path.

    An image installs Python where every uid may read it (/usr/local). The interpreter under
    test may live where the image's uid cannot search (pyenv under /root, mode 0700). Run as
    that uid, its dynamic loader then cannot open the shared libpython the build links: the
    process dies before Python starts, or, where the system has a libpython of the same
    version, it silently runs that one with another standard library. So the blocked
    directory is covered with an empty tmpfs (mode 0755) holding only bind mounts of what the
    server needs; nothing outside the namespace changes.
    """
    # A path inside another one comes with it.
    wanted = sorted({p for p in paths if not any(q != p and q in p.parents for q in paths)})
    blocked = {path: top for path in wanted if (top := _unsearchable(path, uid, gid)) is not None}
    q = shlex.quote
    staged = {path: stage / str(n) for n, path in enumerate(blocked)}
    for directory in staged.values():
        directory.mkdir(parents=True)
    # Stage every path before any tmpfs hides it, then put each back at its own path.
    return ([f"mount --bind {q(str(path))} {q(str(staged[path]))}" for path in blocked]
            + [f"mount -t tmpfs -o mode=0755 fastgate-test {q(str(top))}" for top in sorted(set(blocked.values()))]
            + [f"mkdir -p {q(str(path))} && mount --bind {q(str(staged[path]))} {q(str(path))}" for path in blocked])


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile("FROM a AS b\n# note\nRUN x \\\n  # inside\n  y\nFROM c\nCMD [\"z\"]\n")
    assert [(i.keyword, i.args, i.stage) for i in parsed] == [
        ("FROM", "a AS b", 0), ("RUN", "x  y", 0), ("FROM", "c", 1), ("CMD", '["z"]', 1)]


def test_slim_base_and_multi_stage_build() -> None:
    bases = [i.args for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(bases) >= 2, "build tools should stay in a build stage"
    assert "slim" in bases[-1].split()[0]


def test_runs_as_a_numeric_non_root_user() -> None:
    user = _last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert gid.isdigit() and int(gid) != 0
    # USER comes after every RUN/COPY of the final stage that needs root.
    final = [i for i in INSTRUCTIONS if i.stage == FINAL]
    user_at = max(n for n, i in enumerate(final) if i.keyword == "USER")
    assert not any(i.keyword == "RUN" for i in final[user_at:])


def test_entrypoint_and_cmd_are_exec_form_so_fastgate_is_pid1() -> None:
    assert exec_form(_last("ENTRYPOINT")) == ["fastgate"]
    cmd = _cmd()
    config = fastgate_config(cmd)  # fastgate's own parser accepts the CMD
    assert config.bind.host == "0.0.0.0"
    assert cmd[cmd.index("--workers") + 1] == "auto"


def test_stop_signal_is_sigterm_and_graceful_timeout_fits_docker_stop() -> None:
    assert _last("STOPSIGNAL") == "SIGTERM"
    config = fastgate_config(_cmd())
    assert config.process.timeout_graceful_shutdown + config.process.shutdown_delay < DOCKER_STOP_TIMEOUT


def test_healthcheck_probes_fastgates_health_path_on_the_exposed_port() -> None:
    config = fastgate_config(_cmd())
    probe = " ".join(_healthcheck())
    assert f"http://127.0.0.1:{config.bind.port}{config.http.health_path}'" in probe
    assert _last("EXPOSE").split("/")[0] == str(config.bind.port)


def test_python_environment_for_a_read_only_container() -> None:
    env = _env()
    assert env.get("PYTHONUNBUFFERED") == "1"  # logs reach `docker logs` at once
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # no __pycache__ writes on a read-only root
    assert not [i for i in INSTRUCTIONS if i.keyword == "ADD"], "COPY, not ADD (no remote fetches, no auto-extract)"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_image_command_serves_passes_its_healthcheck_and_stops_on_stopsignal(tmp_path: Path) -> None:
    config = fastgate_config(_cmd())
    port = free_port()
    # The image's CMD with the test app and a free loopback port.
    cmd = render("\n".join(_cmd()), {"myapp.main:app": "tests.deploy.apps:app", "\n0.0.0.0\n": "\n127.0.0.1\n",
                                     f"--port\n{config.bind.port}": f"--port\n{port}"}).split("\n")
    uid, _, gid = _last("USER").partition(":")
    env = {k: v for k, v in _env().items() if k != "PATH"}
    # The interpreter's installation, its venv and the checkout the server imports from.
    needed = [Path(p).resolve() for p in (sys.base_prefix, sys.prefix, ROOT)]
    prelude = _expose(needed, int(uid), int(gid), tmp_path / "stage")
    run_as_image_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                         sys.executable, "-m", "fastgate", *cmd]  # ENTRYPOINT "fastgate" + CMD
    if prelude:
        # umask 022: the directories mkdir makes on the tmpfs must be searchable by the uid.
        script = "set -e; umask 022; " + "; ".join(prelude) + '; exec "$@"'
        run_as_image_user = ["sh", "-c", script, "sh", *run_as_image_user]
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *run_as_image_user]
    with CommandProcess(command, env=env, timeout=30) as server:
        # The HEALTHCHECK command, run as Docker would (with this interpreter as "python").
        probe = [sys.executable if a == "python" else a for a in _healthcheck()]
        probe = [a.replace(f"127.0.0.1:{config.bind.port}/", f"127.0.0.1:{port}/") for a in probe]
        assert subprocess.run(probe, timeout=30).returncode == 0
        # It fails when nothing answers there: the check is not vacuous.
        dead = [a.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{free_port()}/") for a in probe]
        assert subprocess.run(dead, timeout=30, capture_output=True).returncode != 0

        status = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        pid1 = int(wait_for(lambda: status.read_text().split(), timeout=10, what="PID 1")[0])  # type: ignore[index]
        assert re.search(rf"^Uid:\s+{uid}\b", Path(f"/proc/{pid1}/status").read_text(), re.M)
        # The interpreter under test, not another libpython the loader found instead.
        maps = Path(f"/proc/{pid1}/maps").read_text().splitlines()
        libpython = {line.split()[-1] for line in maps if "/libpython" in line}
        assert all(Path(lib).is_relative_to(Path(sys.base_prefix).resolve()) for lib in libpython), libpython
        os.kill(pid1, signal.SIGTERM)  # STOPSIGNAL, as `docker stop` sends it
        assert server.wait(DOCKER_STOP_TIMEOUT) == 0, server.output
