"""Paged attention plugged into transformers' attention interface.

The model code stays transformers': we register an attention implementation ("swiftops_paged") and pass
a `StepContext` through the model's forward kwargs (transformers forwards unknown kwargs down to the
attention function). All tokens of a step are packed into one row, `[1, T]`: the function writes each
layer's new keys/values into the paged cache, then attends each sequence's new tokens over its context,
read through its row of the block table.

On CUDA the Triton kernels (`triton_attention`) do that in one launch per layer, reading only each sequence's
real context. Elsewhere (CPU) torch's SDPA does it, gathering each decode batch's keys up to its longest context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F

ATTN_IMPLEMENTATION = "swiftops_paged"
CONTEXT_KWARG = "swiftops_ctx"


@dataclass
class StepContext:
    """Where the packed tokens of one step go in the cache, and what each sequence attends to."""

    keys: list[torch.Tensor]  # per layer [slots, kv_heads, head_dim]
    values: list[torch.Tensor]
    block_size: int
    tables: torch.Tensor  # [table rows, max blocks] int32 (BlockManager.tables)
    rows: torch.Tensor  # [B] int32: each sequence's table row
    ctx_lens: torch.Tensor  # [B] int32: context length of each sequence, this step's tokens included
    q_starts: torch.Tensor  # [B + 1] int32: offset of each sequence's tokens in the packed row
    slot_mapping: torch.Tensor  # [T] long: cache slot of each packed token
    max_q_len: int  # most new tokens of one sequence (1: a decode step)
    use_triton: bool
    num_splits: int = 1  # decode key segments (split-KV), Triton only
    decode_tail: int = 0  # the last sequences of a prefill step that are decode rows (one token each), Triton only
    # A CUDA graph's fixed grid, in place of max_q_len and decode_tail (Triton only): int32 [2, n] maps of the prefill
    # sequences' and the decode rows' programs (triton_attention.tile_map).
    tile_maps: tuple[torch.Tensor, torch.Tensor] | None = None
    # The SDPA path's host copies (no device sync on CPU): new tokens and context length of each sequence.
    host_q_lens: list[int] | None = None
    host_ctx_lens: list[int] | None = None
    # The SDPA path's gather indices and masks, the same in every layer of a step: built by the first layer.
    layer_invariant: dict = field(default_factory=dict)


class PagedAttentionUnsupported(RuntimeError):
    """This layer does something the paged path does not model; the engine's self-check then picks the fallback."""


