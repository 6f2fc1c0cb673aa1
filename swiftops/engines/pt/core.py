"""The engine loop: one background thread that schedules, runs the model and hands out tokens.

Callers on any thread `submit` sequences and `abort` them; every step the loop takes new arrivals,
drops aborted sequences, runs the scheduled batch, samples, detokenizes, checks stop conditions and
calls each sequence's sink with what it produced. A failure inside a step (an exception, an out-of-memory)
splits the batch: each sequence of the step is recomputed alone, so only the one that fails by itself gets
the error in its sink, and the loop carries on with the others.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from concurrent import futures
from typing import Any

import torch

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.pt.detokenizer import IncrementalDetokenizer
from swiftops.engines.pt.fault_injection import FaultInjector
from swiftops.engines.pt.guided_decoding import fill_mask_async, take_ahead
from swiftops.engines.pt.host_staging import staging_for
from swiftops.engines.pt.openmp_pool import release_calling_thread_pool
from swiftops.engines.pt.post_step import PostStep, advance
from swiftops.engines.pt.sampler import sample, sample_on_device
from swiftops.engines.pt.scheduler import Scheduler, StepPlan
from swiftops.engines.pt.sequence import AsyncSink, Sequence, deliver_all
from swiftops.engines.pt.step_clock import StepClock
from swiftops.protocol import EngineError

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(
        self,
        runner: Any,
        scheduler: Scheduler,
        tokenizer: Any,
        eos_token_ids: set[int],
        max_model_len: int,
        device: torch.device,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.post_step = PostStep(eos_token_ids, max_model_len)
        self.device = device
        self._inbox: deque[Sequence] = deque()
        self._aborts: deque[int] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._by_id: dict[int, Sequence] = {}
        self._outbox: list[tuple[Any, SequenceOutput]] = []  # (sink, output) of the current step
        self.steps = 0
        self.pipelined_steps = 0  # steps launched before the previous step's tokens reached the host
        self.pipelined_prefills = 0  # ...of which prefilled beside their decode rows (or alone)
        self.faults = FaultInjector.from_env(tokenizer)  # None unless a reliability test asks for faults
        # pipelined steps timed on the GPU for the prefill bound to keep to (swiftops.engines.pt.step_clock)
        bound = scheduler.prefill_bound
        self.clock = StepClock(bound, device) if bound is not None and device.type == "cuda" else None
        # The engine thread waits on the GPU with the GIL released, then must get it back at once to launch the
        # next step. With Python's default 5 ms switch interval a busy thread beside it (the server's event loop
        # streaming tokens) keeps the GIL for up to 5 ms per step; 0.5 ms bounds that wait.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        if device.type == "cpu":
            # Every step's CPU ops run on the engine thread: the loading thread's OpenMP workers would only compete
            # with the engine thread's for the cores (swiftops.engines.pt.openmp_pool).
            release_calling_thread_pool()
        self._thread = threading.Thread(target=self._loop, name="swiftops-pt-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread --------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        """Hand over a request's sequences (its `n` choices) at once: the scheduler sees them in the same step."""
        now = time.monotonic()
        for seq in seqs:
            seq.arrival = now
            if seq.params.seed is not None:
                seq.generator = torch.Generator(device=self.device).manual_seed(seq.params.seed)
            if not seq.params.token_ids_only:  # (else the API-server process detokenizes)
                seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.prompt_ids, seq.params.stop)
        with self._wake:
            self._inbox.extend(seqs)
            self._wake.notify()

    def abort(self, seq_id: int) -> None:
        with self._wake:
            self._aborts.append(seq_id)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting) + len(self._inbox)

    # ---- the loop ----------------------------------------------------------------------------
    def _take_arrivals(self) -> None:
        with self._wake:
            while not (self._inbox or self._aborts or self.scheduler.has_work or self._stopped):
                self._wake.wait()
            aborts, self._aborts = list(self._aborts), deque()
        self._admit_arrivals()
        for seq_id in aborts:
            aborted = self._by_id.pop(seq_id, None)
            if aborted is not None:
                self._retire(aborted)

    def _admit_arrivals(self) -> None:
        """New sequences into the scheduler's queue (without waiting for any)."""
        with self._wake:
            arrivals, self._inbox = list(self._inbox), deque()
        for seq in arrivals:
            self._by_id[seq.seq_id] = seq
            self.scheduler.add(seq)

    def _retire(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        self.runner.release(seq)
        self._by_id.pop(seq.seq_id, None)

    def _loop(self) -> None:
        while True:
            self._take_arrivals()
            if self._stopped:
                for seq in list(self._by_id.values()):
                    self._fail(seq, EngineError("the engine was shut down"))
                self._flush()
                return
            plan = self.scheduler.schedule()
            if not plan:
                if self.scheduler.waiting and not self.scheduler.running:
                    # Nothing runs and the head of the queue can never fit: fail it rather than spin.
                    self._fail(
                        self.scheduler.waiting[0],
                        EngineError(
                            "the KV cache is too small for this prompt; "
                            "raise --kv_cache_memory_gb or --gpu_memory_utilization"
                        ),
                    )
            else:
                self._step(plan)
            self._flush()

    def _deliver(self, seq: Sequence, out: SequenceOutput) -> None:
        self._outbox.append((seq.sink, out))

    def _flush(self) -> None:
        """Hand this step's outputs over: one wake-up per event loop, plain sinks called directly."""
        by_loop: dict[Any, list[tuple[Any, SequenceOutput]]] = {}
        for sink, out in self._outbox:
            if isinstance(sink, AsyncSink):
                by_loop.setdefault(sink.loop, []).append((sink.queue, out))
            else:
                sink(out)
        self._outbox = []
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(deliver_all, items)

    def _run_plan(self, plan: StepPlan, emitted: set[int]) -> None:
        if self.faults is not None:
            self.faults.check([*plan.decode, *(s for s, _ in plan.prefill)])
        with torch.inference_mode():
            results = self.runner.run(plan)
            advance(plan)
            for result in results:
                self._append_sampled(result.seqs, sample(result.logits, result.seqs))
                emitted.update(s.seq_id for s in result.seqs)

    def _step(self, plan: StepPlan) -> None:
        if self._can_pipeline(plan):
            self._pipelined(plan)
            return
        emitted: set[int] = set()
        try:
            self._run_plan(plan, emitted)
            self.steps += 1
        except Exception as exc:
            logger.exception("engine step failed; retrying its sequences one by one")
            if not plan.computed:  # the blocks this step was to fill may hold garbage: out of the prefix cache
                self.scheduler.forget_cached(plan)
            left = [
                s
                for s in [*plan.decode, *(s for s, _ in plan.prefill)]
                if s.seq_id not in emitted and s.seq_id in self._by_id
            ]
            if len(left) == 1:
                self._fail(left[0], self._as_engine_error(exc))
                return
            self._free_memory(exc)
            # Where each sequence would stand after this step (its tokens are in the cache once `advance` ran).
            chunks = {s.seq_id: chunk for s, chunk in [*plan.prefill, *((s, 1) for s in plan.decode)]}
            for seq in left:
                self._step_alone(seq, seq.num_computed + (0 if plan.computed else chunks[seq.seq_id]))

    # ---- pipelined steps -------------------------------------------------------------------------
    # The host work of a step (tokens to the host, stop checks, outputs, the next step's inputs) would leave the GPU
    # idle. Instead, step N+1 is launched from step N's tokens while they are still on the device, and the host then
    # handles step N while the GPU runs N+1. Step N+1 is the sequences of N that go on, as decode rows, plus whatever
    # prefill the scheduler adds beside them (prompts that arrived meanwhile, the next chunk of a long prompt): under
    # a steady stream of arrivals nearly every step prefills something, and a step that waited for the host would
    # be an inter-token gap of its own (issue 16: at 128 clients a mixed step took 2.4x a decode step). A sequence
    # that turns out to have stopped at N has its N+1 token dropped; its blocks may be handed to another sequence at
    # once, since every later write to them is queued on the same stream behind N+1.

    def _can_pipeline(self, plan: StepPlan) -> bool:
        return (
            self.faults is None and getattr(self.runner, "can_pipeline", False) and not (self._aborts or self._stopped)
        )

    def _continuing(self, seqs: list[Sequence]) -> list[Sequence] | None:
        """The sequences that go on after the step in flight (those ending there by length are known now), if the
        next step can be launched before its tokens are seen: no penalty needs them, the cache has room."""
        limit = self.post_step.max_model_len
        blocks = self.scheduler.blocks
        assert blocks is not None  # narrows for mypy: pipelined steps run on the paged cache
        page = blocks.block_size
        nxt = []
        for seq in seqs:  # one pass: this runs for every sequence at every step
            params, count = seq.params, len(seq.prompt_ids) + len(seq.output_ids)
            if seq.aborted or len(seq.output_ids) + 1 >= params.max_tokens or count + 1 >= limit:
                continue
            if params.penalized:  # its penalty needs the token in flight on the host
                return None
            if len(seq.block_table) * page <= count and not blocks.ensure_capacity(seq, count + 1):
                return None
            nxt.append(seq)
        return nxt

    def _next_plan(self, batch: list[Sequence]) -> StepPlan | None:
        """What to launch while the step in flight (which samples `batch`) runs, or None: the pipeline ends once
        that step is handled (an abort or shutdown to handle, a penalty or a full cache, nothing left to run)."""
        if self._aborts or self._stopped:
            return None
        self._admit_arrivals()
        nxt = self._continuing(batch)
        if nxt is None:
            return None
        plan = self.scheduler.schedule_beside(nxt)
        return plan if plan else None

    def _pipelined(self, plan: StepPlan) -> None:
        in_flight: list[StepPlan] = [plan]  # plans launched and not yet handled: forgotten by the cache on failure
        try:
            with torch.inference_mode():
                self._pipeline(plan, in_flight)
        except Exception:
            logger.exception("engine step failed; retrying its sequences one by one")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # whatever was launched is done before the recomputes
            for launched in in_flight:  # the blocks these were to fill may hold garbage: out of the prefix cache
                self.scheduler.forget_cached(launched)
            for seq in [s for s in self.scheduler.running if s.seq_id in self._by_id]:
                self._step_alone(seq, seq.num_tokens)

    def _launch(self, plan: StepPlan, tokens: torch.Tensor | None, timed: bool = True) -> tuple[list[Sequence], Any]:
        """Run `plan` (its decode rows' tokens on the device when `tokens` is given) and queue the sampling of the
        rows that sample; returns those rows and their PendingSample, or the logits still to sample (a grammar's
        mask for a row whose token is in flight is filled only once that token is on the host). `timed`: on the
        GPU for the prefill bound, where there is one (a decode step, or a prefill beside decode rows, from a
        graph, sampled at once; see swiftops.engines.pt.step_clock)."""
        if self.clock is None or not timed:
            return self._launch_untimed(plan, tokens)
        events = self.clock.start()
        launched = self._launch_untimed(plan, tokens)
        replayed = getattr(self.runner, "replayed", None)
        sampled_now = not isinstance(launched[1], torch.Tensor)
        self.clock.stop(events, replayed if sampled_now and plan.decode else None)
        return launched

    def _launch_untimed(self, plan: StepPlan, tokens: torch.Tensor | None) -> tuple[list[Sequence], Any]:
        results = self.runner.run(plan, tokens)
        if not results or not results[0].seqs:  # chunks of long prompts alone: nothing to sample
            return [], None
        seqs, logits = results[0].seqs, results[0].logits
        if tokens is not None and any(s.grammar is not None for s in seqs):
            return seqs, logits
        return seqs, sample_on_device(logits, seqs)

    def _pipeline(self, plan: StepPlan, in_flight: list[StepPlan]) -> None:
        batch, pending = self._launch(plan, None, timed=False)  # on an idle GPU: it would count the host's staging
        while True:
            advance(plan)
            nxt = self._next_plan(batch)
            step_seqs: list[Sequence] = []
            following: Any = None
            if nxt is not None:
                tokens = None
                if nxt.decode:
                    going_on = set(map(id, nxt.decode))
                    rows = (
                        [i for i, s in enumerate(batch) if id(s) in going_on] if len(nxt.decode) < len(batch) else None
                    )
                    tokens = (
                        pending.chosen
                        if rows is None
                        else pending.chosen[staging_for(pending.chosen.device).to_device(rows)]
                    )
                in_flight.append(nxt)
                step_seqs, following = self._launch(nxt, tokens)
                self.pipelined_steps += 1
                self.pipelined_prefills += bool(nxt.prefill)
            sampled = pending.collect() if pending is not None else None
            if self.clock is not None:
                self.clock.read()
            del in_flight[0]  # (`plan`: handled below)
            if isinstance(following, torch.Tensor):  # logits held for a grammar's mask (see _launch)
                following = self._sample_held(batch, sampled, step_seqs, following)
            elif sampled is not None:
                self._append_sampled(batch, sampled)
            self.steps += 1
            self._flush()
            if nxt is None:
                return
            for seq in nxt.decode:  # the step launched above computes each one's last sampled token
                seq.num_computed = seq.num_tokens - 1
            plan, pending = nxt, following
            batch = [s for s in step_seqs if s.seq_id in self._by_id]
            if not batch:  # every row stopped at the step just handled (or none samples): nothing to read back
                if not plan.prefill:
                    return
                pending = None
            elif len(batch) < len(step_seqs):  # some stopped at the step just handled: read back only their rows
                alive = {s.seq_id for s in batch}
                pending = _RowView(pending, [i for i, s in enumerate(step_seqs) if s.seq_id in alive])

    def _sample_held(self, batch: list[Sequence], sampled: Any, step_seqs: list[Sequence], logits: torch.Tensor) -> Any:
        """Hand over the step in flight's tokens (`sampled`, of `batch`) and sample the step launched after it,
        whose grammar masks needed them. The matchers take the tokens just read first, since the next mask needs
        them; its fill (xgrammar, without the GIL) then runs on a worker thread beside the post-step, which only
        reads them."""
        if sampled is not None and not take_ahead(batch, sampled.token_ids):
            # a rejected token: the post-step reports it before the matchers are read again
            self._append_sampled(batch, sampled)
            return sample_on_device(logits, step_seqs)
        filling = fill_mask_async(step_seqs, logits.shape[-1], pin=logits.is_cuda)
        try:
            if sampled is not None:
                self._append_sampled(batch, sampled)
        except BaseException:
            futures.wait([filling])  # the worker is done with the matchers before the retries use them
            raise
        return sample_on_device(logits, step_seqs, filling.result())

    def _step_alone(self, seq: Sequence, target: int) -> None:
        """Recompute `seq` alone from its first token up to where the failed step would have left it (as after a
        preemption; its KV blocks are still held): whatever the failed step half-did is overwritten, either runner.
        Blocks in the prefix cache (computed by earlier steps, maybe shared) are kept, never rewritten."""
        blocks = self.scheduler.blocks
        seq.num_computed = min(blocks.trusted_prefix(seq), target - 1) if blocks is not None else 0
        try:
            self._run_plan(StepPlan(prefill=[(seq, target - seq.num_computed)]), set())
        except Exception as exc:
            logger.exception("sequence %d fails alone", seq.seq_id)
            self._free_memory(exc)
            self._fail(seq, self._as_engine_error(exc))

    @staticmethod
    def _as_engine_error(exc: Exception) -> EngineError:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, torch.OutOfMemoryError):
            return EngineError(
                f"out of memory while generating this request alone ({exc}); send a shorter prompt "
                f"or a lower max_tokens, or give the server more memory"
            )
        return EngineError(f"generation failed: {type(exc).__name__}: {exc}")

    def _free_memory(self, exc: Exception) -> None:
        if isinstance(exc, torch.OutOfMemoryError) and self.device.type == "cuda":
            torch.cuda.empty_cache()  # what the failed batch allocated, before the smaller retries

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        self._retire(seq)
        self._deliver(
            seq,
            SequenceOutput(
                index=seq.index,
                finish_reason="error",
                error=error,
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.output_ids),
            ),
        )

    def _append_sampled(self, seqs: list[Sequence], result: Any) -> None:
        """One sampled token per sequence through the post-step stage; finished sequences retire, outputs go out."""
        for seq, token, info in zip(seqs, result.token_ids, result.logprobs, strict=False):
            if seq.aborted or seq.seq_id not in self._by_id:
                continue
            out = self.post_step.append(seq, token, info)
            if out is None:
                continue
            if out.finish_reason is not None:
                self._retire(seq)
            self._deliver(seq, out)


class _RowView:
    """A pending sample of a batch, read back for a subset of its rows (sequences that stopped are dropped)."""

    def __init__(self, pending: Any, rows: list[int]) -> None:
        self.pending = pending
        self.rows = rows
        self.chosen = pending.chosen[staging_for(pending.chosen.device).to_device(rows)]

    def collect(self) -> Any:
        result = self.pending.collect()
        result.token_ids = [result.token_ids[i] for i in self.rows]
        result.logprobs = [result.logprobs[i] for i in self.rows]
        return result
