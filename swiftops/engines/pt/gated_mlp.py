"""Which MLPs are Llama-style gated SiLU MLPs (`down(silu(gate(x)) * up(x))`), and their gate and up weights as one
[2 * intermediate, hidden] tensor, so that one GEMM computes both. The GPU's Triton kernel (fused_mlp) and the
CPU's prepacked linears (cpu_linears) fuse the same modules; this module owns the test and the weight sharing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_gated_silu_mlp(module: nn.Module) -> bool:
    """A module named *MLP whose gate, up and down projections are plain bias-free linears with a SiLU between."""
    gate: Any  # an nn.Linear once the all() below holds (mypy cannot follow that check)
    up: Any
    gate, up, down = (getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    act = getattr(module, "act_fn", None)
    return (
        type(module).__name__.endswith("MLP")
        and all(type(m) is nn.Linear for m in (gate, up, down))
        and gate.bias is None
        and up.bias is None
        and gate.weight.shape == up.weight.shape
        and type(act).__name__ in ("SiLU", "SiLUActivation")
        and gate.weight.dtype == up.weight.dtype
    )


def projections_replaced(module: Any) -> bool:
    """LoRA layers put in after the switch (an adapter added to a running engine) wrap the projections: their
    deltas must apply, so the module computes the plain way again."""
    return type(module.gate_proj) is not nn.Linear or type(module.up_proj) is not nn.Linear


def share_gate_up_weight(module: Any) -> None:
    """One [2I, H] tensor for gate and up; their modules keep views of it (state dicts and LoRA-free reads agree)."""
    gate, up = module.gate_proj, module.up_proj
    with torch.no_grad():
        fused = torch.cat([gate.weight, up.weight])
    width = gate.weight.shape[0]
    gate.weight = nn.Parameter(fused[:width], requires_grad=False)
    up.weight = nn.Parameter(fused[width:], requires_grad=False)
    module.gate_up_weight = fused
