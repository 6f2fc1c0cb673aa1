"""Multimodal prompts in the packed row: vision features as input embeddings, and M-RoPE positions.

The vision tower runs once per sequence (at its first prefill chunk) and its output is kept with the
sequence, so a chunk may end in the middle of an image. Models with 3-D rotary positions (Qwen2-VL,
Qwen2.5-VL) get `position_ids` of shape [4, 1, T]: row 0 the plain index (the cache position), rows
1-3 the (t, h, w) positions; a token after the prompt sits at index + rope_delta on all three axes.
"""

from __future__ import annotations

from typing import Any

import torch

from swiftops.engines.pt.sequence import Sequence


def uses_mrope(model: Any) -> bool:
    return hasattr(getattr(model, "model", model), "get_rope_index")


def prepare(model: Any, seq: Sequence) -> None:
    """Run the vision tower and the rope index for a multimodal sequence, once."""
    if seq.mm_inputs is None or seq.mm_embeds is not None:
        return
    from swiftops.template.multimodal import prompt_embeddings, rope_positions

    seq.mm_embeds = prompt_embeddings(model, seq.mm_inputs)  # [S, hidden]
    positions, delta = rope_positions(model, seq.mm_inputs)
    seq.mrope = positions[:, 0, :].to(seq.mm_embeds.device)  # [3, S]
    seq.rope_delta = int(delta.reshape(-1)[0])
    seq.mm_inputs = None  # pixels are no longer needed


def rope_columns(seq: Sequence, start: int, end: int, device: torch.device) -> torch.Tensor:
    """(t, h, w) positions [3, end - start] of tokens start..end of a sequence."""
    index = torch.arange(start, end, device=device)
    if seq.mrope is None:
        return index.expand(3, -1)
    prompt_len = seq.mrope.shape[1]
    cols = index.expand(3, -1) + seq.rope_delta
    inside = min(end, prompt_len) - start
    if inside > 0:
        cols = cols.clone()
        cols[:, :inside] = seq.mrope[:, start : start + inside]
    return cols


def packed_embeddings(
    model: Any, ids: list[int], spans: list[tuple[Sequence, int, int, int]], device: torch.device
) -> torch.Tensor:
    """inputs_embeds [1, T, hidden] of a packed prefill: token embeddings, with each multimodal sequence's
    prompt slice taken from its precomputed embeddings. spans: (sequence, packed offset, start, end)."""
    embeds = model.get_input_embeddings()(torch.tensor([ids], device=device))
    for seq, offset, start, end in spans:
        if seq.mm_embeds is None:
            continue
        inside = min(end, seq.mm_embeds.shape[0]) - start
        if inside > 0:
            embeds[0, offset : offset + inside] = seq.mm_embeds[start : start + inside].to(embeds.dtype)
    return embeds
