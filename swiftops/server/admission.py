"""Admission control by work, not by requests: a request weighs its sequences (prompts x n). At most
`max_concurrency` sequences run, at most `max_queue` wait; more get 429.

Counting requests let one /v1/completions body of 100,000 prompts x n=128 (12.8 M sequences) in under a
single slot while everyone else waited; now that body weighs what it asks for (and the server caps a
request's weight before anything is tokenized: see swiftops.server.validation).

The queue is bounded on purpose: an unbounded one turns overload into ever-growing latency and
memory, where a 429 with Retry-After lets a load balancer or client back off.

With several API-server processes the counts are shared (swiftops.server.admission_counts) and bound the
deployment as a whole. Each process keeps its own FIFO of waiters and a slot freed in another process is noticed
by polling while this one has waiters (every 5 ms); no process admits a new request while any process has one
waiting. Between the processes' queues the order is only roughly first come, first served: which waiter takes a
freed slot depends on which process polls first, so a request heavier than the whole capacity (it runs only
when nothing else does) can wait long behind a steady flow of light ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from swiftops.protocol.errors import OverloadedError
from swiftops.server.admission_counts import AdmissionCounts, LocalCounts

_SHARED_POLL_SECONDS = 0.005


class AdmissionController:
    """FIFO slots weighted by sequences; must be used from one event loop (the server's)."""

    def __init__(self, max_concurrency: int, max_queue: int, counts: AdmissionCounts | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.counts: AdmissionCounts = counts if counts is not None else LocalCounts()
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._polling: asyncio.TimerHandle | None = None

    @property
    def running(self) -> int:
        """Sequences admitted (in every API-server process, when the counts are shared)."""
        return self.counts.running

    @property
    def waiting(self) -> int:
        """Sequences queued (in every API-server process, when the counts are shared)."""
        return self.counts.waiting

    def _reject(self) -> OverloadedError:
        return OverloadedError(
            f"the server is at capacity ({self.running} sequences running of {self.max_concurrency}, "
            f"{self.waiting} waiting of {self.max_queue}); retry after the time in the Retry-After header",
            code="server_overloaded",
        )

    async def acquire(self, weight: int = 1) -> float:
        """Wait until `weight` sequences may run; returns the seconds spent waiting. Raises OverloadedError
        when they do not fit in the queue."""
        weight = max(1, weight)
        # No barging: not past this process's waiters, nor (shared counts) past another process's.
        if not self._waiters and not self.counts.waiting and self.counts.try_run(weight, self.max_concurrency):
            return 0.0
        if not self.counts.try_queue(weight, self.max_queue):
            raise self._reject()
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (waiter, weight)
        self._waiters.append(entry)
        if self.counts.shared:
            self._poll_soon(loop)
        try:
            await waiter  # _wake() counted us in `running` when it handed the slots over
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(weight)  # the slots were handed to us just as we were cancelled: pass them on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                    self.counts.add(0, -weight)
                self._wake()  # a heavy request leaving the head may let lighter ones in
            raise
        return time.perf_counter() - start

    def release(self, weight: int = 1) -> None:
        self.counts.add(-max(1, weight), 0)
        self._wake()

    def _wake(self) -> None:
        """Hand freed slots to the queue's head, in order: no barging past it."""
        while self._waiters:
            waiter, weight = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                self.counts.add(0, -weight)
                continue
            if not self.counts.try_promote(weight, self.max_concurrency):
                return
            self._waiters.popleft()
            waiter.set_result(None)

    def _poll_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._polling is None:
            self._polling = loop.call_later(_SHARED_POLL_SECONDS, self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        """Shared counts: slots freed by another API-server process wake no one here; look again."""
        self._polling = None
        self._wake()
        if self._waiters:
            self._poll_soon(loop)
