"""The GPU time of each step the engine launches, for the prefill bound to keep to (swiftops.engines.pt.step_budget).

A CUDA event is recorded before a step's inputs are staged and another once its sampling is queued; the pair is read
only once the step's tokens have reached the host, when both events are complete, so timing never makes the host
wait. The first event completes when the GPU reaches the step: while the GPU works through the step before it (a
pipelined launch), the time measured is the step's own; when the GPU had gone idle, it also counts the host's
staging that the GPU waited for, which is part of the gap its decoding sequences see.

Launch-to-launch intervals on the host would mostly measure the step before (a pipelined step is launched while its
predecessor runs, and the next launch waits for that predecessor's tokens), so they are not used.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from swiftops.engines.pt.scheduler import StepPlan
from swiftops.engines.pt.step_budget import PrefillBound

_MAX_OPEN = 8  # steps launched and not read back (two in a pipeline); more means reads stopped: drop the oldest


class StepClock:
    def __init__(self, bound: PrefillBound) -> None:
        self.bound = bound
        self._spare: list[tuple[Any, Any]] = []  # event pairs read back, reused (creating one costs a driver call)
        self._open: deque[tuple[int, int, tuple[Any, Any]]] = deque()  # (prefill tokens, decode rows, events)

    def start(self) -> tuple[Any, Any]:
        events = (
            self._spare.pop()
            if self._spare
            else (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        )
        events[0].record()
        return events

    def stop(self, events: tuple[Any, Any], plan: StepPlan) -> None:
        events[1].record()
        if len(self._open) >= _MAX_OPEN:
            self._spare.append(self._open.popleft()[2])
        self._open.append((sum(chunk for _, chunk in plan.prefill), len(plan.decode), events))

    def read(self) -> None:
        """Hand every completed step's time to the bound, oldest first (called once a step's tokens are read)."""
        while self._open and self._open[0][2][1].query():
            prefill, decode, events = self._open.popleft()
            self.bound.observe(prefill, decode, events[0].elapsed_time(events[1]))
            self._spare.append(events)
