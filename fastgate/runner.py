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

    if not config.reload.reload:
        return Master(config, reread=reread).run()
    return _run_reload(config, reread)


def _run_reload(config: Config, reread: Callable[[], Config] | None) -> int:
    """``--reload``: the master plus a file watcher child whose reports trigger reloads.

    The master still never imports the app, so every new worker imports fresh code.
    """
    import sys

    from fastgate.errors import EXIT_USAGE, ConfigError
    from fastgate.supervisor.master import Master
    from fastgate.supervisor.reload import Reloader, watch_options

    try:
        options = watch_options(config.reload, config.app.app_dir)
    except ConfigError as exc:
        print(f"fastgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    reloader = Reloader(options)
    reloader.start()
    try:
        return Master(config, reread=reread, reload_source=reloader).run()
    finally:
        reloader.stop()
