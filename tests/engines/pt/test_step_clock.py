"""The step clock (swiftops.engines.pt.step_clock): each launched step's GPU time reaches the prefill bound once its
events are complete, oldest first, and never earlier. torch.cuda.Event cannot run without a GPU: here it is
replaced at its outermost call by an event whose completion the test sets; tests/engines/pt/test_pt_engine_gpu.py
runs the real events."""
from __future__ import annotations

import torch

from swiftops.engines.pt.scheduler import StepPlan
from swiftops.engines.pt.step_budget import PrefillBound
from swiftops.engines.pt.step_clock import StepClock


class _Event:
    """torch.cuda.Event's surface the clock uses: record, query, elapsed_time."""

    made = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        _Event.made += 1
        self.at: float | None = None
        self.done = False

    def record(self) -> None:
        self.at = None
        self.done = False

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end: _Event) -> float:
        assert self.done and end.done
        return end.at - self.at


def _complete(events, start, end):
    events[0].at, events[0].done, events[1].at, events[1].done = start, True, end, True


def test_times_reach_the_bound_in_launch_order_once_complete(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    seen = []
    bound = PrefillBound(1.75, 800.0, 256)
    bound.observe = lambda prefill, decode, ms: seen.append((prefill, decode, ms))
    clock = StepClock(bound)
    seq = object()
    first, second = clock.start(), None
    clock.stop(first, StepPlan(decode=[seq] * 3, prefill=[(seq, 100), (seq, 28)]))
    second = clock.start()
    clock.stop(second, StepPlan(decode=[seq] * 4))
    clock.read()
    assert seen == []  # nothing complete
    _complete(second, 5.0, 6.5)
    clock.read()
    assert seen == []  # the second is complete, the first is not: order is kept
    _complete(first, 2.0, 5.0)
    clock.read()
    assert seen == [(128, 3, 3.0), (0, 4, 1.5)]
    made = _Event.made
    third = clock.start()  # a pair read back is reused, not made again
    assert _Event.made == made and third in (first, second)


def test_reads_that_stop_leave_at_most_a_few_steps_open(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    clock = StepClock(PrefillBound(1.75, 800.0, 256))
    for _ in range(20):
        clock.stop(clock.start(), StepPlan(decode=[object()]))
    assert len(clock._open) == 8
