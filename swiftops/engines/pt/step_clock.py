"""The GPU time of each step the engine launches, for the prefill bound to keep to (swiftops.engines.pt.step_budget).

A CUDA event is recorded on the engine's stream before a step's inputs are staged and another once its sampling is
queued; the pair is read only once the step's tokens have reached the host, when both events are complete, so
timing never makes the host wait. The first event completes when the GPU reaches the step: while the GPU works
through the step before it (a pipelined launch), the time measured is the step's own. So only pipelined launches
are timed: the first step of a pipeline starts on an idle GPU and would count the host's staging too. Steps whose
sampling waits for the host (a grammar's mask) and steps that ran eagerly are not timed either.

Launch-to-launch intervals on the host would mostly measure the step before (a pipelined step is launched while its
predecessor runs, and the next launch waits for that predecessor's tokens), so they are not used.

A timing that fails (a driver error) turns the clock off, with one warning, and never fails a step.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import torch

from swiftops.engines.pt.step_budget import PrefillBound

logger = logging.getLogger(__name__)

_MAX_OPEN = 8  # steps launched and not read back (two in a pipeline); more means reads stopped: drop the oldest


class StepClock:
    def __init__(self, bound: PrefillBound, device: torch.device) -> None:
        self.bound = bound
        self.device = device
        self.on = True
        self._spare: list[tuple[Any, Any]] = []  # event pairs read back, reused (creating one costs a driver call)
        self._open: deque[tuple[tuple[str, int], tuple[Any, Any]]] = deque()  # (graph bucket, events), in order

    def _failed(self, exc: Exception) -> None:
        self.on = False
        self._open.clear()
        logger.warning(
            "pt engine: steps no longer timed (%s: %s); the prefill bound keeps what it measured",
            type(exc).__name__,
            exc,
        )

    def start(self) -> tuple[Any, Any] | None:
        if not self.on:
            return None
        try:
            events = self._spare.pop() if self._spare else tuple(torch.cuda.Event(enable_timing=True) for _ in range(2))
            events[0].record(torch.cuda.current_stream(self.device))
            return events  # type: ignore[return-value]
        except Exception as exc:
            self._failed(exc)
            return None

    def stop(self, events: tuple[Any, Any] | None, replayed: tuple[str, int] | None) -> None:
        """After the launch: `replayed` is the graph bucket the step ran as, None when it is not to be timed (the
        pair is dropped: its first event may still be pending)."""
        if events is None or not self.on or replayed is None:
            return
        try:
            events[1].record(torch.cuda.current_stream(self.device))
        except Exception as exc:
            self._failed(exc)
            return
        if len(self._open) >= _MAX_OPEN:
            self._open.popleft()  # dropped, not reused: it may still be pending
        self._open.append((replayed, events))

    def read(self) -> None:
        """Hand every completed step's time to the bound, oldest first (called once a step's tokens are read)."""
        try:
            while self._open and self._open[0][1][1].query():
                (kind, size), events = self._open.popleft()
                self.bound.observe(kind, size, events[0].elapsed_time(events[1]))
                self._spare.append(events)
        except Exception as exc:
            self._failed(exc)
