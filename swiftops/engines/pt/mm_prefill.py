"""Multimodal prompts in the packed row: vision features as input embeddings, and M-RoPE positions.

The vision tower runs once per sequence (at its first prefill chunk) and its output is kept with the
sequence, so a chunk may end in the middle of an image. Models with 3-D rotary positions (Qwen2-VL,
Qwen2.5-VL) get `position_ids` of shape [4, 1, T]: row 0 the plain index (the cache position), rows
1-3 the (t, h, w) positions; a token after the prompt sits at index + rope_delta on all three axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from swiftops.engines.pt.sequence import Sequence

if TYPE_CHECKING:
    from swiftops.template.multimodal import MultimodalInputs


def uses_mrope(model: Any) -> bool:
    return hasattr(getattr(model, "model", model), "get_rope_index")


def embed_prompt_once(model: Any, seq: Sequence) -> None:
    """Run the vision tower and the rope index of a multimodal sequence, at its first prefill chunk only."""
    if seq.mm_inputs is None or seq.mm_embeds is not None:
        return
    seq.mm_embeds = prompt_embeddings(model, seq.mm_inputs)  # [S, hidden]
    positions, delta = rope_positions(model, seq.mm_inputs)
    seq.mrope = positions[:, 0, :].to(seq.mm_embeds.device)  # [3, S]
    seq.rope_delta = int(delta.reshape(-1)[0])
    seq.mm_inputs = None  # pixels are no longer needed


def rope_positions(model: Any, inputs: MultimodalInputs) -> tuple[Any, Any]:
    """Qwen2-VL / Qwen2.5-VL's 3-D (M-RoPE) position ids of a prompt: (position_ids [3, 1, S], rope_delta [1, 1]).

    Token i of the prompt sits at position_ids[:, 0, i]; a generated token at sequence index j >= S sits at
    j + rope_delta on all three axes. `model` is the *ForConditionalGeneration (or its `.model`).
    """
    base = getattr(model, "model", model)
    t = inputs.tensors
    kwargs = {k: t[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in t}
    return base.get_rope_index(
        t["input_ids"], mm_token_type_ids=t["mm_token_type_ids"], attention_mask=t.get("attention_mask"), **kwargs
    )


def prompt_embeddings(model: Any, inputs: MultimodalInputs) -> Any:
    """The prompt's input embeddings [S, hidden] with the vision features in place of the image/video tokens.

    Computed once per request (the vision tower runs once), then sliced per prefill chunk: a chunk may
    end in the middle of an image. Feed `model(inputs_embeds=embeds[None, start:end], position_ids=...)`.
    """
    base = getattr(model, "model", model)
    embed = model.get_input_embeddings()
    t = inputs.tensors
    device, dtype = embed.weight.device, embed.weight.dtype
    ids = t["input_ids"].to(device)
    with torch.inference_mode():
        embeds = embed(ids)[0]  # [S, hidden]
        for pixels, grid, token in (
            ("pixel_values", "image_grid_thw", base.config.image_token_id),
            ("pixel_values_videos", "video_grid_thw", base.config.video_token_id),
        ):
            if pixels not in t:
                continue
            getter = base.get_image_features if pixels == "pixel_values" else base.get_video_features
            features = getter(t[pixels].to(device), t[grid].to(device), return_dict=True).pooler_output
            embeds[ids[0] == token] = torch.cat(features).to(dtype)
    return embeds


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
