"""RequestCycle with a FakeChannel: ASGI message order, 100-continue, backpressure, errors."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from fastgate.asgi.http_cycle import HIGH_WATER, VECTOR_MIN, ASGIHTTPState, RequestCycle
from fastgate.errors import ASGIProtocolError, ClientDisconnected
from fastgate.http.events import END_OF_REQUEST, NEED_DATA, RequestHead
from fastgate.http.h1 import CONTINUE, DefaultHeaders, H1Connection, ResponseState


class FakeChannel:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.vectored: list[list[bytes]] = []  # each writelines call
        self.paused = False
        self.pauses = 0
        self.closed = False
        self.completed = 0
        self.outcomes: list[tuple[int, int]] = []
        self.cycle: RequestCycle | None = None
        self.drains = 0
        self.drain_gate: asyncio.Event | None = None
        self.file_limit: int | None = None  # send_file stops after this many bytes (a peer that left)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.vectored.append(parts)
        self.written.extend(parts)

    async def send_file(self, fd: int, count: int) -> int:
        limit = count if self.file_limit is None else min(count, self.file_limit)
        data = os.pread(fd, limit, 0)
        self.written.append(data)
        return len(data)

    async def drain(self) -> None:
        self.drains += 1
        if self.drain_gate is not None:
            await self.drain_gate.wait()

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def state_changed(self) -> None:
        # The cycle says the response ended: what the protocol's access log then reads.
        assert self.cycle is not None
        assert self.cycle.conn.response_state is ResponseState.DONE
        self.completed += 1
        self.outcomes.append((self.cycle.status, self.cycle.body_bytes))

    @property
    def data(self) -> bytes:
        return b"".join(self.written)


def make(request: bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", **kw: Any) -> tuple[RequestCycle, FakeChannel]:
    conn = H1Connection(defaults=DefaultHeaders(server=None))
    conn.receive_data(request)
    head = conn.next_event()
    assert isinstance(head, RequestHead)
    while conn.next_event() is not NEED_DATA:  # consume what arrived, as the adapter does
        pass
    channel = FakeChannel()
    scope = {"type": "http", "method": head.method, "path": "/"}
    cycle = RequestCycle(scope, conn, channel, expect_continue=head.expect_continue, **kw)
    channel.cycle = cycle
    return cycle, channel


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def respond(send: Any, body: bytes = b"ok", status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def test_simple_response_is_one_write_with_content_length() -> None:
    cycle, channel = make()
    cycle.feed_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "http.request", "body": b"", "more_body": False}
        await respond(send)

    run(cycle.run(app))
    assert channel.written == [b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"]
    assert cycle.state is ASGIHTTPState.DONE and channel.completed == 1
    assert channel.outcomes == [(200, 2)]


def test_large_single_body_is_written_beside_its_head_not_joined() -> None:
    body = bytes(range(256)) * (VECTOR_MIN // 256)
    cycle, channel = make()
    cycle.feed_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send, body)

    run(cycle.run(app))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % len(body)
    assert channel.vectored == [[head, body]]
    assert channel.vectored[0][1] is body  # not copied
    assert channel.completed == 1 and cycle.body_bytes == len(body)


def test_large_chunks_are_framed_around_the_data() -> None:
    big = b"z" * VECTOR_MIN
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": big, "more_body": True})
        await send({"type": "http.response.body", "body": b"small", "more_body": True})
        await send({"type": "http.response.body", "body": big})

    run(cycle.run(app))
    size = b"%x\r\n" % len(big)
    assert channel.data == (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + size + big + b"\r\n"
                            + b"5\r\nsmall\r\n" + size + big + b"\r\n0\r\n\r\n")
    assert all(any(part is big for part in parts) for parts in channel.vectored) and len(channel.vectored) == 2
    assert channel.drains == 2 and channel.completed == 1 and cycle.body_bytes == 2 * len(big) + 5


def test_large_head_request_body_is_not_written() -> None:
    cycle, channel = make(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    cycle.feed_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * VECTOR_MIN, "more_body": True})
        await send({"type": "http.response.body", "body": b"x" * VECTOR_MIN})

    run(cycle.run(app))
    assert channel.data == b"HTTP/1.1 200 OK\r\n\r\n"  # a HEAD answer: the head alone
    assert channel.completed == 1


def test_streaming_response_drains_between_chunks() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    run(cycle.run(app))
    assert channel.data == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n"
    assert channel.drains == 2 and channel.completed == 1


def test_write_backpressure_blocks_send() -> None:
    cycle, channel = make()
    channel.drain_gate = asyncio.Event()
    progress: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        progress.append("first")
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        progress.append("second")
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        task = asyncio.create_task(cycle.run(app))
        for _ in range(5):
            await asyncio.sleep(0)
        assert progress == ["first"]  # blocked in drain() of the second chunk
        assert channel.drain_gate is not None
        channel.drain_gate.set()
        await task
        assert progress == ["first", "second"]

    run(main())


def test_request_body_and_read_backpressure() -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n")
    big = b"x" * (HIGH_WATER // 2)
    cycle.feed(big)
    assert not channel.paused
    cycle.feed(big)
    cycle.feed(big)  # above the high-water mark: stop reading
    assert channel.paused and channel.pauses == 1
    cycle.feed(b"y")
    assert channel.pauses == 1  # paused once, not per chunk

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert message == {"type": "http.request", "body": big * 3 + b"y", "more_body": True}
        assert not channel.paused  # consumed: reading resumes
        cycle.feed_end()
        assert await receive() == {"type": "http.request", "body": b"", "more_body": False}
        await respond(send)
        assert await receive() == {"type": "http.disconnect"}  # after the response

    run(cycle.run(app))


def test_receive_waits_for_body() -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())
        await respond(send)

    async def main() -> None:
        task = asyncio.create_task(cycle.run(app))
        await asyncio.sleep(0)
        assert got == []
        cycle.feed(b"abc")
        await asyncio.sleep(0)
        cycle.feed_end()
        await task

    run(main())
    assert got == [{"type": "http.request", "body": b"abc", "more_body": True},
                   {"type": "http.request", "body": b"", "more_body": False}]


def test_100_continue_only_on_first_receive() -> None:
    request = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    cycle, channel = make(request)
    assert cycle._expect_continue

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert channel.written == []  # not before the app reads
        cycle.feed(b"h")
        await receive()
        assert channel.written == [CONTINUE]
        cycle.feed(b"i")
        cycle.feed_end()
        assert (await receive())["more_body"] is False
        await respond(send)

    run(cycle.run(app))
    assert channel.written.count(CONTINUE) == 1


def test_no_100_continue_when_the_app_answers_without_reading() -> None:
    request = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    cycle, channel = make(request)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send, b"no", 413)

    run(cycle.run(app))
    assert CONTINUE not in channel.written
    assert channel.data.startswith(b"HTTP/1.1 413 ")


def test_no_100_continue_after_the_response_started() -> None:
    request = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    cycle, channel = make(request)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        cycle.disconnect()
        assert await receive() == {"type": "http.disconnect"}

    run(cycle.run(app))
    assert CONTINUE not in channel.written


def test_disconnect_wakes_receive_and_send_raises() -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        try:
            await respond(send)
        except OSError as exc:
            seen.append(exc)
            raise

    async def main() -> None:
        task = asyncio.create_task(cycle.run(app))
        await asyncio.sleep(0)
        cycle.disconnect()
        await task

    run(main())
    assert seen[0] == {"type": "http.disconnect"}
    assert isinstance(seen[1], ClientDisconnected) and isinstance(seen[1], OSError)
    assert channel.written == []  # the OSError after a disconnect is not an error: no 500


def test_send_body_after_disconnect_raises() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        cycle.disconnect()
        with pytest.raises(ClientDisconnected):
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
        cycle2_state.append(cycle.state)

    cycle2_state: list[Any] = []
    run(cycle.run(app))
    assert cycle2_state == [ASGIHTTPState.BODY]

    cycle, channel = make()

    async def app2(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        cycle.disconnect()
        await send({"type": "http.response.body", "body": b"b"})

    run(cycle.run(app2))
    assert channel.written == []


@pytest.mark.parametrize(
    ("messages", "expect"),
    [
        ([{"type": "http.response.body", "body": b"x"}], "not expected in state start"),
        ([{"type": "http.response.start", "status": 200}] * 2, "not expected in state started"),
        ([{"type": "http.response.start", "status": "200"}], "status must be an int"),
        ([{"type": "http.response.push"}], "unexpected ASGI message type"),
        ([{"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb: c")]},
          {"type": "http.response.body"}], "invalid header value"),
        ([{"type": "http.response.start", "status": True}], "status must be an int"),
        ([{"type": "http.response.start", "status": 99}, {"type": "http.response.body"}], "invalid status code"),
    ],
)
def test_protocol_errors_before_the_response_give_500(messages: list[Any], expect: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()
    cycle.feed_end()
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            for m in messages:
                await send(m)
        except ASGIProtocolError as exc:
            raised.append(exc)
            raise

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert expect in str(raised[0])
    assert channel.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in channel.data and b"x: a" not in channel.data
    assert channel.completed == 1
    refused = expect in ("status must be an int", "invalid header value", "invalid status code")
    assert ("Invalid response from the ASGI application" if refused else "Exception in ASGI application") in caplog.text
    assert len(caplog.records) == 1  # logged once


@pytest.mark.parametrize("swallow", [True, False])
@pytest.mark.parametrize(
    "start",
    [{"status": 200, "headers": [(b"x", b"a\r\nset-cookie: evil")]}, {"status": 200, "headers": [(b"x y", b"v")]},
     {"status": 200, "headers": [("x", "v")]}, {"status": "200"}, {"status": False}, {"status": 1000}],
)
def test_an_invalid_head_is_refused_with_500_whatever_the_app_does(start: dict[str, Any], swallow: bool,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()
    cycle.feed_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": b"secret"})
        except ASGIProtocolError:
            if not swallow:
                raise

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"secret" not in channel.data and b"evil" not in channel.data
    assert channel.completed == 1
    assert len(caplog.records) == 1 and "Invalid response from the ASGI application" in caplog.text


def test_raise_before_start_is_500(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.data.startswith(b"HTTP/1.1 500 ")
    assert channel.outcomes == [(500, 0)]
    assert "boom" in caplog.text and "GET /" in caplog.text


def test_return_without_response_is_500(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.data.startswith(b"HTTP/1.1 500 ")
    assert "returned without sending a response" in caplog.text

    # After only http.response.start, too.
    cycle, channel = make()

    async def app2(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    run(cycle.run(app2))
    assert channel.data.startswith(b"HTTP/1.1 500 ")


def test_raise_after_start_closes(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("late boom")

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.closed and not cycle.conn.keep_alive
    assert b"500" not in channel.data  # never a second response in the middle of a body
    assert channel.completed == 0
    assert "after the response started" in caplog.text


def test_return_mid_body_closes(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.closed
    assert "before the response body was complete" in caplog.text


def test_content_length_mismatch_closes() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"bc"})

    run(cycle.run(app))
    assert channel.closed and channel.completed == 0


def test_raise_after_the_response_ended_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send)
        raise RuntimeError("after")

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert not channel.closed and channel.completed == 1
    assert "after the response ended" in caplog.text


def test_error_after_disconnect_writes_nothing() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        cycle.disconnect()
        raise RuntimeError("x")

    run(cycle.run(app))
    assert channel.written == [] and cycle.state is ASGIHTTPState.DONE


def test_cancelled_mid_body_aborts() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(cycle.run(app))
        await asyncio.sleep(0.01)
        task.cancel()
        await task  # run() swallows the cancellation of the app

    run(main())
    assert channel.closed


def test_end_of_request_constant_is_shared() -> None:
    assert repr(END_OF_REQUEST) == "END_OF_REQUEST"


def test_peer_eof_gives_disconnect_after_the_body_but_send_still_works() -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    cycle.feed(b"hi")
    cycle.feed_end()
    cycle.peer_closed()  # half-close: the client sent everything and shut its side

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "http.request", "body": b"hi", "more_body": False}
        assert await receive() == {"type": "http.disconnect"}
        await respond(send, b"still answered")

    run(cycle.run(app))
    assert channel.data.endswith(b"still answered") and channel.completed == 1


def test_peer_eof_mid_body_ends_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    cycle.feed(b"abc")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"abc"
        asyncio.get_running_loop().call_soon(cycle.peer_closed)
        assert await receive() == {"type": "http.disconnect"}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        # returns mid-body: the peer is gone, so this is not reported as an app bug

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert channel.closed and caplog.text == ""


def test_peer_eof_cutting_the_body_short_is_not_an_app_error(caplog: pytest.LogCaptureFixture) -> None:
    # The client closed (FIN) halfway through its body; the app hears http.disconnect and
    # returns without a response, which is right: nothing is logged as an app bug.
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    cycle.feed(b"abc")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is True
        asyncio.get_running_loop().call_soon(cycle.peer_closed)
        assert await receive() == {"type": "http.disconnect"}

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert caplog.text == "" and cycle.state is ASGIHTTPState.DONE


def test_peer_eof_after_a_complete_body_still_reports_a_missing_response(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    cycle.feed(b"hi")
    cycle.feed_end()
    cycle.peer_closed()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(cycle.run(app))
    assert "returned without sending a response" in caplog.text
    assert channel.data.startswith(b"HTTP/1.1 500 ")


def test_a_cancelled_error_nobody_requested_is_an_app_error(caplog: pytest.LogCaptureFixture) -> None:
    # A leaked CancelledError (the task was never cancelled) is the app's bug: 500, logged.
    cycle, channel = make()
    cycle.feed_end()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError()

    async def main() -> None:
        await asyncio.create_task(cycle.run(app))

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run(main())
    assert channel.data.startswith(b"HTTP/1.1 500 ") and not channel.closed
    assert "Exception in ASGI application" in caplog.text


# ----------------------------------------------------------- --timeout-request (time_out)

def test_time_out_before_the_response_answers_503_and_later_sends_raise_client_disconnected() -> None:
    cycle, channel = make()
    cycle.feed_end()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the request
        await send({"type": "http.response.start", "status": 200, "headers": []})  # given, not written
        assert cycle.time_out() is True
        seen.append(await receive())
        for message in ({"type": "http.response.body", "body": b"late"},
                        {"type": "http.response.start", "status": 200, "headers": []}):
            with pytest.raises(ClientDisconnected):
                await send(message)

    run(cycle.run(app))
    assert seen == [{"type": "http.disconnect"}]
    assert channel.data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close\r\n" in channel.data and not channel.closed
    assert channel.outcomes == [(503, 0)] and not cycle.conn.keep_alive


def test_time_out_after_the_response_started_closes_without_another_byte() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        written = channel.data
        assert cycle.time_out() is False
        assert channel.data == written and channel.closed
        with pytest.raises(ClientDisconnected):
            await send({"type": "http.response.body", "body": b"rest"})

    run(cycle.run(app))
    assert channel.completed == 0 and cycle.state is ASGIHTTPState.DONE


def test_out_of_order_messages_are_still_protocol_errors_while_connected() -> None:
    cycle, channel = make()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send)
        with pytest.raises(ASGIProtocolError, match="'http.response.body' not expected in state done"):
            await send({"type": "http.response.body", "body": b"again"})

    run(cycle.run(app))


# ---------------------------------------------------------------- http.response.pathsend


def run_app(cycle: RequestCycle, app: Any) -> None:
    asyncio.run(cycle.run(app))


def file_app(path: str, headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": path})
    return app


def test_pathsend_with_content_length_sends_the_file_after_the_head(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    cycle, channel = make()
    run_app(cycle, file_app(str(path), [(b"content-length", b"10")]))
    assert channel.data.endswith(b"content-length: 10\r\n\r\n0123456789")
    assert channel.outcomes == [(200, 10)] and cycle.state is ASGIHTTPState.DONE
    assert cycle.conn.keep_alive


def test_pathsend_without_length_is_one_chunk(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    cycle, channel = make()
    run_app(cycle, file_app(str(path), []))
    assert channel.data.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    cycle, channel = make()
    run_app(cycle, file_app(str(empty), []))
    assert channel.data.endswith(b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert channel.outcomes == [(200, 0)]


def test_pathsend_head_request_sends_no_file(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    cycle, channel = make(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    run_app(cycle, file_app(str(path), [(b"content-length", b"10")]))
    assert channel.data.endswith(b"content-length: 10\r\n\r\n")
    assert channel.outcomes == [(200, 0)] and cycle.conn.keep_alive


def test_pathsend_file_shorter_than_its_length_closes(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"01234")  # truncated after the app read its size
    cycle, channel = make()
    with caplog.at_level(logging.WARNING, "fastgate.error"):
        run_app(cycle, file_app(str(path), [(b"content-length", b"10")]))
    assert channel.data.endswith(b"\r\n\r\n01234")
    assert channel.closed and not cycle.conn.keep_alive and cycle.state is ASGIHTTPState.DONE
    assert "ended after 5 of 10 bytes" in caplog.text


def test_pathsend_peer_gone_midway_closes_without_a_warning(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    cycle, channel = make()
    channel.file_limit = 100

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        channel.closed = True  # the peer left while the file was going out
        await send({"type": "http.response.pathsend", "path": str(path)})

    with caplog.at_level(logging.WARNING, "fastgate.error"):
        run_app(cycle, app)
    assert channel.closed and "ended after" not in caplog.text


def test_pathsend_missing_file_is_a_500_and_a_second_pathsend_is_refused(tmp_path: Any) -> None:
    cycle, channel = make()
    run_app(cycle, file_app(str(tmp_path / "missing"), [(b"content-length", b"10")]))
    assert channel.data.startswith(b"HTTP/1.1 500 ")
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    cycle, channel = make()

    async def twice(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})
        with pytest.raises(ASGIProtocolError):
            await send({"type": "http.response.pathsend", "path": str(path)})

    run_app(cycle, twice)
    assert channel.outcomes == [(200, 3)]


# ---------------------------------------------------------------- http.response.trailers

TE = b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"


def make_trailers(request: bytes = TE) -> tuple[RequestCycle, FakeChannel]:
    cycle, channel = make(request)
    cycle.scope["extensions"] = {"http.response.trailers": {}}
    return cycle, channel


def test_trailers_end_the_chunked_body() -> None:
    cycle, channel = make_trailers()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"de"})
        assert channel.completed == 0  # not over until the trailers
        await send({"type": "http.response.trailers", "headers": [(b"x-a", b"1")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-b", b"2")]})

    run_app(cycle, app)
    assert channel.data.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n"
                                 b"0\r\nx-a: 1\r\nx-b: 2\r\n\r\n")
    assert channel.outcomes == [(200, 5)] and cycle.conn.keep_alive


def test_trailers_with_a_single_body_message_still_chunk() -> None:
    cycle, channel = make_trailers()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc"})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"9")]})

    run_app(cycle, app)
    assert channel.data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n")


def test_trailers_under_content_length_are_dropped() -> None:
    cycle, channel = make_trailers()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")],
                    "trailers": True})
        await send({"type": "http.response.body", "body": b"abc"})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"9")]})

    run_app(cycle, app)
    assert channel.data.endswith(b"content-length: 3\r\n\r\nabc")
    assert channel.outcomes == [(200, 3)] and cycle.conn.keep_alive


def test_trailers_refused_when_not_offered_or_out_of_order(caplog: pytest.LogCaptureFixture) -> None:
    cycle, channel = make()  # no TE: trailers, no extension

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})

    with caplog.at_level(logging.ERROR, "fastgate.error"):
        run_app(cycle, app)
    assert channel.data.startswith(b"HTTP/1.1 500 ")
    cycle, channel = make_trailers()

    async def early(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        with pytest.raises(ASGIProtocolError):
            await send({"type": "http.response.trailers", "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": []})

    run_app(cycle, early)
    assert channel.data.endswith(b"1\r\na\r\n0\r\n\r\n")


def test_trailers_invalid_field_aborts() -> None:
    cycle, channel = make_trailers()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"a"})
        await send({"type": "http.response.trailers", "headers": [(b"bad name", b"x")]})

    run_app(cycle, app)
    assert channel.closed and not channel.data.endswith(b"0\r\n\r\n")


def test_pathsend_to_http10_without_length_is_close_delimited(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    cycle, channel = make(b"GET / HTTP/1.0\r\n\r\n")
    run_app(cycle, file_app(str(path), []))
    assert channel.data.endswith(b"connection: close\r\n\r\nabc")
    assert channel.outcomes == [(200, 3)] and not cycle.conn.keep_alive
