"""A decode step's forward on the CPU for Llama-style decoder stacks, without transformers' per-layer glue.

On the CPU nothing replays a step the way a CUDA graph does, so every Python call of the model's forward is paid at
every step. At batch 16 a decode step of the 30M-parameter benchmark model (criterion (f)) spends about 10 ms in its
33 GEMMs and about as long again around them: transformers' decorators and keyword plumbing, the attention
interface's dispatch, views and rotary helpers. A copy of the same 8 layers only 64 wide, whose GEMMs cost next to
nothing, still took 9-11 ms a step.

`LeanDecoder` runs the same modules (norms, the fused q/k/v projection, o_proj, the MLP, lm_head: their packed
forwards and hooks included) and the same attention (`attention.sdpa_decode_rows`, the paged path's SDPA over
gathered blocks), with the glue written once. The arithmetic is transformers' own, operation for operation (the
rotary embedding's rotate_half(x) * sin is computed as roll(x) times a signed sine, which is exact), so its logits
equal the model's path bit for bit (tests/engines/pt/test_cpu_decode.py). Alternating in one process, it made the
64-wide copy 1.33-1.40x and the 30M model 1.08-1.10x as fast (median of paired runs, two runs each;
benchmarks/RESULTS.md). It serves only the layer classes whose glue it copies, and the engine checks it against
the model's own forward at start-up like the paged path itself; anything else (LoRA, M-RoPE, sliding windows,
other architectures, prefill steps) runs the model's forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from swiftops.engines.pt.attention import StepContext, sdpa_decode_rows

# Decoder layers whose forward is: x + attn(norm(x)), then x + mlp(norm(x)), with Llama's rotary attention (q, k,
# v and o projections, rotate_half RoPE, one softmax over the context). Any other class keeps the model's forward.
_LAYER_CLASSES = ("LlamaDecoderLayer", "Qwen2DecoderLayer")


@dataclass
class _Layer:
    input_norm: Any
    fused: Any  # the attention's FusedQKV
    q_heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    o_proj: Any
    post_norm: Any
    mlp: Any


def _layer(module: Any) -> _Layer | None:
    attn: Any = getattr(module, "self_attn", None)
    fused = getattr(getattr(attn, "q_proj", None), "fused_qkv", None)
    if type(module).__name__ not in _LAYER_CLASSES or fused is None or getattr(attn, "sliding_window", None):
        return None
    head_dim = getattr(attn, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim % 2 or any(w % head_dim for w in fused.widths):
        return None
    q_width, k_width, v_width = fused.widths
    if k_width != v_width or q_width % k_width:
        return None
    return _Layer(
        module.input_layernorm,
        fused,
        q_width // head_dim,
        k_width // head_dim,
        head_dim,
        float(attn.scaling),
        attn.o_proj,
        module.post_attention_layernorm,
        module.mlp,
    )


class LeanDecoder:
    """One decode step (a token per sequence) of a Llama-style causal LM, from the modules of `model`."""

    def __init__(self, model: Any, layers: list[_Layer]) -> None:
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.layers = layers

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """ids, positions: [B] long; returns the logits [B, V]."""
        batch = ids.shape[0]
        hidden = self.embed(ids)
        cos, sin = self.rotary(hidden, positions[None])  # [1, B, head_dim]: the model's own RoPE (and its scaling)
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]
        half = cos.shape[-1] // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_low, sin_high], element for element
        signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        for index, layer in enumerate(self.layers):
            q, k, v = layer.fused.project(layer.input_norm(hidden)).split(layer.fused.widths, dim=-1)
            q = q.view(batch, layer.q_heads, layer.head_dim)
            k = k.view(batch, layer.kv_heads, layer.head_dim)
            q = q * cos + q.roll(half, -1) * signed_sin
            k = k * cos + k.roll(half, -1) * signed_sin
            attended = sdpa_decode_rows(ctx, index, q, k, v.view(batch, layer.kv_heads, layer.head_dim), layer.scaling)
            hidden = hidden + layer.o_proj(attended.reshape(batch, -1))
            hidden = hidden + layer.mlp(layer.post_norm(hidden))
        return self.lm_head(self.norm(hidden))


def lean_decoder(model: Any) -> LeanDecoder | None:
    """A LeanDecoder for `model` when every layer is of a class it serves (q/k/v fused); else None.
    SWIFTOPS_PT_LEAN_DECODE=0 turns it off (to compare)."""
    if os.environ.get("SWIFTOPS_PT_LEAN_DECODE") == "0":
        return None
    inner: Any = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "norm", "layers")):
        return None
    if not hasattr(model, "lm_head") or type(model).__name__ not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        return None
    layers = [_layer(module) for module in inner.layers]
    if not layers or any(layer is None for layer in layers):
        return None
    return LeanDecoder(model, [layer for layer in layers if layer is not None])
