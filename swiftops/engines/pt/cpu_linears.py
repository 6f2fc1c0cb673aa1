"""Linear layers with their weights prepacked for oneDNN, for float32 models on the CPU.

A decode step at batch 16 multiplies a few rows by every weight of the model, and on the CPU the time goes to
streaming those weights: `nn.Linear` (MKL's sgemm, which repacks the weight on each call) read them at about 8 GB/s on
the 2-core development machine. oneDNN's linear over a weight reordered once into its blocked layout did the same
57 linears of a 30M-parameter step in 13-15 ms against 19-24 ms (benchmarks/RESULTS.md, criterion (f)). This is
what torch.compile's CPU freezing pass and IPEX do for inference.

A gated SiLU MLP gets one packed [gate; up] weight, so that one GEMM computes both projections
(swiftops.engines.pt.gated_mlp), and an attention module whose projections were fused (swiftops.engines.pt.fused_qkv)
one packed [q; k; v] weight. The packed copy sits beside the dense weight (LoRA wrappers, tied embeddings and
anything else that reads `.weight` keep working), so it costs the linears' size again in memory: it is made only
while that fits in a quarter of the memory available, and each module is checked against its own forward first.
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

import torch
from torch import nn

from swiftops.engines.pt.fused_qkv import FusedQKV
from swiftops.engines.pt.gated_mlp import is_gated_silu_mlp, projections_replaced, share_gate_up_weight
from swiftops.engines.pt.verified_fusion import agrees_within, probe_rows

logger = logging.getLogger(__name__)

_BATCH_HINT = 16  # rows the packed layout is tuned for (a decode step of a CPU batch); any row count is correct
_MEMORY_SHARE = 0.25  # of the memory available at start-up, at most, for the packed copies


def available() -> bool:
    """oneDNN's prepacked linear exists in this torch build (CPU builds with mkldnn)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _plain_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, self.weight, self.bias)


def _dense_wanted(x: torch.Tensor) -> bool:
    """Not what the packed copies were made for (another dtype, or autograd): the dense weights compute it."""
    return x.dtype != torch.float32 or torch.is_grad_enabled()


def _packed_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if _dense_wanted(x):
        return _plain_forward(self, x)
    return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def _eligible(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.numel() > 0
    )


def _agrees(packed: Any, plain: Any, weight: torch.Tensor) -> bool:
    """The packed forward gives the plain one's result on random rows, to float32 rounding."""
    x = probe_rows(weight)
    with torch.inference_mode():
        return agrees_within(packed(x), plain(x), torch.float32, 1e-4)


def _reordered(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _BATCH_HINT)


def _pack(module: Any, name: str, weight: torch.Tensor) -> None:
    setattr(module, name, _reordered(weight))


def _plain_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _packed_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if projections_replaced(self) or _dense_wanted(x):
        return _plain_mlp_forward(self, x)
    gate_up = torch.ops.mkldnn._linear_pointwise(x, self.packed_gate_up, None, "none", [], "")
    width = gate_up.shape[-1] // 2
    return self.down_proj(self.act_fn(gate_up[..., :width]) * gate_up[..., width:])


def _packed_qkv(fused: FusedQKV) -> Any:
    def project(x: torch.Tensor) -> torch.Tensor:
        if _dense_wanted(x):
            return fused.dense(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, fused.bias, "none", [], "")

    packed = _reordered(fused.weight)
    return project


def pack_linears(model: nn.Module, fused_qkv: list[FusedQKV] | None = None) -> int:
    """Give every float32 CPU `nn.Linear` of `model` a prepacked copy of its weight and the forward that uses it,
    every gated SiLU MLP one packed [gate; up] weight (one GEMM for both) and every fused [q; k; v] projection
    (`fused_qkv`) its packed weight, if the copies fit (see the module's docstring); returns how many linears are
    computed from packed weights."""
    if not available():
        return 0
    qkvs = [f for f in fused_qkv or [] if _eligible(f.linears[0])]
    mlps: list[Any] = [m for m in model.modules() if is_gated_silu_mlp(m)]
    mlps = [m for m in mlps if _eligible(m.gate_proj) and _eligible(m.up_proj)]
    # packed as one per MLP or attention module (and the fused q, k, v linears keep the forwards that share it)
    grouped = {id(p) for m in mlps for p in (m.gate_proj, m.up_proj)} | {
        id(p) for f in fused_qkv or [] for p in f.linears
    }
    linears: list[nn.Linear] = [
        m for m in model.modules() if isinstance(m, nn.Linear) and _eligible(m) and id(m) not in grouped
    ]
    need = (
        sum(m.weight.numel() * m.weight.element_size() for m in linears)
        + sum(2 * m.gate_proj.weight.numel() * m.gate_proj.weight.element_size() for m in mlps)
        + sum(f.weight.numel() * f.weight.element_size() for f in qkvs)
    )
    budget = _MEMORY_SHARE * _available_memory()
    if not linears and not mlps and not qkvs:
        return 0
    if need > budget:
        logger.info(
            "pt engine: linear weights not prepacked for oneDNN (%.1f GiB needed, %.1f GiB allowed)",
            need / 2**30,
            budget / 2**30,
        )
        return 0
    switched = 0
    with torch.no_grad():
        for linear in linears:
            _pack(linear, "packed_weight", linear.weight)
            packed = types.MethodType(_packed_forward, linear)
            if _agrees(packed, types.MethodType(_plain_forward, linear), linear.weight):
                linear.forward = packed  # type: ignore[method-assign]
                switched += 1
            else:
                del linear.packed_weight
        for mlp in mlps:
            share_gate_up_weight(mlp)
            _pack(mlp, "packed_gate_up", mlp.gate_up_weight)
            packed = types.MethodType(_packed_mlp_forward, mlp)
            if _agrees(packed, types.MethodType(_plain_mlp_forward, mlp), mlp.gate_proj.weight):
                mlp.forward = packed
                switched += 2
            else:
                del mlp.packed_gate_up
        for fused in qkvs:
            project = _packed_qkv(fused)
            if _agrees(project, fused.dense, fused.weight):
                fused.project = project
                switched += 3
    return switched
