"""RMSNorm in one Triton kernel for the common transformers RMSNorm modules.

transformers' RMSNorm is six or seven small kernels (cast, square, mean, add, rsqrt, multiply, cast); a decoder
layer has two of them, so at small batch a decode step spends much of its time launching norms. The fused
kernel computes the same thing in one pass per row, with the same rounding points: normalise in float32, round
to the input's dtype, then multiply by the weight. Each module class is checked against its own forward before
it is replaced; a class that disagrees (a different formula, such as Gemma's 1 + weight) keeps its forward.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from swiftops.engines.pt.verified_fusion import agrees_within, switch_forwards


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    variance = tl.sum(x * x, 0) / n_cols
    normed = (x * tl.rsqrt(variance + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (weight * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)), x [..., H]: the transformers RMSNorm formula in one kernel."""
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(rows.shape[0],)](
        rows,
        weight,
        out,
        rows.stride(0),
        out.stride(0),
        hidden,
        float(eps),
        BLOCK=block,
        num_warps=4 if block <= 1024 else 8,
    )
    return out.view(*x.shape[:-1], hidden)


def _fused_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _agrees(module: Any) -> bool:
    """The fused kernel reproduces this module's own forward on random rows (to the input dtype's rounding)."""
    weight = module.weight
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(4, weight.shape[-1], generator=gen) * 3).to(device=weight.device, dtype=weight.dtype)
    with torch.inference_mode():
        return agrees_within(rms_norm(x, weight, module.variance_epsilon), module.forward(x), weight.dtype, 1e-5)


def _eligible(module: Any) -> bool:
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 1
    )


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Replace the forward of every RMSNorm module whose class passes the check; returns how many were fused."""
    return switch_forwards(model, _eligible, _agrees, _fused_forward)
