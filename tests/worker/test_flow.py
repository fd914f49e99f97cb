"""FlowControl: read-pause reasons, write pauses and drain, over a fake transport."""

from __future__ import annotations

import asyncio
from typing import Any

from fastgate.worker.flow import READ_ALL, READ_BACKLOG, READ_OUTPUT, READ_PIPELINE, FlowControl


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def make() -> tuple[FlowControl, Transport]:
    transport = Transport()
    return FlowControl(transport), transport  # type: ignore[arg-type]


def test_reading_resumes_only_when_every_reason_is_gone() -> None:
    flow, transport = make()
    flow.pause_reading(READ_PIPELINE)
    flow.pause_reading(READ_BACKLOG)
    assert transport.calls == ["pause"] and flow.read_paused
    flow.resume_reading(READ_PIPELINE)
    assert transport.calls == ["pause"] and flow.read_paused
    flow.resume_reading(READ_PIPELINE)  # not paused for that reason (any more): nothing
    flow.resume_reading(READ_BACKLOG)
    assert transport.calls == ["pause", "resume"] and not flow.read_paused


def test_a_full_write_buffer_pauses_reading_until_it_drains() -> None:
    flow, transport = make()
    flow.pause_writing()
    assert flow.write_paused and flow.read_paused and transport.calls == ["pause"]
    flow.resume_reading(READ_PIPELINE | READ_BACKLOG)  # the next request may not be read yet
    assert transport.calls == ["pause"]
    flow.resume_writing()
    assert not flow.write_paused and transport.calls == ["pause", "resume"]


def test_resume_all_and_connection_lost() -> None:
    flow, transport = make()
    flow.pause_reading(READ_PIPELINE)
    flow.pause_writing()
    flow.resume_reading(READ_ALL)
    assert transport.calls == ["pause", "resume"]
    flow.pause_reading(READ_OUTPUT)
    flow.connection_lost()
    assert not flow.read_paused and not flow.write_paused


def test_drain_waits_for_resume_writing() -> None:
    async def main() -> list[str]:
        flow, _ = make()
        flow.pause_writing()
        order: list[str] = []

        async def writer() -> None:
            await flow.drain()
            order.append("drained")

        task = asyncio.get_running_loop().create_task(writer())
        await asyncio.sleep(0)
        order.append("resume")
        flow.resume_writing()
        await task
        return order

    assert asyncio.run(main()) == ["resume", "drained"]


def test_drain_on_a_closing_transport_yields_to_the_loop() -> None:
    # A send loop on a closing transport must let connection_lost run (it comes in a later
    # iteration); without the yield it spins forever.
    async def main() -> int:
        flow, transport = make()
        transport.closing = True
        lost = asyncio.Event()
        asyncio.get_running_loop().call_soon(lost.set)  # connection_lost, scheduled by close()
        sends = 0
        while not lost.is_set():
            sends += 1
            await flow.drain()
            assert sends < 100, "drain never yielded"
        return sends

    assert asyncio.run(main()) == 1


def test_drain_does_not_yield_when_open_and_not_paused() -> None:
    async def main() -> bool:
        flow, _ = make()
        ran: list[Any] = []
        asyncio.get_running_loop().call_soon(ran.append, 1)
        await flow.drain()
        return bool(ran)

    assert asyncio.run(main()) is False


def test_drain_when_not_paused_is_one_finished_future_per_connection() -> None:
    # No coroutine per call: an app sending many messages awaits the same finished future;
    # a pause in between still makes the next drain wait.
    async def main() -> list[str]:
        flow, _ = make()
        first, second = flow.drain(), flow.drain()
        assert first is second and isinstance(first, asyncio.Future) and first.done()
        await first
        await second
        order: list[str] = []
        flow.pause_writing()
        waiting = flow.drain()
        assert waiting is not first

        async def writer() -> None:
            await waiting
            order.append("drained")

        task = asyncio.get_running_loop().create_task(writer())
        await asyncio.sleep(0)
        order.append("resume")
        flow.resume_writing()
        await task
        assert flow.drain() is first
        return order

    assert asyncio.run(main()) == ["resume", "drained"]
