"""fastgate as PID 1 in its own PID namespace, started with the Deployment's own args.

This is what a container runtime does: the image's ENTRYPOINT becomes PID 1. PID 1 is
special: the kernel delivers a signal from outside the namespace only if PID 1 installed a
handler for it, and orphans are re-parented to it. The test sends SIGTERM from outside,
like the kubelet (through the runtime) does, and checks the Kubernetes shutdown sequence:
readiness 503 while still serving (--shutdown-delay), in-flight request completed, exit 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.helpers import DEPLOY, fastgate_config, render
from tests.server import CommandProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _deployment_args() -> list[str]:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def _local_args() -> list[str]:
    """The shipped args with the app swapped for a test app and an ephemeral loopback port."""
    text = "\n".join(_deployment_args())
    text = render(text, {"myapp.main:app": "tests.deploy.apps:app", "\n0.0.0.0\n": "\n127.0.0.1\n",
                         "--port\n8000": "--port\n0"})
    return text.split("\n")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_sigterm_to_pid1_flips_readiness_finishes_in_flight_and_exits_0() -> None:
    assert shutil.which("unshare"), "util-linux unshare is required (installed by .ci/run)"
    args = _local_args()
    delay = fastgate_config(args).process.shutdown_delay
    assert delay > 0
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
               sys.executable, "-m", "fastgate", *args]
    server = CommandProcess(command, timeout=30)
    with server:
        base = server.url
        # A worker answers; its parent, the master, is PID 1 of the namespace.
        assert httpx.get(base + "/pid", timeout=10).json()["ppid"] == 1, "fastgate's master is not PID 1"
        assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        # unshare's one child is the namespace's PID 1; signal it from outside, as the
        # container runtime does.
        pid1 = wait_for(lambda: _children(server.pid), timeout=10, what="unshare's child")[0]  # type: ignore[index]

        result: dict[str, object] = {}

        def in_flight() -> None:
            # Longer than the shutdown delay: still running when the listener closes.
            try:
                response = httpx.get(base + f"/slow?delay={delay + 2}&key=pid1", timeout=60)
                result["status"], result["body"] = response.status_code, response.text
            except Exception as exc:
                result["error"] = repr(exc)

        thread = threading.Thread(target=in_flight)
        thread.start()
        server.wait_line("in flight pid1", timeout=20)
        os.kill(pid1, signal.SIGTERM)

        # During the delay: readiness says "take me out", liveness still says "alive",
        # and new requests are still served (endpoints may not have caught up yet).
        wait_for(lambda: httpx.get(base + "/readyz", timeout=5).status_code == 503, timeout=delay,
                 interval=0.1, what="readiness 503 after SIGTERM")
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        assert httpx.get(base + "/", timeout=5).status_code == 200

        thread.join(delay + 40)
        assert not thread.is_alive()
        assert result == {"status": 200, "body": "slow done"}, result
        assert server.wait(60) == 0, server.output
