"""The step clock (swiftops.engines.pt.step_clock): each launched step's GPU time reaches the prefill bound once its
events are complete, oldest first, and never earlier. torch.cuda.Event cannot run without a GPU: here it is
replaced at its outermost call by an event whose completion the test sets; tests/engines/pt/test_pt_engine_gpu.py
runs the real events."""
from __future__ import annotations

import torch

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

    def record(self, stream=None) -> None:
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
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    seen = []
    bound = PrefillBound(1.75, 800.0, 256)
    bound.observe = lambda kind, size, ms: seen.append((kind, size, ms))
    clock = StepClock(bound, torch.device("cuda"))
    first = clock.start()
    clock.stop(first, ("mixed", 512))
    second = clock.start()
    clock.stop(second, ("decode", 128))
    untimed = clock.start()
    clock.stop(untimed, None)  # an eager step, or one sampled later: dropped
    clock.read()
    assert seen == []  # nothing complete
    _complete(second, 5.0, 6.5)
    clock.read()
    assert seen == []  # the second is complete, the first is not: order is kept
    _complete(first, 2.0, 5.0)
    clock.read()
    assert seen == [("mixed", 512, 3.0), ("decode", 128, 1.5)]
    made = _Event.made
    third = clock.start()  # a pair read back is reused, not made again; the dropped pair is not
    assert _Event.made == made and third in (first, second) and third is not untimed


def test_reads_that_stop_leave_at_most_a_few_steps_open(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    clock = StepClock(PrefillBound(1.75, 800.0, 256), torch.device("cuda"))
    for _ in range(20):
        clock.stop(clock.start(), ("decode", 8))
    assert len(clock._open) == 8


def test_a_timing_that_fails_turns_the_clock_off_and_never_fails_the_step(monkeypatch, caplog):
    class Broken(_Event):
        def elapsed_time(self, end):
            raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(torch.cuda, "Event", Broken)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    clock = StepClock(PrefillBound(1.75, 800.0, 256), torch.device("cuda"))
    events = clock.start()
    clock.stop(events, ("decode", 8))
    _complete(events, 1.0, 2.0)
    clock.read()  # no exception
    assert not clock.on and "no longer timed" in caplog.text
    assert clock.start() is None
    clock.stop(None, ("decode", 8))
    assert not clock._open
