"""Continuous batching: sequences join the running batch at every step and leave as soon as they finish.

Each step decodes every running sequence (one token each) and spends a token budget on prefill: first on
prompts already being prefilled in chunks, then on newly admitted ones. Admission needs a free batch slot
and KV blocks for the whole prompt; when a decode step runs out of blocks, the most recently admitted
sequence is preempted (its blocks freed; it is recomputed later), never an out-of-memory error.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.sequence import Sequence, SeqStatus


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class Scheduler:
    def __init__(self, cache: Optional[PagedKVCache], max_num_seqs: int, max_num_batched_tokens: int,
                 admit: Optional[Callable[[Sequence, list[Sequence]], bool]] = None) -> None:
        self.cache = cache
        self.admit = admit  # extra admission check (a LoRA slot for the sequence's adapter)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self.cache is not None:
            self.cache.release(seq.block_table)
        seq.status = SeqStatus.FINISHED

    def _fits(self, seq: Sequence, num_tokens: int) -> bool:
        return self.cache is None or self.cache.ensure_capacity(seq.block_table, num_tokens)

    def _preempt(self, victim: Sequence) -> None:
        self.running.remove(victim)
        if self.cache is not None:
            self.cache.release(victim.block_table)
        victim.num_computed = 0  # recomputed from its prompt and the tokens it already produced
        victim.status = SeqStatus.WAITING
        self.waiting.appendleft(victim)
        self.num_preemptions += 1

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        for seq in list(self.running):
            if seq not in self.running or not (seq.num_computed > 0 and seq.num_pending == 1):
                continue
            while not self._fits(seq, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                plan.decode.append(seq)
        budget = self.max_num_batched_tokens
        for seq in self.running:
            if seq in plan.decode or budget <= 0:
                continue
            chunk = min(seq.num_pending, budget)
            if self._fits(seq, seq.num_computed + chunk):
                plan.prefill.append((seq, chunk))
                budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self.cache is not None:
                # Admit only when the whole prompt (plus one generated token) fits, so a prefill never stalls.
                if self.cache.blocks_needed(seq.num_tokens + 1) - len(seq.block_table) > self.cache.allocator.num_free:
                    break
            if self.admit is not None and not self.admit(seq, self.running):
                break
            chunk = min(seq.num_pending, budget)
            self._fits(seq, seq.num_computed + chunk)
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            plan.prefill.append((seq, chunk))
            budget -= chunk
        return plan
