"""A call waiting for a person (a tool approval) does not hold back a graceful shutdown."""

from __future__ import annotations

import asyncio

import pytest

from agentmill.engine.drain import Drain


async def test_a_waiting_call_is_not_in_flight_and_does_not_go_on_once_draining() -> None:
    drain = Drain()
    waiting, decided = asyncio.Event(), asyncio.Event()
    went_on: list[str] = []

    async def call() -> None:
        async with drain.call():
            async with drain.waiting():
                waiting.set()
                await decided.wait()
            went_on.append("the tool ran")

    task = asyncio.create_task(call())
    await waiting.wait()
    async with asyncio.timeout(10):  # far less than the grace: nothing is in flight
        await drain.drain(grace=3600)
    decided.set()  # the decision arrives during the shutdown
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    assert went_on == []  # it waits to be interrupted instead of running the call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    after = Drain()  # balanced counts: a fresh call then a drain waits for it only
    async with after.call(), after.waiting():
        pass
    async with asyncio.timeout(10):
        await after.drain(grace=3600)
