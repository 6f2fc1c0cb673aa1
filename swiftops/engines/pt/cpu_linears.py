"""Linear layers with their weights prepacked for oneDNN, for float32 models on the CPU.

A decode step at batch 16 multiplies a few rows by every weight of the model, and on the CPU the time goes to
streaming those weights: `nn.Linear` (MKL's sgemm, which repacks the weight on each call) read them at about 8 GB/s on
the 2-core development machine. oneDNN's linear over a weight reordered once into its blocked layout did the same
57 linears of a 30M-parameter step in 13-15 ms against 19-24 ms (benchmarks/RESULTS.md, criterion (f)). This is
what torch.compile's CPU freezing pass and IPEX do for inference.

The packed copy sits beside the dense weight (LoRA wrappers, tied embeddings and anything else that reads `.weight`
keep working), so it costs the linears' size again in memory: it is made only while that fits in a quarter of the
memory available, and each module is checked against its own forward first.
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

import torch
from torch import nn

from swiftops.engines.pt.verified_fusion import agrees_within

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


def _packed_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or torch.is_grad_enabled():  # not what the copy was made for: the dense way
        return nn.functional.linear(x, self.weight, self.bias)
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


def _agrees(module: Any) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, module.in_features, generator=gen)
    with torch.inference_mode():
        return agrees_within(
            _packed_forward(module, x), nn.functional.linear(x, module.weight, module.bias), torch.float32, 1e-4
        )


def pack_linears(model: nn.Module) -> int:
    """Give every float32 CPU `nn.Linear` of `model` a prepacked copy of its weight and the forward that uses it,
    if the copies fit (see the module's docstring); returns how many modules were switched."""
    if not available():
        return 0
    modules: list[nn.Linear] = [m for m in model.modules() if isinstance(m, nn.Linear) and _eligible(m)]
    need = sum(m.weight.numel() * m.weight.element_size() for m in modules)
    budget = _MEMORY_SHARE * _available_memory()
    if not modules or need > budget:
        if modules:
            logger.info(
                "pt engine: linear weights not prepacked for oneDNN (%.1f GiB needed, %.1f GiB allowed)",
                need / 2**30,
                budget / 2**30,
            )
        return 0
    switched = 0
    with torch.no_grad():
        for module in modules:
            module.packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), _BATCH_HINT)
            if _agrees(module):
                module.forward = types.MethodType(_packed_forward, module)  # type: ignore[method-assign]
                switched += 1
            else:
                del module.packed_weight
    return switched
