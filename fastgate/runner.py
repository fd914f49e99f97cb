"""Pick how to run: one process without a master, or a master with workers."""

from __future__ import annotations

from fastgate import logs
from fastgate.config import Config


def run(config: Config) -> int:
    """Run fastgate with ``config``; returns the process exit code."""
    logs.configure(config.log)
    from fastgate.worker.server import run_single

    return run_single(config)
