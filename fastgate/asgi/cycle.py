"""The one boundary between an ASGI application and the server, for HTTP and WebSocket alike.

``AppCycle.run`` calls the app and turns whatever it does wrong into the answer the peer
should get, once, with one log line:

* An invalid response head (a status or header the server refuses) is answered 500 at
  once, before a byte of it is written, and logged then (``_refuse``): the app gets the
  error from ``send`` and may swallow it or raise it; either way nothing more is logged.
* An exception is logged and answered by the cycle (``_answer_error``): 500 while nothing
  was sent, a closed connection (HTTP) or close 1011 (WebSocket) once it was.
* A ``CancelledError`` from a cancellation somebody requested (the drain deadline) is not
  the app's fault: the cycle tears down (``_cancelled``). One the app raised itself is an
  app error like any other.
* An ``OSError`` after the peer left is the app noticing through ``send``/``receive``: not
  an error.
* An app that returns without finishing its answer is handled by ``_returned``.

``KeyboardInterrupt`` and ``SystemExit`` are handled like errors, then re-raised.
"""

from __future__ import annotations

import asyncio
import logging

from fastgate.asgi.types import ASGIApp, Message, Scope
from fastgate.errors import ASGIProtocolError, LocalProtocolError

logger = logging.getLogger("fastgate.error")


class AppCycle:
    """Runs the app for one request or one WebSocket; subclasses say how to answer.

    Subclasses set ``scope`` (the ASGI scope) and ``_refused`` (None) in their constructor
    (one per request: the base constructor's call is spared).
    """

    __slots__ = ("scope", "_refused")

    scope: Scope
    _refused: ASGIProtocolError | None  # the error a 500 was already sent for

    async def receive(self) -> Message:
        raise NotImplementedError

    async def send(self, message: Message) -> None:
        raise NotImplementedError

    async def run(self, app: ASGIApp) -> None:
        """Run the app; answer and log what it does wrong (module docstring)."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._on_app_error(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return
        self._returned()

    def _on_app_error(self, exc: BaseException) -> None:
        if exc is self._refused:
            return  # answered (500) and logged when the app sent it
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self._cancelled()
                return
        if self._peer_gone() and isinstance(exc, OSError):
            return  # the client left; the app noticed through send()/receive(). Not an error.
        when = self._answer_error()
        logger.error("Exception in ASGI application%s (%s)", when, self._where(), exc_info=exc)

    def _refuse(self, exc: LocalProtocolError, what: str) -> ASGIProtocolError:
        """Refuse an invalid answer from the app (``what``: "response", ...) before any byte
        of it was written: answer 500 now, whatever the app does with the error it gets,
        and log it here, once."""
        error = ASGIProtocolError(str(exc))
        self._refused = error
        logger.error("Invalid %s from the ASGI application (%s): %s", what, self._where(), exc)
        self._answer_refusal()
        return error

    # -- what the subclasses decide --

    def _where(self) -> str:
        """What the log line names: the request or the WebSocket."""
        raise NotImplementedError

    def _peer_gone(self) -> bool:
        """Whether the peer has left (an OSError from send/receive is then expected)."""
        raise NotImplementedError

    def _answer_error(self) -> str:
        """Answer an app exception; returns what the log line adds after "application"."""
        raise NotImplementedError

    def _answer_refusal(self) -> None:
        """Answer an invalid response head with a 500."""
        raise NotImplementedError

    def _cancelled(self) -> None:
        """The task was cancelled (the drain deadline): tear the exchange down."""
        raise NotImplementedError

    def _returned(self) -> None:
        """The app returned: finish what it left unfinished."""
        raise NotImplementedError
