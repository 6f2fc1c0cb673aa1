"""Token sampling for one step of a batch: penalties, greedy / temperature / top-k / top-p, seeds, logprobs.

Logprobs are the model's own distribution (log-softmax of the raw logits, before penalties and
temperature), as vLLM and OpenAI report them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from swiftops.engines.pt.sequence import Sequence


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (chosen logprob, [(token_id, logprob), ...] top alternatives) or None when not asked
    logprobs: list[Optional[tuple[float, list[tuple[int, float]]]]]


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    for row, seq in enumerate(seqs):
        p = seq.params
        if not p.penalized:
            continue
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.all_ids)), device=logits.device, dtype=torch.long)
            picked = logits[row, seen]
            logits[row, seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.output_ids:
            ids = torch.tensor(seq.output_ids, device=logits.device, dtype=torch.long)
            counts = torch.bincount(ids, minlength=logits.shape[1]).to(logits.dtype)
            logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop tokens once the mass before them already reaches top_p (the first token always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def host_list(values: torch.Tensor) -> list:
    """`values.tolist()` that waits for the GPU without holding the GIL.

    A plain `.tolist()` of a CUDA tensor blocks inside the copy with the GIL held, so while the step runs on
    the GPU no other Python thread (the server's event loop streaming tokens) can run. Copying into pinned
    memory and waiting on an event (which releases the GIL) lets the server work during the step.
    """
    if values.device.type != "cuda":
        return values.tolist()
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)  # from torch's caching host allocator
    host.copy_(values, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    done.synchronize()
    return host.tolist()


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
    """logits: [B, V] for the rows in `seqs` (same order)."""
    logits = logits.float()
    want_logprobs = any(s.params.logprobs for s in seqs)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    if any(s.params.penalized for s in seqs):
        logits = logits.clone()
        _apply_penalties(logits, seqs)
    chosen = torch.argmax(logits, dim=-1)
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.greedy:
            continue
        row_logits = _filter_top_k_top_p(logits[row] / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(row_logits, dim=-1)
        chosen[row] = torch.multinomial(probs, 1, generator=seq.generator)[0]
    token_ids = host_list(chosen)  # the one host sync of the step
    infos: list[Optional[tuple[float, list[tuple[int, float]]]]] = []
    for row, seq in enumerate(seqs):
        if not seq.params.logprobs:
            infos.append(None)
            continue
        lp = raw_logprobs[row]
        top: list[tuple[int, float]] = []
        if seq.params.top_logprobs:
            values, ids = torch.topk(lp, seq.params.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist()))
        infos.append((float(lp[token_ids[row]]), top))
    return SampleResult(token_ids, infos)
