"""Rotary position embedding of queries and keys in one Triton kernel, for transformers' half-rotation models.

transformers applies RoPE with about ten small kernels per layer (slices, a negation, two concatenations,
four multiplies, two adds); at small batch a decode step is launch-bound and these are a large share of it.
The kernel does queries and keys of one token in one program, with the same rounding points as the original
(each product rounded to the input's dtype, then the sum).

Models call `apply_rotary_pos_emb` as a global of their modeling module, so the fused function replaces that
global in each module whose attention the model uses, after it reproduced the original on random inputs.
Inputs it does not handle (CPU tensors, other layouts) go to the original function.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from swiftops.engines.pt.verified_fusion import agrees_within

logger = logging.getLogger(__name__)
_ORIGINAL = "_swiftops_original_apply_rotary_pos_emb"


@triton.jit
def _rotate(
    x_ptr,
    out_ptr,
    cos1,
    sin1,
    cos2,
    sin2,
    t,
    stride_t,
    stride_h,
    out_stride_t,
    out_stride_h,
    heads,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (d < HALF)
    src = x_ptr + t * stride_t + h * stride_h + d
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    # out = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): each product rounded to the input's dtype,
    # then the sum (explicit casts, so no fused multiply-add skips a rounding the original does)
    first = (x1 * cos1).to(dtype).to(tl.float32) + (-x2 * sin1).to(dtype).to(tl.float32)
    second = (x2 * cos2).to(dtype).to(tl.float32) + (x1 * sin2).to(dtype).to(tl.float32)
    dst = out_ptr + t * out_stride_t + h * out_stride_h + d
    tl.store(dst, first.to(dtype), mask=mask)
    tl.store(dst + HALF, second.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_out_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_ct,
    stride_st,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    q_heads,
    k_heads,
    HALF: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    dm = d < HALF
    cos1 = tl.load(cos_ptr + t * stride_ct + d, mask=dm, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + t * stride_ct + HALF + d, mask=dm, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + t * stride_st + d, mask=dm, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + t * stride_st + HALF + d, mask=dm, other=0.0).to(tl.float32)
    _rotate(
        q_ptr,
        q_out_ptr,
        cos1,
        sin1,
        cos2,
        sin2,
        t,
        stride_qt,
        stride_qh,
        stride_qot,
        stride_qoh,
        q_heads,
        HALF,
        BLOCK_QH,
        BLOCK_HALF,
    )
    _rotate(
        k_ptr,
        k_out_ptr,
        cos1,
        sin1,
        cos2,
        sin2,
        t,
        stride_kt,
        stride_kh,
        stride_kot,
        stride_koh,
        k_heads,
        HALF,
        BLOCK_KH,
        BLOCK_HALF,
    )


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [1, Hq, T, D], k [1, Hk, T, D] (any strides, last dim contiguous), cos / sin [1, T, D] in q's dtype.
    Returns the rotated q and k, each [1, H, T, D] over a token-major [T, H, D] buffer."""
    _, q_heads, tokens, dim = q.shape
    k_heads = k.shape[1]
    q_out = torch.empty(tokens, q_heads, dim, dtype=q.dtype, device=q.device)
    k_out = torch.empty(tokens, k_heads, dim, dtype=k.dtype, device=k.device)
    half = dim // 2
    _rotary_kernel[(tokens,)](
        q,
        k,
        cos,
        sin,
        q_out,
        k_out,
        q.stride(2),
        q.stride(1),
        k.stride(2),
        k.stride(1),
        cos.stride(1),
        sin.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        q_heads,
        k_heads,
        HALF=half,
        BLOCK_QH=triton.next_power_of_2(q_heads),
        BLOCK_KH=triton.next_power_of_2(k_heads),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
    return q_out.transpose(0, 1).unsqueeze(0), k_out.transpose(0, 1).unsqueeze(0)


def _handles(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int) -> bool:
    return (
        unsqueeze_dim == 1
        and q.is_cuda
        and q.dim() == 4
        and q.shape[0] == 1
        and k.dim() == 4
        and cos.dim() == 3
        and cos.shape[0] == 1
        and cos.shape[1] == q.shape[2]
        and cos.shape[-1] == q.shape[-1]
        and sin.shape == cos.shape
        and q.shape[-1] % 2 == 0
        and q.stride(-1) == 1
        and k.stride(-1) == 1
        and cos.stride(-1) == 1
        and sin.stride(-1) == 1
        and q.dtype == k.dtype == cos.dtype == sin.dtype
    )


def _fused(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        unsqueeze_dim = kwargs.get("unsqueeze_dim", args[0] if args else 1)
        if len(args) <= 1 and set(kwargs) <= {"unsqueeze_dim"} and _handles(q, k, cos, sin, unsqueeze_dim):
            return rotary(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.__wrapped__ = original  # type: ignore[attr-defined]  # functools' marker, set by hand
    return apply_rotary_pos_emb


def _agrees(original: Callable, device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, dim: int) -> bool:
    """The kernel reproduces `original` on random inputs laid out as transformers' attention passes them."""
    gen = torch.Generator().manual_seed(0)
    tokens = 7
    q = torch.randn(1, tokens, heads, dim, generator=gen).to(device, dtype).transpose(1, 2)
    k = torch.randn(1, tokens, kv_heads, dim, generator=gen).to(device, dtype).transpose(1, 2)
    freqs = torch.arange(tokens)[:, None].float() * (1e4 ** (-torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([freqs, freqs], dim=-1)[None]
    cos, sin = emb.cos().to(device, dtype), emb.sin().to(device, dtype)
    with torch.inference_mode():
        want_q, want_k = original(q, k, cos, sin)
        got_q, got_k = rotary(q, k, cos, sin)
    return agrees_within(got_q, want_q, dtype, 1e-5) and agrees_within(got_k, want_k, dtype, 1e-5)


def fuse_rotary(model: torch.nn.Module) -> int:
    """Route the model's attention modules' `apply_rotary_pos_emb` to the kernel where it reproduces the original;
    returns how many modeling modules were switched (the global is shared by every model of that module)."""
    config = getattr(model, "config", None)
    text = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    heads = getattr(text, "num_attention_heads", None)
    if not heads:
        return 0
    assert text is not None  # narrows for mypy: heads came from it
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    param = next(model.parameters())
    switched = 0
    seen: set[str] = set()
    for module in model.modules():
        name = type(module).__module__
        if not type(module).__name__.endswith("Attention") or name in seen:
            continue
        seen.add(name)
        modeling: Any = sys.modules.get(name)
        current = getattr(modeling, "apply_rotary_pos_emb", None)
        if current is None:
            continue
        if getattr(modeling, _ORIGINAL, None) is not None:  # an earlier engine in this process switched it
            switched += 1
            continue
        try:
            ok = _agrees(current, param.device, param.dtype, heads, kv_heads, dim)
        except Exception as exc:
            logger.info("rotary fusion skipped for %s (%s: %s)", name, type(exc).__name__, exc)
            continue
        if not ok:
            logger.info("rotary fusion skipped for %s: its apply_rotary_pos_emb is not the half-rotation formula", name)
            continue
        setattr(modeling, _ORIGINAL, current)
        modeling.apply_rotary_pos_emb = _fused(current)
        switched += 1
    return switched
