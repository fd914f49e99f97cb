"""Pick how to run: one process without a master, or a master with workers."""

from __future__ import annotations

from collections.abc import Callable

from fastgate import build, handover, logs
from fastgate.config import Config, replace


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
    if not build.is_compiled() and not build.pure_requested():
        # One line, so that a slower server is explained where the operator looks first
        # (not when FASTGATE_PURE asked for it: whoever set it knows).
        logs.error_logger.info("Running the %s build", build.describe())
    state = handover.peek()
    if state is not None and config.process.workers == 0:
        # Re-executed in place: the adopted workers need this master. A config asking for
        # no master is refused like any invalid one at a reload.
        logs.error_logger.error("Reload: --workers 0 cannot replace a running master in place; "
                                "configuration ignored, keeping the current one")
        config = handover.config_from(state)
    if config.process.workers == 0:
        from fastgate.supervisor.sockets import bind_all

        if config.process.metrics_bind is not None or config.process.control_socket is not None:
            # Both are served by the master: without one, the worker would count for nobody.
            logs.error_logger.warning("--metrics-bind and --control-socket need a master (--workers 1 or more): "
                                      "ignored with --workers 0")
            config = replace(config, metrics_bind=None, control_socket=None)
        from fastgate.worker.server import run_single

        return run_single(config, bind_all)
    from fastgate.supervisor.master import Master

    if not config.reload.reload:
        return Master(config, reread=reread).run()
    return _run_reload(config, reread)


def _run_reload(config: Config, reread: Callable[[], Config] | None) -> int:
    """``--reload``: the master plus a file watcher child whose reports trigger reloads.

    The master still never imports the app, so every new worker imports fresh code. If
    the app cannot start at all (first generation fails to import or boot), the error has
    been printed: instead of exiting, wait for the next change and start again, so the
    edit-save loop survives broken code at startup too.
    """
    import signal
    import sys

    from fastgate.errors import EXIT_APP_LOAD_FAILED, EXIT_BOOT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError
    from fastgate.logs import error_logger
    from fastgate.supervisor.master import Master
    from fastgate.supervisor.policy import Phase
    from fastgate.supervisor.reload import Reloader, warm_worker_imports, watch_options

    try:
        options = watch_options(config.reload, config.app.app_dir)
    except ConfigError as exc:
        print(f"fastgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Between two masters (waiting for a fix) SIGTERM stops like Ctrl-C and SIGHUP / SIGUSR2
    # must not kill the process. Each Master restores these handlers when it returns, so there
    # is no window with the default actions.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)  # an upgrade needs a running master
    warm_worker_imports()
    reloader = Reloader(options)
    state = handover.peek()
    watcher = state.get("watcher") if state is not None else None
    if watcher is not None:
        reloader.adopt(watcher["pid"], watcher["fd"])  # the master re-executed itself in place
    else:
        reloader.start()
    try:
        while True:
            master = Master(config, reread=reread, reload_source=reloader)
            code = master.run()
            policy = master.policy
            app_never_started = (code in (EXIT_APP_LOAD_FAILED, EXIT_BOOT_FAILED)
                                 and policy.phase is Phase.EXITED and not policy.ever_ready)
            if not app_never_started or reloader.closed:
                return code
            error_logger.error("The app could not start: fix it and save; waiting for a change (Ctrl-C to quit)")
            if not reloader.wait_for_change():
                return code
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        reloader.stop()
