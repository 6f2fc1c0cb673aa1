"""Admission control by work, not by requests: a request weighs its sequences (prompts x n). At most
`max_concurrency` sequences run, at most `max_queue` wait; more get 429.

Counting requests let one /v1/completions body of 100,000 prompts x n=128 (12.8 M sequences) in under a
single slot while everyone else waited; now that body weighs what it asks for (and the server caps a
request's weight before anything is tokenized: see swiftops.server.validation).

The queue is bounded on purpose: an unbounded one turns overload into ever-growing latency and
memory, where a 429 with Retry-After lets a load balancer or client back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from swiftops.protocol.errors import OverloadedError


class AdmissionController:
    """FIFO slots weighted by sequences; must be used from one event loop (the server's)."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0  # sequences admitted
        self._waiting = 0  # sequences queued
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def waiting(self) -> int:
        return self._waiting

    def _reject(self) -> OverloadedError:
        return OverloadedError(
            f"the server is at capacity ({self.running} sequences running of {self.max_concurrency}, "
            f"{self._waiting} waiting of {self.max_queue}); retry after the time in the Retry-After header",
            code="server_overloaded",
        )

    def _fits(self, weight: int) -> bool:
        # A request heavier than the whole capacity runs alone rather than never.
        return self.running + weight <= self.max_concurrency or self.running == 0

    async def acquire(self, weight: int = 1) -> float:
        """Wait until `weight` sequences may run; returns the seconds spent waiting. Raises OverloadedError
        when they do not fit in the queue."""
        weight = max(1, weight)
        if not self._waiters and self._fits(weight):
            self.running += weight
            return 0.0
        if self._waiting + weight > self.max_queue:
            raise self._reject()
        start = time.perf_counter()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, weight)
        self._waiters.append(entry)
        self._waiting += weight
        try:
            await waiter  # _wake() counted us in `running` when it handed the slots over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(weight)  # the slots were handed to us just as we were cancelled: pass them on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                    self._waiting -= weight
                self._wake()  # a heavy request leaving the head may let lighter ones in
            raise
        return time.perf_counter() - start

    def release(self, weight: int = 1) -> None:
        self.running -= max(1, weight)
        self._wake()

    def _wake(self) -> None:
        """Hand freed slots to the queue's head, in order: no barging past it."""
        while self._waiters:
            waiter, weight = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                self._waiting -= weight
                continue
            if not self._fits(weight):
                return
            self._waiters.popleft()
            self._waiting -= weight
            self.running += weight
            waiter.set_result(None)
