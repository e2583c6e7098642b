"""Graceful shutdown of a worker: calls in flight may finish, no new call starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import NoReturn

__all__ = ["Drain"]


class Drain:
    """Counts agent calls in flight; once draining, new calls wait to be interrupted."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._draining = False
        self._idle: asyncio.Event | None = None

    @property
    def draining(self) -> bool:
        return self._draining

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncGenerator[None]:
        if self._draining:
            await asyncio.Event().wait()  # until the run is interrupted
        self._in_flight += 1
        try:
            yield
        finally:
            self._leave()

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncGenerator[None]:
        """Inside `call()`: while the call waits for a person (a tool approval), it is not
        in flight, so a drain does not wait for it; a wait that ends while draining then
        waits to be interrupted rather than going on with the call."""
        self._leave()
        try:
            yield
        finally:
            self._in_flight += 1
        if self._draining:
            await self.wait_interrupted()

    async def wait_interrupted(self) -> NoReturn:
        """Inside `call()`: stop counting as in flight and wait until the run is interrupted
        (cancelled), so that the drain does not wait for a call that starts nothing more."""
        self._leave()
        try:
            await asyncio.Event().wait()
        finally:
            self._in_flight += 1
        raise AssertionError("an event nobody sets was set")

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Stop new calls and wait up to `grace` seconds for the ones in flight."""
        self._draining = True
        if self._in_flight == 0 or grace <= 0:
            return
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
