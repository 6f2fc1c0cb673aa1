"""Admission control: at most `max_concurrency` requests run, at most `max_queue` wait; more get 429.

The queue is bounded on purpose: an unbounded one turns overload into ever-growing latency and
memory, where a 429 with Retry-After lets a load balancer or client back off.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import AsyncIterator

from swiftops.protocol.errors import OverloadedError


class AdmissionController:
    """FIFO slots; must be used from one event loop (the server's)."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _reject(self) -> OverloadedError:
        return OverloadedError(
            f"the server is at capacity ({self.max_concurrency} requests running, {self.max_queue} waiting); "
            f"retry after the time in the Retry-After header", code="server_overloaded")

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds spent waiting. Raises OverloadedError when the queue is full."""
        if self.running < self.max_concurrency and not self._waiters:
            self.running += 1
            return 0.0
        if len(self._waiters) >= self.max_queue:
            raise self._reject()
        start = time.perf_counter()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: `running` stays counted for us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return time.perf_counter() - start

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over directly: no barging past the queue
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """`async with admission.slot() as queue_time:` runs the body in a slot."""
        queue_time = await self.acquire()
        try:
            yield queue_time
        finally:
            self.release()