def _key_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[q, k] True where the query at q_pos sees the key at k_pos (causal, and within the sliding window)."""
    mask = k_pos[None, :] <= q_pos[:, None]
    if window:
        mask &= k_pos[None, :] > q_pos[:, None] - window
    return mask


def _decode_layout(ctx: StepContext, window: int | None) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(key blocks per sequence, their flattened block ids [B * width], the key mask [B, 1, 1, width * block]) of
    a decode step: keys gathered up to the batch's longest context, each sequence's one query at its last
    position. The same in every layer (per sliding window), so the first layer builds it."""
    layout = ctx.layer_invariant.get(("decode", window))
    if layout is None:
        assert ctx.host_ctx_lens is not None  # narrows for mypy: the runner sets the host copies when Triton is off
        width = -(-max(ctx.host_ctx_lens) // ctx.block_size)
        blocks = ctx.tables[ctx.rows.long(), :width].long().flatten()
        positions = torch.arange(width * ctx.block_size, device=blocks.device)
        mask = _key_mask(ctx.ctx_lens.long() - 1, positions, window)[:, None, None, :]
        layout = ctx.layer_invariant[("decode", window)] = (width, blocks, mask)
    return layout


def _sdpa_decode(ctx: StepContext, layer: int, q: torch.Tensor, scaling: float, window: int | None) -> torch.Tensor:
    # q: [B, H, D] -> [B, Hkv, group, D]: the query heads that share a key head (transformers' order) are that
    # head's queries, all at the same position, so one mask row serves them (half the time of enable_gqa on CPU);
    # keys gathered up to the batch's longest context: [B, Hkv, L, D]. Returns [B, H, D].
    kv_heads, head_dim = ctx.keys[layer].shape[1:]
    batch, heads = q.shape[:2]
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    width, blocks, mask = _decode_layout(ctx, window)
    paged_k = ctx.keys[layer].view(-1, ctx.block_size, kv_heads, head_dim)
    paged_v = ctx.values[layer].view(-1, ctx.block_size, kv_heads, head_dim)
    # index_select, not paged_k[blocks]: advanced indexing took ~5x as long on CPU for these shapes
    k = paged_k.index_select(0, blocks).view(batch, width * ctx.block_size, kv_heads, head_dim).transpose(1, 2)
    v = paged_v.index_select(0, blocks).view(batch, width * ctx.block_size, kv_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, head_dim)


def _write_kv(ctx: StepContext, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """This step's keys/values ([T, Hkv, D]) into their cache slots."""
    ctx.keys[layer].index_copy_(0, ctx.slot_mapping, keys.to(ctx.keys[layer].dtype))
    ctx.values[layer].index_copy_(0, ctx.slot_mapping, values.to(ctx.values[layer].dtype))


def sdpa_decode_rows(
    ctx: StepContext, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
) -> torch.Tensor:
    """A decode step's attention for callers that hold the rows themselves (swiftops.engines.pt.cpu_decode): q
    [B, H, D], this step's k and v [B, Hkv, D]; writes k and v to the cache and returns [B, H, D]."""
    _write_kv(ctx, layer, k, v)
    return _sdpa_decode(ctx, layer, q, scaling, None)


def _context_slots(ctx: StepContext, row: int, context: int) -> torch.Tensor:
    """Cache slots of a sequence's first `context` positions (the same in every layer: built once a step)."""
    slots = ctx.layer_invariant.get(("slots", row, context))
    if slots is None:
        pos = torch.arange(context, device=ctx.tables.device)
        slots = ctx.tables[row, pos // ctx.block_size].long() * ctx.block_size + pos % ctx.block_size
        ctx.layer_invariant[("slots", row, context)] = slots
    return slots


def _sdpa_prefill(ctx: StepContext, layer: int, query, key, value, scaling: float, window: int | None) -> torch.Tensor:
    outs = []
    gqa = query.shape[1] != key.shape[1]
    start = 0
    rows = ctx.rows.tolist()
    assert ctx.host_q_lens is not None and ctx.host_ctx_lens is not None  # set when Triton is off (as above)
    for row, length, context in zip(rows, ctx.host_q_lens, ctx.host_ctx_lens, strict=False):
        q = query[:, :, start : start + length]
        cached = context - length
        if cached == 0:
            k = key[:, :, start : start + length]
            v = value[:, :, start : start + length]
        else:  # a chunk after earlier chunks (or a recompute): attend over the whole cached context
            slots = _context_slots(ctx, row, context)
            k = ctx.keys[layer].index_select(0, slots).transpose(0, 1).unsqueeze(0)
            v = ctx.values[layer].index_select(0, slots).transpose(0, 1).unsqueeze(0)
        if cached == 0 and not (window and length > window):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            q_pos = torch.arange(cached, context, device=query.device)
            mask = _key_mask(q_pos, torch.arange(context, device=query.device), window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        outs.append(out)
        start += length
    return torch.cat(outs, dim=2).transpose(1, 2)  # [1, T, H, D]


def _triton(
    ctx: StepContext, layer: int, query: torch.Tensor, scaling: float, window: int | None, softcap: float | None
) -> torch.Tensor:
    from swiftops.engines.pt.triton_attention import paged_attention

    out = paged_attention(
        query[0].transpose(0, 1),
        ctx.keys[layer],
        ctx.values[layer],
        ctx.tables,
        ctx.rows,
        ctx.ctx_lens,
        ctx.q_starts,
        ctx.max_q_len,
        ctx.block_size,
        scaling,
        window,
        softcap,
        ctx.num_splits,
        decode_tail=ctx.decode_tail,
        tile_maps=ctx.tile_maps,
    )
    return out.unsqueeze(0)  # [1, T, H, D]


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
):
    """transformers attention-interface signature; query [1, H, T, D], key/value [1, Hkv, T, D]."""
    ctx: StepContext | None = kwargs.get(CONTEXT_KWARG)
    if ctx is None:  # called outside our runner (e.g. a plain forward): behave like sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            sliding_window=sliding_window,
            **kwargs,
        )
    softcap = kwargs.get("softcap")
    if query.shape[0] != 1 or (softcap and not ctx.use_triton):
        raise PagedAttentionUnsupported(
            "paged attention: unpacked batches (and soft-capping without Triton) are not supported"
        )
    layer = cast(int, module.layer_idx)  # transformers' attention modules carry their layer's index
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    _write_kv(ctx, layer, key[0].transpose(0, 1), value[0].transpose(0, 1))
    if ctx.use_triton:
        return _triton(ctx, layer, query, scaling, sliding_window, softcap), None
    if ctx.max_q_len == 1:
        return _sdpa_decode(ctx, layer, query[0].transpose(0, 1), scaling, sliding_window).unsqueeze(0), None
    return _sdpa_prefill(ctx, layer, query, key, value, scaling, sliding_window), None


def triton_available(device: torch.device) -> bool:
    """The Triton kernels run on CUDA devices (torch's CUDA builds ship Triton). SWIFTOPS_PT_ATTENTION=sdpa turns
    them off; =triton turns them on for CPU tensors too, where Triton's interpreter (TRITON_INTERPRET=1) runs them
    (slowly: tests only)."""
    choice = os.environ.get("SWIFTOPS_PT_ATTENTION")
    if choice == "sdpa" or (device.type != "cuda" and choice != "triton"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
