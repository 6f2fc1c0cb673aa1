"""Paged attention plugged into transformers' attention interface.

The model code stays transformers': we register an attention implementation ("swiftops_paged") and pass
a `StepContext` through the model's forward kwargs (transformers forwards unknown kwargs down to the
attention function). All tokens of a step are packed into one row, `[1, T]`: the function writes each
layer's new keys/values into the paged cache, then attends per sequence over its cached context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    slot_mapping: torch.Tensor  # [T] cache slot of each packed token
    decode: bool  # every sequence has exactly one new token
    # decode: block_tables [B, max_blocks], key_mask [B, 1, 1, L] (True = attend)
    block_tables: Optional[torch.Tensor] = None
    key_mask: Optional[torch.Tensor] = None
    # prefill: per sequence (first packed index, new tokens, tokens already cached, cache slots of the whole context)
    spans: Optional[list[tuple[int, int, int, Optional[torch.Tensor]]]] = None


class PagedAttentionUnsupported(RuntimeError):
    """This layer does something the paged path does not model; the engine's self-check then picks the fallback."""


def _window_mask(q_pos: torch.Tensor, k_len: int, window: Optional[int]) -> torch.Tensor:
    """Causal (and sliding-window) mask [q, k_len]: query at absolute position p sees keys 0..p."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    mask = k_pos[None, :] <= q_pos[:, None]
    if window:
        mask &= k_pos[None, :] > q_pos[:, None] - window
    return mask


def _decode(ctx: StepContext, layer: int, query: torch.Tensor, scaling: float) -> torch.Tensor:
    # query: [1, H, B, D] -> [B, H, 1, D]; cached keys gathered per sequence: [B, Hkv, L, D]
    q = query[0].transpose(0, 1).unsqueeze(2)
    batch, max_blocks = ctx.block_tables.shape
    kv_heads, head_dim = ctx.keys[layer].shape[1:]
    paged_k = ctx.keys[layer].view(-1, ctx.block_size, kv_heads, head_dim)
    paged_v = ctx.values[layer].view(-1, ctx.block_size, kv_heads, head_dim)
    k = paged_k[ctx.block_tables].view(batch, max_blocks * ctx.block_size, kv_heads, head_dim).transpose(1, 2)
    v = paged_v[ctx.block_tables].view(batch, max_blocks * ctx.block_size, kv_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.key_mask, scale=scaling,
                                         enable_gqa=q.shape[1] != kv_heads)
    return out.squeeze(2).unsqueeze(0)  # [1, B, H, D]


def _prefill(ctx: StepContext, layer: int, query, key, value, scaling: float, window: Optional[int]) -> torch.Tensor:
    outs = []
    kv_heads = key.shape[1]
    gqa = query.shape[1] != kv_heads
    for start, length, cached, context_slots in ctx.spans:
        q = query[:, :, start:start + length]
        if cached == 0:
            k = key[:, :, start:start + length]
            v = value[:, :, start:start + length]
        else:  # a chunk after earlier chunks (or a recompute): attend over the whole cached context
            k = ctx.keys[layer][context_slots].transpose(0, 1).unsqueeze(0)
            v = ctx.values[layer][context_slots].transpose(0, 1).unsqueeze(0)
        if cached == 0 and not (window and length > window):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            q_pos = torch.arange(cached, cached + length, device=query.device)
            mask = _window_mask(q_pos, k.shape[2], window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        outs.append(out)
    return torch.cat(outs, dim=2).transpose(1, 2)  # [1, T, H, D]


def paged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                            dropout: float = 0.0, sliding_window: Optional[int] = None, **kwargs):
    """transformers attention-interface signature; query [1, H, T, D], key/value [1, Hkv, T, D]."""
    ctx: Optional[StepContext] = kwargs.get(CONTEXT_KWARG)
    if ctx is None:  # called outside our runner (e.g. a plain forward): behave like sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    if kwargs.get("softcap") or query.shape[0] != 1:
        raise PagedAttentionUnsupported("paged attention: soft-capping and unpacked batches are not supported")
    layer = module.layer_idx
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    # Write this step's keys/values ([T, Hkv, D]) into their cache slots.
    ctx.keys[layer].index_copy_(0, ctx.slot_mapping, key[0].transpose(0, 1).to(ctx.keys[layer].dtype))
    ctx.values[layer].index_copy_(0, ctx.slot_mapping, value[0].transpose(0, 1).to(ctx.values[layer].dtype))
    if ctx.decode:
        if sliding_window:
            raise PagedAttentionUnsupported("paged decode with a sliding window")
        return _decode(ctx, layer, query, scaling), None
    return _prefill(ctx, layer, query, key, value, scaling, sliding_window), None


def register() -> None:
    from transformers import AttentionInterface
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
