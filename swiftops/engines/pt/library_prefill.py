"""Long prefill chunks over long cached prefixes through cuDNN's fused attention, on CUDA.

A chunk of a long prompt attends to its whole cached prefix; for a 7B model with 16K-token prompts that is a third of
a prefill step. cuDNN's kernel did that work at 582 TFLOP/s on an H200 against 333 for our Triton kernel (a 2,048-
token chunk over a 14,336-token prefix, 7B shape: benchmarks/attention_tiles.py), so chunks this long leave the
Triton launch and go to cuDNN in two parts, merged by their log-sum-exps:

- the prefix, no mask: the GROUP query heads that share a KV head are stacked as GROUP times the query rows of that
  head (every row sees every prefix key), so the keys are read as they lie, never repeated per query head;
- the chunk over its own keys, causal (a square mask: cuDNN's causal alignment is then the right one), with its
  keys repeated per query head (only the chunk's: a few megabytes).

The prefix is gathered from the paged cache into one contiguous copy per layer (its page order is the block table's).
Only eager steps take this path (the prefix length changes every step, a CUDA graph's shapes cannot), only
chunks of at least MIN_CHUNK tokens over at least MIN_CONTEXT, and only models of MIN_HIDDEN and up: there the
launch overhead of an eager step hides behind the step's GPU work. A start-up check compares it with the Triton
kernel; if cuDNN is missing or disagrees, every chunk stays with the kernel. SWIFTOPS_PT_LIBRARY_PREFILL=0 turns it
off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

MIN_CHUNK = 512
MIN_CONTEXT = 4096
# Smaller models keep their mixed-step CUDA graphs: an eager 2,048-token step of a 0.5B model took 21 ms of host
# launches against a few milliseconds of GPU work, more than cuDNN would save; from about 3B (hidden 2,048) up a
# step's GEMMs outlast its launches.
MIN_HIDDEN = 2048


def _sdpa_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """cuDNN's attention with its log-sum-exp (natural log), [B, H, L, D] in, ([B, H, L, D], [B, H, L] float32) out.
    The log-sum-exp is only on the private ops (the public SDPA drops it). On CPU, torch's flash kernel for CPU does
    the same (the tests run the route there through Triton's interpreter)."""
    if q.is_cuda:
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    else:
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out[0], out[1].reshape(q.shape[:3]).float()


def attend_chunk(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    k_prefix: torch.Tensor,
    v_prefix: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One sequence's chunk: query [H, n, D] (its new tokens), keys / values [Hkv, n, D] (theirs), the cached prefix
    k_prefix / v_prefix [P, Hkv, D] (P >= 1). Returns [n, H, D]."""
    heads, n, dim = query.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    q = query.unsqueeze(0)
    own_k = keys.repeat_interleave(group, dim=0).unsqueeze(0)
    own_v = values.repeat_interleave(group, dim=0).unsqueeze(0)
    out_own, lse_own = _sdpa_with_lse(q, own_k, own_v, True, scale)
    if not k_prefix.shape[0]:  # a whole prompt in one chunk
        return out_own[0].transpose(0, 1)
    # transformers' head order: query head h uses KV head h // group, so each KV head's queries are contiguous
    stacked = query.reshape(kv_heads, group * n, dim).unsqueeze(0)
    pre_k = k_prefix.transpose(0, 1).unsqueeze(0)
    pre_v = v_prefix.transpose(0, 1).unsqueeze(0)
    out_pre, lse_pre = _sdpa_with_lse(stacked, pre_k, pre_v, False, scale)
    out_pre = out_pre.reshape(1, heads, n, dim)
    lse_pre = lse_pre.reshape(1, heads, n)
    lse = torch.logaddexp(lse_own, lse_pre)
    merged = (
        out_own.float() * torch.exp(lse_own - lse)[..., None] + out_pre.float() * torch.exp(lse_pre - lse)[..., None]
    )
    return merged[0].transpose(0, 1).to(query.dtype)


def wanted(text_config: Any, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether this engine may route long chunks to cuDNN at all (before the start-up check): plain causal
    attention (no sliding window, no logit soft-capping) in half precision on CUDA."""
    if os.environ.get("SWIFTOPS_PT_LIBRARY_PREFILL", "1") == "0" or device.type != "cuda":
        return False
    if dtype not in (torch.float16, torch.bfloat16) or head_dim % 8 or head_dim > 128:
        return False
    if getattr(text_config, "hidden_size", 0) < MIN_HIDDEN:
        return False
    return plain_causal(text_config) and torch.backends.cudnn.is_available()


def plain_causal(text_config: Any) -> bool:
    """Every layer attends causally to the whole context, without soft-capping (what the route computes)."""
    if getattr(text_config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(text_config, "layer_types", None) or []
    in_use = getattr(text_config, "use_sliding_window", None)
    window = in_use or (in_use is None and getattr(text_config, "sliding_window", None))
    return not window and all(t == "full_attention" for t in layer_types)


def routed(items: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
    """The prefill items (sequence, chunk) long enough for cuDNN."""
    return [(seq, n) for seq, n in items if n >= MIN_CHUNK and seq.num_computed + n >= MIN_CONTEXT]


def agrees(
    heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, prefix: int = 700, n: int = 600
) -> tuple[bool, str]:
    """Start-up check: an `n`-token chunk over a `prefix`-token paged prefix, against the Triton kernel on the same
    data. Returns (agrees, why not)."""
    from swiftops.engines.pt.triton_attention import paged_attention

    gen = torch.Generator(device="cpu").manual_seed(3)
    page = 16
    ctx = prefix + n
    blocks = -(-ctx // page)
    k_cache = torch.randn(blocks * page + page, kv_heads, head_dim, generator=gen).to(device, dtype)
    v_cache = torch.randn(blocks * page + page, kv_heads, head_dim, generator=gen).to(device, dtype)
    order = torch.randperm(blocks, generator=gen) + 1  # pages scattered, block 0 unused
    tables = order.to(torch.int32)[None].to(device)
    q = torch.randn(n, heads, head_dim, generator=gen).to(device, dtype)
    scale = head_dim**-0.5

    def as_i32(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=device)

    try:
        want = paged_attention(
            q,
            k_cache,
            v_cache,
            tables,
            as_i32([0]),
            as_i32([ctx]),
            as_i32([0, n]),
            n,
            page,
            scale,
        )
        pos = torch.arange(ctx, device=device)
        slots = tables[0, pos // page].long() * page + pos % page
        k, v = k_cache[slots], v_cache[slots]
        got = attend_chunk(
            q.transpose(0, 1), k[prefix:].transpose(0, 1), v[prefix:].transpose(0, 1), k[:prefix], v[:prefix], scale
        )
        error = ((got.float() - want.float()).norm() / want.float().norm()).item()
    except Exception as exc:  # cuDNN's kernel refused this shape or GPU, or the private op changed
        return False, f"{type(exc).__name__}: {str(exc)[:200]}"
    if not error < 2e-2:
        return False, f"relative error {error:.2e} against the Triton kernel"
    return True, ""
