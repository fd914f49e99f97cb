from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.server import ServerProcess


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``fastgate ARGS --port 0`` (unless a bind is given); stopped and reaped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait_listening: bool = True,
              cwd: str | None = None) -> ServerProcess:
        argv = list(args)
        if not any(a.startswith(("--port", "--uds", "--fd", "--bind")) for a in argv):
            argv += ["--port", "0"]
        server = ServerProcess(argv, env=env, wait_listening=wait_listening, cwd=cwd)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
