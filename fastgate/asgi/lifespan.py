"""The ASGI lifespan protocol: startup before serving, shutdown after draining.

``mode`` is ``on`` (the app must implement lifespan), ``auto`` (an app that raises or
returns before answering ``lifespan.startup`` is taken not to implement it) or ``off``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from fastgate.asgi.types import ASGI_VERSION, LIFESPAN_SPEC_VERSION, ASGIApp, Message
from fastgate.errors import LifespanFailure

logger = logging.getLogger("fastgate.error")


class LifespanState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    STARTED = "started"
    UNSUPPORTED = "unsupported"
    SHUTTING_DOWN = "shutting_down"
    DONE = "done"
    FAILED = "failed"


class Lifespan:
    """Drive the app's lifespan coroutine.

    Args:
        app: the ASGI 3 app.
        mode: ``auto``, ``on`` or ``off``.
        timeout: seconds each phase may take.
        state: the dict the app fills at startup (copied into every request's scope).
    """

    def __init__(self, app: ASGIApp, mode: str = "auto", timeout: float = 60.0,
                 state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.mode = mode
        self.timeout = timeout
        self.state: dict[str, Any] = state if state is not None else {}
        self.phase = LifespanState.IDLE if mode != "off" else LifespanState.UNSUPPORTED
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answer: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[None] | None = None
        self._app_error: BaseException | None = None

    async def startup(self) -> None:
        """Run ``lifespan.startup``.

        Raises:
            LifespanFailure: the app failed startup, or timed out, or (mode ``on``) does
                not implement lifespan.
        """
        if self.phase is LifespanState.UNSUPPORTED:
            return
        loop = asyncio.get_running_loop()
        self.phase = LifespanState.STARTING
        self._answer = loop.create_future()
        scope = {"type": "lifespan", "asgi": {"version": ASGI_VERSION, "spec_version": LIFESPAN_SPEC_VERSION},
                 "state": self.state}
        self._task = loop.create_task(self._main(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._wait_answer("startup")
        if message["type"] == "lifespan.startup.complete":
            self.phase = LifespanState.STARTED
            return
        if message["type"] == "lifespan.startup.failed":
            self.phase = LifespanState.FAILED
            raise LifespanFailure(f"lifespan startup failed: {message.get('message') or 'no message'}")
        # The app exited without answering.
        if self.mode == "auto":
            self.phase = LifespanState.UNSUPPORTED
            if self._app_error is not None:
                logger.info("ASGI 'lifespan' protocol appears unsupported (%s: %s).",
                            type(self._app_error).__name__, self._app_error)
            return
        self.phase = LifespanState.FAILED
        if self._app_error is not None:
            raise LifespanFailure(
                f"lifespan startup failed: {type(self._app_error).__name__}: {self._app_error}"
            ) from self._app_error
        raise LifespanFailure("lifespan startup failed: the app returned without answering lifespan.startup")

    async def shutdown(self) -> None:
        """Run ``lifespan.shutdown``; failures are logged, never raised."""
        if self.phase is not LifespanState.STARTED:
            return
        loop = asyncio.get_running_loop()
        self.phase = LifespanState.SHUTTING_DOWN
        self._answer = loop.create_future()
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            message = await self._wait_answer("shutdown")
        except LifespanFailure as exc:
            logger.error("%s", exc)
            message = {"type": "lifespan.shutdown.failed"}
        if message["type"] == "lifespan.shutdown.failed":
            logger.error("lifespan shutdown failed: %s", message.get("message") or "no message")
        self.phase = LifespanState.DONE
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _wait_answer(self, phase: str) -> Message:
        assert self._answer is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._answer), self.timeout)
        except TimeoutError:
            raise LifespanFailure(f"lifespan {phase} did not complete within {self.timeout:g}s "
                                  "(--timeout-lifespan)") from None

    async def _main(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # the app's lifespan coroutine is a task boundary
            self._app_error = exc
            if self.mode == "on" or self.phase is not LifespanState.STARTING:
                logger.error("Exception in lifespan protocol", exc_info=exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            if self._answer is not None and not self._answer.done():
                self._answer.set_result({"type": "lifespan.exited"})

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        expected = {
            LifespanState.STARTING: ("lifespan.startup.complete", "lifespan.startup.failed"),
            LifespanState.SHUTTING_DOWN: ("lifespan.shutdown.complete", "lifespan.shutdown.failed"),
        }.get(self.phase, ())
        if message.get("type") not in expected:
            raise RuntimeError(f"unexpected lifespan message {message.get('type')!r} in phase {self.phase.value}")
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(message)
