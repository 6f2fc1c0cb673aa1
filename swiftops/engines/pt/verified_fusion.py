"""Switching modules to a fused kernel only where the kernel reproduced their class's own forward.

Each fused kernel (RMSNorm, the gated MLP) checks one module of a class on random inputs; a class whose forward is
another formula (Gemma's 1 + weight norm, a different activation) or that fails to run keeps its own forward.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)


def agrees_within(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, fp32_tolerance: float) -> bool:
    """Equal up to the dtype's rounding (a unit or two of bfloat16/float16); a wrong formula is off by O(1)."""
    tolerance = fp32_tolerance if dtype == torch.float32 else 2e-2
    got, want = got.float(), want.float()
    return bool(((got - want).abs() <= tolerance * (1 + want.abs())).all())


def probe_rows(weight: torch.Tensor, rows: int = 5) -> torch.Tensor:
    """Seeded random rows that a linear of `weight` ([out, in]) takes, on its device and in its dtype: the same
    input for every check, so a check that passed once passes again."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, weight.shape[1], generator=gen).to(weight.device, weight.dtype)


def switch_forwards(
    model: torch.nn.Module,
    eligible: Callable[[Any], bool],
    agrees: Callable[[Any], bool],
    fused_forward: Callable,
    prepare: Callable[[Any], None] | None = None,
) -> int:
    """Give every eligible module whose class passes `agrees` the forward `fused_forward`; returns how many."""
    verdicts: dict[type, bool] = {}
    switched = 0
    for module in model.modules():
        if not eligible(module):
            continue
        if prepare is not None:
            prepare(module)
        cls = type(module)
        if cls not in verdicts:
            try:
                verdicts[cls] = agrees(module)
            except Exception as exc:
                logger.info("fused %s skipped (%s: %s)", cls.__name__, type(exc).__name__, exc)
                verdicts[cls] = False
            if not verdicts[cls]:
                logger.info("fused %s skipped: its forward is not the formula the kernel computes", cls.__name__)
        if verdicts[cls]:
            module.forward = types.MethodType(fused_forward, module)
            switched += 1
    return switched
