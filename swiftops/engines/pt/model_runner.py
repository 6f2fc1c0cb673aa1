"""Running one scheduled step through the model.

`PagedRunner` is the fast path: every token of the step packed into one row, the paged KV cache, and
logits only where a token is sampled. `FallbackRunner` runs each sequence alone with transformers' own
`DynamicCache` (what `generate` does): slower, but right for any causal LM; it is chosen automatically
when the fast path fails its start-up self-check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from swiftops.engines.pt.attention import CONTEXT_KWARG, PagedAttentionUnsupported, StepContext, triton_available
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.cpu_decode import LeanDecoder
from swiftops.engines.pt.host_staging import staging_for
from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.mm_prefill import embed_prompt_once, packed_embeddings, rope_columns, uses_mrope
from swiftops.engines.pt.scheduler import StepPlan
from swiftops.engines.pt.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass
class RunnerOutput:
    """One forward's result: the sequences that sample a token this step and their logits rows [len(seqs), V]."""

    seqs: list[Sequence]
    logits: torch.Tensor


class PagedRunner:
    name = "paged"

    def __init__(
        self,
        model: Any,
        cache: PagedKVCache,
        blocks: BlockManager,
        device: torch.device,
        graphs: Any = None,
        lora: Any = None,
        mixed_graphs: Any = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.blocks = blocks
        self.device = device
        self.graphs = graphs  # a captured CudaGraphDecoder, or None (CPU, --enforce_eager)
        self.mixed_graphs = mixed_graphs  # a captured CudaGraphMixedSteps, or None (also: LoRA, M-RoPE)
        self.lora = lora  # a LoraManager, or None
        self.mrope = uses_mrope(model)  # Qwen2-VL-style 3-D rotary positions
        self.use_triton = triton_available(device)
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
        # The CPU's decode forward without transformers' per-layer glue (cpu_decode), once the engine checked it;
        # only without LoRA and M-RoPE.
        self.lean: LeanDecoder | None = None
        # The graph the last step replayed: ("decode", batch bucket) or ("mixed", token bucket); None when it ran
        # eagerly (the step clock times graph buckets only: swiftops.engines.pt.step_clock).
        self.replayed: tuple[str, int] | None = None

    def _set_lora(self, per_token: list[int]) -> None:
        if self.lora is None:
            return
        active = sorted(set(per_token) - {0})
        self.lora.set_step(staging_for(self.device).to_device(per_token) if active else None, active)

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: StepContext,
        keep: torch.Tensor,
        rope: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        position_ids = positions[None]
        if self.mrope:  # [4, 1, T]: the plain index, then (t, h, w); text tokens use their index on all axes
            rope = rope if rope is not None else position_ids.expand(3, -1)
            position_ids = torch.cat([position_ids, rope]).unsqueeze(1)
        inputs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids[None]}
        out = self.model(
            **inputs, position_ids=position_ids, use_cache=False, logits_to_keep=keep, **{CONTEXT_KWARG: ctx}
        )
        return out.logits[0]

    def decode(self, seqs: list[Sequence], tokens: torch.Tensor | None = None) -> torch.Tensor:
        """One token of each sequence: its last one, or `tokens` [len(seqs)] still on the device (the step in
        flight sampled them and the host has not appended them yet: pipelined decode)."""
        self.blocks.sync()  # blocks appended since the last step, onto the device tables
        offset = 1 if tokens is None else 0
        positions = [s.num_tokens - offset for s in seqs]
        rope = None
        if self.mrope:
            rope = staging_for(self.device).to_device(
                [[p + s.rope_delta for s, p in zip(seqs, positions, strict=False)]] * 3
            )
        ids = [s.last_token for s in seqs] if tokens is None else tokens
        rows = [s.table_row for s in seqs]
        self.replayed = None
        if self.graphs is not None and len(seqs) <= self.graphs.buckets[-1]:
            logits = self.graphs.run(ids, positions, rows, [s.lora_slot for s in seqs], rope)
            self.replayed = ("decode", self.graphs.last_bucket)
            return logits
        if tokens is None:
            ids_t, pos_t, rows_t = staging_for(self.device).to_device([ids, positions, rows])
        else:
            ids_t = tokens
            pos_t, rows_t = staging_for(self.device).to_device([positions, rows])
        ctx = decode_context(
            self.cache,
            self.blocks,
            pos_t,
            rows_t,
            use_triton=self.use_triton,
            num_splits=self._splits(len(seqs)),
            host_ctx_lens=[p + 1 for p in positions],
        )
        if self.lean is not None:
            return self.lean.forward(ids_t, pos_t, ctx)
        self._set_lora([s.lora_slot for s in seqs])
        return self._forward(ids_t, pos_t, ctx, torch.arange(len(seqs), device=self.device), rope)

    @property
    def can_pipeline(self) -> bool:
        """Decode steps can be launched from device-side tokens (text models; M-RoPE positions need the host)."""
        return not self.mrope

    def _splits(self, batch: int) -> int:
        if not self.use_triton:
            return 1
        from swiftops.engines.pt.triton_attention import decode_splits

        return decode_splits(batch * self.cache.shape.num_kv_heads, self.num_sms)

    def prefill(
        self, items: list[tuple[Sequence, int]], decode_tail: int = 0, tail_tokens: torch.Tensor | None = None
    ) -> RunnerOutput:
        """`decode_tail`: how many of the last items are decode rows riding along (one token each). `tail_tokens`:
        those rows' tokens [decode_tail] still on the device (pipelined steps: the step in flight sampled them and
        the host has not appended them yet); each row then sits one past its host tokens."""
        self.blocks.sync()
        head = len(items) - decode_tail if tail_tokens is not None else len(items)
        ids: list[int] = []
        positions: list[int] = []
        lora_slots: list[int] = []
        rows: list[int] = []
        q_lens: list[int] = []
        ctx_lens: list[int] = []
        keep: list[int] = []
        finishing: list[Sequence] = []
        ropes: list[torch.Tensor] = []
        mm_spans: list[tuple[Sequence, int, int, int]] = []
        for i, (seq, chunk) in enumerate(items):
            start, end = seq.num_computed, seq.num_computed + chunk
            embed_prompt_once(self.model, seq)
            if seq.mm_embeds is not None:
                mm_spans.append((seq, len(ids), start, end))
            if self.mrope:
                ropes.append(rope_columns(seq, start, end, self.device))
            ids.extend(seq.ids_between(start, end) if i < head else (0,))  # (the device token goes in below)
            positions.extend(range(start, end))
            lora_slots.extend([seq.lora_slot] * chunk)
            rows.append(seq.table_row)
            q_lens.append(chunk)
            ctx_lens.append(end)
            if end >= seq.num_tokens:  # (a decode row fed from the device ends one past its host tokens)
                keep.append(len(ids) - 1)
                finishing.append(seq)
        mixed = self.mixed_graphs
        self.replayed = None
        if mixed is not None and not mm_spans and mixed.fits(len(ids), len(rows)):
            row_of_token = [row for row, n in zip(rows, q_lens, strict=True) for _ in range(n)]
            bucket = mixed.stage(ids, positions, row_of_token, rows, q_lens, ctx_lens, keep, decode_tail, tail_tokens)
            logits = mixed.replay(bucket, len(finishing))
            if bucket in mixed.graphs:
                self.replayed = ("mixed", bucket)
            return RunnerOutput(finishing, logits)
        upload = staging_for(self.device).to_device
        host, meta = upload(ids + positions), upload([rows, q_lens, ctx_lens], torch.int32)
        ids_t, pos_t = host[: len(ids)], host[len(ids) :]
        if tail_tokens is not None:
            ids_t[len(ids) - decode_tail :] = tail_tokens
        rows_t, q_lens_t, ctx_lens_t = meta
        token_rows = torch.repeat_interleave(rows_t.long(), q_lens_t.long(), output_size=len(ids))
        bs = self.blocks.block_size
        slots = self.blocks.tables[token_rows, pos_t // bs].long() * bs + pos_t % bs
        q_starts = torch.nn.functional.pad(torch.cumsum(q_lens_t, 0, dtype=torch.int32), (1, 0))
        ctx = StepContext(
            self.cache.keys,
            self.cache.values,
            bs,
            self.blocks.tables,
            rows_t,
            ctx_lens_t,
            q_starts,
            slots,
            max(q_lens),
            self.use_triton,
            host_q_lens=q_lens,
            host_ctx_lens=ctx_lens,
            decode_tail=decode_tail,
        )
        self._set_lora(lora_slots)
        embeds = packed_embeddings(self.model, ids, mm_spans, self.device) if mm_spans else None
        if embeds is not None and tail_tokens is not None:  # the decode rows' embeddings from their device tokens
            embeds[0, len(ids) - decode_tail :] = self.model.get_input_embeddings()(tail_tokens).to(embeds.dtype)
        keep_t = upload(keep or [len(ids) - 1])
        logits = self._forward(ids_t, pos_t, ctx, keep_t, torch.cat(ropes, dim=1) if ropes else None, embeds)
        return RunnerOutput(finishing, logits[: len(finishing)])

    def run(self, plan: StepPlan, decode_tokens: torch.Tensor | None = None) -> list[RunnerOutput]:
        """`decode_tokens`: the decode rows' tokens still on the device (pipelined steps; see `prefill`)."""
        if plan.prefill:
            # Decoding sequences ride along in the prefill's forward as one-token chunks: the weights are read once
            # for both, where a separate decode forward would cost nearly a full weight read for a few tokens.
            items = [*plan.prefill, *((seq, 1) for seq in plan.decode)]
            return [self.prefill(items, decode_tail=len(plan.decode), tail_tokens=decode_tokens)]
        return [RunnerOutput(plan.decode, self.decode(plan.decode, decode_tokens))] if plan.decode else []

    def release(self, seq: Sequence) -> None:
        """Nothing to do: the scheduler frees the sequence's blocks."""


def decode_context(
    cache: PagedKVCache,
    blocks: BlockManager,
    positions: torch.Tensor,
    rows: torch.Tensor,
    use_triton: bool,
    num_splits: int = 1,
    host_ctx_lens: list[int] | None = None,
) -> StepContext:
    """The StepContext of a decode step, from device tensors of positions and table rows ([B] long each): slots
    are looked up in the block table on the device, so a CUDA graph replays it with new inputs."""
    bs = blocks.block_size
    slots = blocks.tables[rows, positions // bs].long() * bs + positions % bs
    q_starts = torch.arange(rows.shape[0] + 1, dtype=torch.int32, device=rows.device)
    return StepContext(
        cache.keys,
        cache.values,
        bs,
        blocks.tables,
        rows.to(torch.int32),
        (positions + 1).to(torch.int32),
        q_starts,
        slots,
        1,
        use_triton,
        num_splits,
        host_q_lens=None,
        host_ctx_lens=host_ctx_lens,
    )


class FallbackRunner:
    """One forward per sequence with its own DynamicCache; any model transformers can generate with."""

    name = "fallback"

    def __init__(self, model: Any, device: torch.device, lora: Any = None) -> None:
        from transformers import DynamicCache

        self._cache_cls = DynamicCache
        self.model = model
        self.device = device
        self.lora = lora
        self._caches: dict[int, Any] = {}

    def _step(self, seq: Sequence, chunk: int) -> torch.Tensor:
        cache = self._caches.get(seq.seq_id)
        if cache is None or seq.num_computed == 0:
            cache = self._caches[seq.seq_id] = self._cache_cls(config=self.model.config)
        start, end = seq.num_computed, seq.num_computed + chunk
        new = seq.ids_between(start, end)
        if self.lora is not None:
            slot = seq.lora_slot
            self.lora.set_step(
                torch.full((len(new),), slot, device=self.device) if slot else None, [slot] if slot else []
            )
        kwargs: dict[str, Any] = {"input_ids": staging_for(self.device).to_device([new])}
        if uses_mrope(self.model):  # explicit positions: the model's own rope-delta state is per call, not per sequence
            embed_prompt_once(self.model, seq)
            index = torch.arange(start, end, device=self.device).view(1, 1, -1)
            rope = rope_columns(seq, start, end, self.device).unsqueeze(1)
            kwargs["position_ids"] = torch.cat([index, rope])
            if seq.mm_embeds is not None:
                kwargs = {
                    "inputs_embeds": packed_embeddings(self.model, new, [(seq, 0, start, end)], self.device),
                    "position_ids": kwargs["position_ids"],
                }
        out = self.model(**kwargs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def run(self, plan: StepPlan) -> list[RunnerOutput]:
        sampled: list[Sequence] = []
        rows: list[torch.Tensor] = []
        for seq, chunk in [*plan.prefill, *((s, 1) for s in plan.decode)]:
            logits = self._step(seq, chunk)
            if seq.num_computed + chunk == seq.num_tokens:  # the chunk ends the pending tokens: sample
                sampled.append(seq)
                rows.append(logits)
        return [RunnerOutput(sampled, torch.stack(rows))] if sampled else []

    def release(self, seq: Sequence) -> None:
        self._caches.pop(seq.seq_id, None)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest relative L2 error of one position's logits ([positions, V] each)."""
    return ((got - want).norm(dim=-1) / want.norm(dim=-1).clamp_min(1e-6)).max().item()


def within_tolerance(error: float, dtype: torch.dtype) -> bool:
    """A path that attends to the wrong keys is off by O(1); in half precision two correct attention kernels
    differ by rounding that grows with depth (the max-abs relative error was 4.6e-2 on a random 28-layer 7B shape
    in bf16), hence the wider bound there. `dtype`: the model's (its KV cache's)."""
    return error <= (1e-3 if dtype == torch.float32 else 1e-1)


def paged_path_agrees(
    model: Any,
    cache: PagedKVCache,
    blocks: BlockManager,
    device: torch.device,
    vocab_size: int,
    lean: LeanDecoder | None = None,
) -> tuple[bool, float | None]:
    """Self-check at start-up: chunked prefill and decode through the paged path must reproduce a plain forward.

    Any exception or mismatch means this architecture does something our attention path does not model
    (non-standard caches, attention variants...), and the engine falls back to `FallbackRunner`. With `lean`, the
    decode steps run through it: the same check decides whether the engine keeps it.
    """
    from swiftops.engines.pt.sequence import SamplingParams

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(2, min(vocab_size, 1000)), (13,), generator=gen).tolist()
    seq = Sequence(prompt_ids=ids[:10], params=SamplingParams(max_tokens=4), sink=lambda out: None)
    runner = PagedRunner(model, cache, blocks, device)
    runner.lean = lean
    try:
        with torch.inference_mode():
            ref = model(input_ids=staging_for(device).to_device([ids])).logits[0].float()
            got = []
            for chunk in (6, 4):
                if not blocks.ensure_capacity(seq, seq.num_computed + chunk):
                    raise PagedAttentionUnsupported("the KV cache cannot hold the self-check's 13 tokens")
                blocks.sync()
                out = runner.prefill([(seq, chunk)])
                seq.num_computed += chunk
            got.append(out.logits[0])
            for token in ids[10:12]:
                seq.output_ids.append(token)
                blocks.ensure_capacity(seq, seq.num_tokens)
                blocks.sync()
                got.append(runner.decode([seq])[0])
                seq.num_computed += 1
        got_t = torch.stack(got).float()
        want = ref[9:12]
        err = relative_error(got_t, want)
        if not within_tolerance(err, cache.shape.dtype):
            logger.warning("paged attention disagrees with the model's own forward (relative error %.2e)", err)
            return False, err
        return True, err
    except Exception as exc:
        logger.warning("paged attention cannot run this model (%s: %s)", type(exc).__name__, exc)
        return False, None
    finally:
        blocks.release(seq)
