"""Running one scheduled step through the model.

`PagedRunner` is the fast path: every token of the step packed into one row, the paged KV cache, and
logits only where a token is sampled. `FallbackRunner` runs each sequence alone with transformers' own
`DynamicCache` (what `generate` does): slower, but right for any causal LM; it is chosen automatically
when the fast path fails its start-up self-check.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from swiftops.engines.pt.attention import CONTEXT_KWARG, StepContext
from swiftops.engines.pt.kv_cache import PagedKVCache
from swiftops.engines.pt.mm_prefill import packed_embeddings, prepare, rope_columns, uses_mrope
from swiftops.engines.pt.scheduler import StepPlan
from swiftops.engines.pt.sequence import Sequence

logger = logging.getLogger(__name__)


class PagedRunner:
    name = "paged"

    def __init__(self, model: Any, cache: PagedKVCache, device: torch.device, graphs: Any = None,
                 lora: Any = None) -> None:
        self.model = model
        self.cache = cache
        self.device = device
        self.graphs = graphs  # a captured CudaGraphDecoder, or None (CPU, --enforce_eager)
        self.lora = lora  # a LoraManager, or None
        self.mrope = uses_mrope(model)  # Qwen2-VL-style 3-D rotary positions

    def _set_lora(self, per_token: list[int]) -> None:
        if self.lora is None:
            return
        active = sorted(set(per_token) - {0})
        self.lora.set_step(torch.tensor(per_token, device=self.device) if active else None, active)

    def _slot(self, seq: Sequence, position: int) -> int:
        bs = self.cache.block_size
        return seq.block_table[position // bs] * bs + position % bs

    def _forward(self, ids: list[int], positions: list[int], ctx: StepContext, keep: list[int],
                 rope: Optional[torch.Tensor] = None, embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        position_ids = torch.tensor([positions], device=self.device)
        if self.mrope:  # [4, 1, T]: the plain index, then (t, h, w); text tokens use their index on all axes
            rope = rope if rope is not None else position_ids.expand(3, -1)
            position_ids = torch.cat([position_ids, rope]).unsqueeze(1)
        inputs = {"inputs_embeds": embeds} if embeds is not None else {
            "input_ids": torch.tensor([ids], device=self.device)}
        out = self.model(**inputs, position_ids=position_ids, use_cache=False,
                         logits_to_keep=torch.tensor(keep, device=self.device), **{CONTEXT_KWARG: ctx})
        return out.logits[0]

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        bs = self.cache.block_size
        positions = [s.num_tokens - 1 for s in seqs]
        rope = None
        if self.mrope:
            rope = torch.tensor([[p + s.rope_delta for s, p in zip(seqs, positions)]] * 3, device=self.device)
        if self.graphs is not None and len(seqs) <= self.graphs.buckets[-1]:
            logits = self.graphs.run([s.all_ids[-1] for s in seqs], positions, rope,
                                     [self._slot(s, p) for s, p in zip(seqs, positions)],
                                     [s.block_table for s in seqs], [s.lora_slot for s in seqs])
            for s in seqs:
                s.num_computed += 1
            return logits
        max_blocks = max(len(s.block_table) for s in seqs)
        tables = torch.tensor([s.block_table + [0] * (max_blocks - len(s.block_table)) for s in seqs],
                              device=self.device)
        pos = torch.tensor(positions, device=self.device)
        key_mask = (torch.arange(max_blocks * bs, device=self.device)[None, :] <= pos[:, None])[:, None, None, :]
        ctx = StepContext(self.cache.keys, self.cache.values, bs,
                          slot_mapping=torch.tensor([self._slot(s, p) for s, p in zip(seqs, positions)],
                                                    device=self.device),
                          decode=True, block_tables=tables, key_mask=key_mask)
        self._set_lora([s.lora_slot for s in seqs])
        logits = self._forward([s.all_ids[-1] for s in seqs], positions, ctx, list(range(len(seqs))), rope)
        for s in seqs:
            s.num_computed += 1
        return logits

    def prefill(self, items: list[tuple[Sequence, int]]) -> tuple[list[Sequence], torch.Tensor]:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        lora_slots: list[int] = []
        spans = []
        keep: list[int] = []
        finishing: list[Sequence] = []
        ropes: list[torch.Tensor] = []
        mm_spans: list[tuple[Sequence, int, int, int]] = []
        for seq, chunk in items:
            start, end = seq.num_computed, seq.num_computed + chunk
            prepare(self.model, seq)
            if seq.mm_embeds is not None:
                mm_spans.append((seq, len(ids), start, end))
            if self.mrope:
                ropes.append(rope_columns(seq, start, end, self.device))
            context_slots = None
            if start > 0:
                context_slots = torch.tensor([self._slot(seq, p) for p in range(end)], device=self.device)
            spans.append((len(ids), chunk, start, context_slots))
            ids.extend(seq.all_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self._slot(seq, p) for p in range(start, end))
            lora_slots.extend([seq.lora_slot] * chunk)
            if end == seq.num_tokens:
                keep.append(len(ids) - 1)
                finishing.append(seq)
        ctx = StepContext(self.cache.keys, self.cache.values, self.cache.block_size,
                          slot_mapping=torch.tensor(slots, device=self.device), decode=False, spans=spans)
        self._set_lora(lora_slots)
        embeds = packed_embeddings(self.model, ids, mm_spans, self.device) if mm_spans else None
        logits = self._forward(ids, positions, ctx, keep or [len(ids) - 1], torch.cat(ropes, dim=1) if ropes else None,
                               embeds)
        for seq, chunk in items:
            seq.num_computed += chunk
        return finishing, logits[: len(finishing)]

    def run(self, plan: StepPlan) -> list[tuple[list[Sequence], torch.Tensor]]:
        results = []
        if plan.prefill:
            results.append(self.prefill(plan.prefill))
        if plan.decode:
            results.append((plan.decode, self.decode(plan.decode)))
        return results

    def release(self, seq: Sequence) -> None:
        """Nothing to do: the scheduler frees the sequence's blocks."""


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

    def _step(self, seq: Sequence) -> torch.Tensor:
        cache = self._caches.get(seq.seq_id)
        if cache is None or seq.num_computed == 0:
            cache = self._caches[seq.seq_id] = self._cache_cls(config=self.model.config)
        new = seq.all_ids[seq.num_computed:]
        if self.lora is not None:
            slot = seq.lora_slot
            self.lora.set_step(torch.full((len(new),), slot, device=self.device) if slot else None,
                               [slot] if slot else [])
        start = seq.num_computed
        kwargs: dict[str, Any] = {"input_ids": torch.tensor([new], device=self.device)}
        if uses_mrope(self.model):  # explicit positions: the model's own rope-delta state is per call, not per sequence
            prepare(self.model, seq)
            index = torch.arange(start, seq.num_tokens, device=self.device).view(1, 1, -1)
            rope = rope_columns(seq, start, seq.num_tokens, self.device).unsqueeze(1)
            kwargs["position_ids"] = torch.cat([index, rope])
            if seq.mm_embeds is not None:
                kwargs = {"inputs_embeds": packed_embeddings(self.model, new, [(seq, 0, start, seq.num_tokens)],
                                                             self.device), "position_ids": kwargs["position_ids"]}
        out = self.model(**kwargs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        seq.num_computed = seq.num_tokens
        return out.logits[0, -1]

    def run(self, plan: StepPlan) -> list[tuple[list[Sequence], torch.Tensor]]:
        seqs = [s for s, _ in plan.prefill] + plan.decode
        if not seqs:
            return []
        return [(seqs, torch.stack([self._step(s) for s in seqs]))]

    def release(self, seq: Sequence) -> None:
        self._caches.pop(seq.seq_id, None)


def paged_path_agrees(model: Any, cache: PagedKVCache, device: torch.device, vocab_size: int) -> bool:
    """Self-check at start-up: chunked prefill and decode through the paged path must reproduce a plain forward.

    Any exception or mismatch means this architecture does something our attention path does not model
    (soft-capping, sliding windows, non-standard caches...), and the engine falls back to `FallbackRunner`.
    """
    from swiftops.engines.pt.sequence import SamplingParams
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, max(2, min(vocab_size, 1000)), (13,), generator=gen).tolist()
    seq = Sequence(prompt_ids=ids[:10], params=SamplingParams(max_tokens=4), sink=lambda out: None)
    runner = PagedRunner(model, cache, device)
    try:
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
            got = []
            for chunk in (6, 4):
                assert cache.ensure_capacity(seq.block_table, seq.num_computed + chunk)
                finishing, logits = runner.prefill([(seq, chunk)])
            got.append(logits[0])
            for token in ids[10:12]:
                seq.output_ids.append(token)
                assert cache.ensure_capacity(seq.block_table, seq.num_tokens)
                got.append(runner.decode([seq])[0])
        got_t = torch.stack(got).float()
        want = ref[9:12]
        scale = want.abs().max().clamp_min(1e-6)
        err = ((got_t - want).abs().max() / scale).item()
        tolerance = 1e-3 if want.dtype == torch.float32 and cache.shape.dtype == torch.float32 else 3e-2
        if err > tolerance:
            logger.warning("paged attention disagrees with the model's own forward (relative error %.2e)", err)
            return False
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "use the fallback"
        logger.warning("paged attention cannot run this model (%s: %s)", type(exc).__name__, exc)
        return False
    finally:
        cache.release(seq.block_table)
