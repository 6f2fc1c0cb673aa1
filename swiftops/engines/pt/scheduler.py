"""Continuous batching: sequences join the running batch at every step and leave as soon as they finish.

Each step decodes every running sequence (one token each) and spends the rest of a token budget on prefill:
first on prompts already being prefilled in chunks, then on newly admitted ones. Admission needs a free batch slot
and KV blocks for the whole prompt; when a decode step runs out of blocks, the most recently admitted
sequence is preempted (its blocks freed; it is recomputed later), never an out-of-memory error.

With prefix caching, an admitted sequence starts with the cached blocks of its longest cached prefix and prefills
only the rest; the full blocks each prefill chunk completes are offered to the cache as the chunk is planned, so a
sequence admitted later in the same step (another choice of an n > 1 request) already shares them.

The scheduler decides; it never touches a sequence's tokens, and its computed count only where it decides it: at
admission (the cached prefix) and at preemption (zero). The post-step stage advances it.
Every pass is linear in the number of running sequences.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.sequence import SeqStatus, Sequence
from swiftops.engines.pt.step_budget import PrefillBound


@dataclass
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)
    computed: bool = False  # set by the post-step stage once the plan's tokens are in the KV cache
    cached: list[int] = field(default_factory=list)  # blocks offered to the prefix cache by this plan's prefills

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager | None,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        admit: Callable[[Sequence, list[Sequence]], bool] | None = None,
    ) -> None:
        self.blocks = blocks  # None: the fallback runner keeps its own caches
        self.admit = admit  # extra admission check (a LoRA slot for the sequence's adapter)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Set by the engine for --max_itl_ratio on a GPU: prefill beside decode rows kept to a multiple of a decode
        # step's time (swiftops.engines.pt.step_budget).
        self.prefill_bound: PrefillBound | None = None

    def _prefill_budget(self, num_decode: int) -> int:
        return max(self.max_num_batched_tokens - num_decode, self.max_num_batched_tokens // 4)

    @property
    def max_step_tokens(self) -> int:
        """The most tokens one step's forward can hold: a full decode batch and the prefill budget it leaves."""
        return self.max_num_seqs + self._prefill_budget(self.max_num_seqs)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out and free its blocks."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        if self.blocks is not None:
            self.blocks.release(seq)
        seq.status = SeqStatus.FINISHED

    def _fits(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks is None or self.blocks.ensure_capacity(seq, num_tokens)

    def _preempt_last(self) -> Sequence:
        victim = self.running.pop()
        if self.blocks is not None:
            self.blocks.release(victim)
        victim.num_computed = 0  # recomputed from its prompt and the tokens it already produced
        victim.status = SeqStatus.WAITING
        self.waiting.appendleft(victim)
        self.num_preemptions += 1
        return victim

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        prefilling: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not SeqStatus.RUNNING:  # preempted earlier in this pass
                continue
            if not (seq.num_computed > 0 and seq.num_pending == 1):
                prefilling.append(seq)
                continue
            while not self._fits(seq, seq.num_tokens):
                if self._preempt_last() is seq:
                    break
            if seq.status is SeqStatus.RUNNING:
                plan.decode.append(seq)
        self._plan_prefills(plan, prefilling)
        return plan

    def schedule_beside(self, decode: list[Sequence]) -> StepPlan:
        """The prefill part of a step whose decode rows are already chosen (pipelined steps: `decode` are the
        sequences of the step in flight that go on, their next token still on the device, so that they have no
        pending token on the host yet): chunks of prompts being prefilled and newly admitted prompts, within the
        budget the decode rows leave. Never preempts; a prefill that does not fit waits for a later step."""
        plan = StepPlan(decode=decode)
        riding = set(map(id, decode))
        self._plan_prefills(plan, [s for s in self.running if s.num_pending > 0 and id(s) not in riding])
        return plan

    def _plan_prefills(self, plan: StepPlan, prefilling: list[Sequence]) -> None:
        # Decode tokens ride in the prefill's forward, so they count against the step's token budget: a steady
        # forward size during a long prefill phase (the allocator reuses its blocks) and a bounded step time. A
        # quarter of the budget stays for prefill so that a full decode batch never starves it.
        budget = self._prefill_budget(len(plan.decode))
        if plan.decode and self.prefill_bound is not None:
            budget = min(budget, self.prefill_bound.prefill_tokens(len(plan.decode)))
        for seq in prefilling:
            if budget <= 0 or seq.status is not SeqStatus.RUNNING:
                continue
            chunk = min(seq.num_pending, budget)
            if self._fits(seq, seq.num_computed + chunk):
                self._plan_prefill(plan, seq, chunk)
                budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            found = self.blocks.cached_prefix(seq) if self.blocks is not None else []
            # Admit only when the whole prompt (plus one generated token) fits, so a prefill never stalls.
            if self.blocks is not None and not self.blocks.can_admit(seq, seq.num_tokens + 1, found):
                break
            if self.admit is not None and not self.admit(seq, self.running):
                break
            if self.blocks is not None:
                seq.num_computed = self.blocks.take_prefix(seq, found)
            chunk = min(seq.num_pending, budget)
            self._fits(seq, seq.num_computed + chunk)
            self.waiting.popleft()
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            self._plan_prefill(plan, seq, chunk)
            budget -= chunk

    def _plan_prefill(self, plan: StepPlan, seq: Sequence, chunk: int) -> None:
        plan.prefill.append((seq, chunk))
        if self.blocks is not None:
            plan.cached += self.blocks.cache_computed(seq, seq.num_computed + chunk)

    def forget_cached(self, plan: StepPlan) -> None:
        """The plan's step failed: the blocks it offered to the prefix cache may hold garbage."""
        if self.blocks is not None and plan.cached:
            self.blocks.forget(plan.cached)
            plan.cached = []
