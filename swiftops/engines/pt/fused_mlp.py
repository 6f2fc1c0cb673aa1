"""The gated MLP of Llama-style models (`down(act(gate(x)) * up(x))`) as one GEMM for gate and up, then one Triton
kernel for SiLU and the product.

transformers runs two GEMMs, a SiLU and a multiply, each reading and writing the [tokens, intermediate] activations.
Here the gate and up weights share one [2 * intermediate, hidden] tensor (the modules' own weights become views of
it: no extra memory), so one GEMM reads the input once, and the kernel reads both halves and writes the product,
with the original's rounding points (SiLU rounded to the input's dtype, then the product). Each MLP class is checked
against its own forward before its modules are switched. Modules whose projections are not plain `nn.Linear`
(LoRA wrappers, quantized layers) keep their forward.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import nn

from swiftops.engines.pt.gated_mlp import is_gated_silu_mlp, projections_replaced, share_gate_up_weight
from swiftops.engines.pt.verified_fusion import agrees_within, probe_rows, switch_forwards


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_out, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0)
    up = tl.load(gu_ptr + row * stride_gu + n_cols + cols, mask=mask, other=0.0)
    dtype = gate.dtype
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * up.to(tl.float32)).to(dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2 * I] (gate first) -> silu(gate) * up, [..., I]."""
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], width, dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, triton.next_power_of_2(width))
    _silu_mul_kernel[(rows.shape[0], triton.cdiv(width, block))](
        rows, out, rows.stride(0), out.stride(0), width, BLOCK=block, num_warps=4
    )
    return out.view(*gate_up.shape[:-1], width)


def _fused_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if projections_replaced(self):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return self.down_proj(silu_mul(nn.functional.linear(x, self.gate_up_weight)))


def _agrees(module: Any) -> bool:
    weight = module.gate_proj.weight
    x = probe_rows(weight)
    with torch.inference_mode():
        return agrees_within(_fused_forward(module, x), module.forward(x), weight.dtype, 1e-4)


def fuse_gated_mlps(model: torch.nn.Module) -> int:
    """Switch every gated SiLU MLP whose class passes the check; returns how many were switched."""
    return switch_forwards(
        model,
        is_gated_silu_mlp,
        _agrees,
        _fused_forward,
        prepare=share_gate_up_weight,
    )
