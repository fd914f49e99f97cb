from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.server import ServerProcess

# Hypothesis budgets for the property tests (tests/*/test_*_fuzz.py, the differential check).
# "ci" (the default) is deterministic: derandomized, so every run tries the same examples
# and a red CI is reproducible, and bounded to keep the whole fuzz set well under a minute.
# "fuzz" (make fuzz) is the long, random run; it keeps failing examples in .hypothesis/ and
# tries them first next time.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,  # a loaded machine makes per-example timings meaningless
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The "ci" budget is fixed, so a fuzz test's time is set by the machine: under coverage's
# tracer (make test) each one takes about twice as long, and on a loaded 2-core CI machine a
# 300-example run passed the 60 s hang guard meant for e2e tests. Their own guard stays
# finite; `make fuzz` lifts it (--timeout 0) for the long profile.
FUZZ_TIMEOUT = 240


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci":
        return
    for item in items:
        if item.get_closest_marker("fuzz") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(FUZZ_TIMEOUT))


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
