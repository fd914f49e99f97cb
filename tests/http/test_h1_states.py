"""The transition table of ``fastgate.http.h1``, walked exhaustively.

For every machine, every state and every trigger the machine reacts to, a connection is
put in that state and the trigger applied through the public API. What every machine
(not only the one walked) looks like afterwards must be what ``TRANSITIONS`` says: the
row's new state, the machine unchanged when it ignores the trigger, and nothing changed at
all when a reacting machine has no row for it (``next_event`` answers PAUSED, a call is
refused).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import pytest

from fastgate.errors import LocalProtocolError
from fastgate.http.events import END_OF_REQUEST, PAUSED, BadRequest, RequestHead, UpgradeRequest
from fastgate.http.h1 import (
    TRANSITIONS,
    ConnectionState,
    H1Connection,
    RequestState,
    ResponseState,
    Trigger,
    machine_triggers,
)

MACHINES: dict[type[enum.Enum], str] = {
    RequestState: "request_state",
    ResponseState: "response_state",
    ConnectionState: "state",
}
# The other machines' states while one is walked: ones that let every trigger through.
PERMISSIVE: dict[type[enum.Enum], dict[str, enum.Enum]] = {
    RequestState: {"response_state": ResponseState.DONE, "state": ConnectionState.OPEN},
    ResponseState: {"request_state": RequestState.DONE, "state": ConnectionState.OPEN},
    ConnectionState: {"request_state": RequestState.HEAD, "response_state": ResponseState.WAITING},
}


def _head() -> RequestHead:
    scratch = H1Connection()
    scratch.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = scratch.next_event()
    assert isinstance(head, RequestHead)
    return head


def _hand_out(event: object) -> Callable[[H1Connection], bool]:
    """Trigger: next_event hands ``event`` out. Refused when it answers PAUSED instead."""

    def apply(conn: H1Connection) -> bool:
        conn.reader.events.appendleft(event)  # type: ignore[arg-type]
        got = conn.next_event()
        assert got is event or got is PAUSED
        return got is PAUSED

    return apply


def _call(fn: Callable[[H1Connection], object]) -> Callable[[H1Connection], bool]:
    """Trigger: an API call. Refused when it raises LocalProtocolError (or returns False)."""

    def apply(conn: H1Connection) -> bool:
        try:
            return fn(conn) is False
        except LocalProtocolError:
            return True

    return apply


APPLY: dict[Trigger, Callable[[H1Connection], bool]] = {
    Trigger.HEAD: _hand_out(_head()),
    Trigger.UPGRADE: _hand_out(UpgradeRequest(_head(), b"")),
    Trigger.END: _hand_out(END_OF_REQUEST),
    Trigger.BAD: _hand_out(BadRequest(400, "broken")),
    Trigger.START: _call(lambda c: c.start_response(200, [])),
    Trigger.RESPOND: _call(lambda c: c.start_response(200, [], b"whole")),
    Trigger.BODY_END: _call(lambda c: c.send_body(b"", end=True)),
    Trigger.ERROR_RESPONSE: _call(lambda c: c.error_response(500)),
    Trigger.NEXT: _call(lambda c: c.start_next_request()),
    Trigger.CLOSE: _call(lambda c: c.close()),
}

CASES = [
    (machine, state, trigger)
    for machine in TRANSITIONS
    for state in machine
    for trigger in sorted(machine_triggers(machine))
]


def test_every_trigger_is_applied_and_every_state_has_a_row() -> None:
    assert set(APPLY) == set(Trigger)
    assert set().union(*(machine_triggers(m) for m in TRANSITIONS)) == set(Trigger)
    for machine, rows in TRANSITIONS.items():
        assert set(rows) == set(machine), f"{machine.__name__}: a state without a row"


@pytest.mark.parametrize(("machine", "state", "trigger"), CASES,
                         ids=[f"{m.__name__}.{s.name}-{t.name}" for m, s, t in CASES])
def test_transition(machine: type[enum.Enum], state: enum.Enum, trigger: Trigger) -> None:
    conn = H1Connection()
    for attr, value in PERMISSIVE[machine].items():
        setattr(conn, attr, value)
    setattr(conn, MACHINES[machine], state)
    before = {m: getattr(conn, attr) for m, attr in MACHINES.items()}
    expected: dict[type[enum.Enum], enum.Enum | None] = {}
    for m, current in before.items():
        reacts = trigger in machine_triggers(m)
        expected[m] = TRANSITIONS[m][current].get(trigger) if reacts else current
    refused = APPLY[trigger](conn)
    after = {m: getattr(conn, attr) for m, attr in MACHINES.items()}
    if any(value is None for value in expected.values()):
        assert refused, f"{trigger.name} in {before} was not refused"
        assert after == before
    else:
        assert not refused, f"{trigger.name} in {before} was refused"
        assert after == expected


def test_a_refused_call_changes_nothing_a_later_call_needs() -> None:
    # The table at work on a real exchange: a second start is refused, the error response
    # after a started body is refused, and the connection is still usable as before.
    conn = H1Connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(conn.next_event(), RequestHead) and conn.next_event() is END_OF_REQUEST
    conn.start_response(200, [])
    with pytest.raises(LocalProtocolError):
        conn.start_response(200, [])
    with pytest.raises(LocalProtocolError):
        conn.error_response(500)
    assert conn.send_body(b"ok", end=True) == b"2\r\nok\r\n0\r\n\r\n"
    assert conn.start_next_request()
    assert (conn.request_state, conn.response_state) == (RequestState.HEAD, ResponseState.WAITING)
