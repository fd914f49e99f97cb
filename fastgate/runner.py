"""Pick how to run: one process without a master, or a master with workers."""

from __future__ import annotations

from collections.abc import Callable

from fastgate import logs
from fastgate.config import Config


def run(config: Config, reread: Callable[[], Config] | None = None) -> int:
    """Run fastgate with ``config``; returns the process exit code.

    Args:
        config: the configuration.
        reread: how to load the configuration again on SIGHUP (the CLI passes one that
            re-parses the original command line with the current environment and file).

    ``--workers 0`` runs a single process without a master (for debuggers); otherwise a
    master supervises ``--workers`` forked workers, even when that is one.
    """
    logs.configure(config.log)
    if config.process.workers == 0:
        from fastgate.worker.server import run_single

        return run_single(config)
    from fastgate.supervisor.master import Master

    return Master(config, reread=reread).run()
