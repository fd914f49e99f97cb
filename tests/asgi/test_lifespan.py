"""The lifespan state machine: auto/on/off, state, failures, timeouts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fastgate.asgi.lifespan import Lifespan, LifespanState
from fastgate.errors import LifespanFailure


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class App:
    """A lifespan app that records what it saw."""

    def __init__(self, startup: str = "complete", shutdown: str = "complete") -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.events: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        assert scope["asgi"]["version"] == "3.0"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        self.events.append("startup")
        scope["state"]["pool"] = "ready"
        if self.startup == "hang":
            await asyncio.sleep(3600)
        if self.startup == "raise":
            raise RuntimeError("db down")
        await send({"type": f"lifespan.startup.{self.startup}", "message": "db down"})
        if self.startup == "failed":
            return
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        self.events.append("shutdown")
        if self.shutdown == "raise":
            raise RuntimeError("shutdown boom")
        if self.shutdown == "hang":
            await asyncio.sleep(3600)
        await send({"type": f"lifespan.shutdown.{self.shutdown}", "message": "cleanup failed"})


def test_startup_and_shutdown_share_state() -> None:
    app = App()

    async def main() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()
        assert lifespan.phase is LifespanState.STARTED
        assert lifespan.state == {"pool": "ready"}
        await lifespan.shutdown()
        assert lifespan.phase is LifespanState.DONE

    run(main())
    assert app.events == ["startup", "shutdown"]


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_message(mode: str) -> None:
    async def main() -> None:
        with pytest.raises(LifespanFailure, match="db down"):
            await Lifespan(App("failed"), mode).startup()

    run(main())


def test_startup_raise_in_on_mode_fails(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with pytest.raises(LifespanFailure, match="RuntimeError: db down"):
            await Lifespan(App("raise"), "on").startup()

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(main())
    assert "Exception in lifespan protocol" in caplog.text


def test_auto_tolerates_apps_without_lifespan(caplog: pytest.LogCaptureFixture) -> None:
    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"

    async def returns(scope: Any, receive: Any, send: Any) -> None:
        return

    async def main() -> None:
        for app in (http_only, returns):
            lifespan = Lifespan(app, "auto")
            await lifespan.startup()
            assert lifespan.phase is LifespanState.UNSUPPORTED
            await lifespan.shutdown()  # nothing to do

    with caplog.at_level(logging.INFO, "fastgate.error"):
        run(main())
    assert "appears unsupported (AssertionError" in caplog.text
    assert "Exception in lifespan protocol" not in caplog.text


def test_on_mode_app_returning_without_answer_fails() -> None:
    async def returns(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async def main() -> None:
        with pytest.raises(LifespanFailure, match="returned without answering"):
            await Lifespan(returns, "on").startup()

    run(main())


def test_off_mode_never_calls_the_app() -> None:
    called: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    async def main() -> None:
        lifespan = Lifespan(app, "off")
        await lifespan.startup()
        await lifespan.shutdown()
        assert lifespan.phase is LifespanState.UNSUPPORTED

    run(main())
    assert called == []


def test_startup_timeout() -> None:
    async def main() -> None:
        with pytest.raises(LifespanFailure, match=r"did not complete within 0.05s \(--timeout-lifespan\)"):
            await Lifespan(App("hang"), "auto", timeout=0.05).startup()

    run(main())


@pytest.mark.parametrize("how", ["failed", "raise", "hang"])
def test_shutdown_failures_are_logged_not_raised(how: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        lifespan = Lifespan(App(shutdown=how), "on", timeout=0.05)
        await lifespan.startup()
        await lifespan.shutdown()
        assert lifespan.phase is LifespanState.DONE

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(main())
    assert "shutdown" in caplog.text


def test_unexpected_lifespan_message_is_an_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def main() -> None:
        with pytest.raises(LifespanFailure, match="unexpected lifespan message"):
            await Lifespan(app, "on").startup()

    run(main())
