"""An attention module's query, key and value projections from one GEMM over their concatenated weights.

Llama-style attention projects the same hidden states three times. For a grouped-query model the key and value
projections are narrow (512 columns on a 7B Qwen2 shape) and their GEMMs run far below the memory bandwidth: in a
decode step at batch 256 on an H100 each took 8.5 us for 3.7 MB of weights, and at batch 1 5 us, against 12-18 us
for the query's 25.7 MB (RESULTS.md, kernel profiles). One [q; k; v] GEMM reads the input once and streams all
three weights at the rate of the large one, as vLLM's QKVParallelLinear and LMDeploy's merged projections do.

The attention module keeps the model's own forward, so every architecture that calls its projections with the same
input tensor benefits without a per-model copy: the query projection computes all three and leaves the key and
value for its siblings, which take them only when called with that very tensor. Anything else (another input, an
order other than q first, a LoRA wrapper calling its base linear) is computed the plain way, so the result is
always the projection of the tensor given. The three modules keep views of the fused weight: no extra memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from swiftops.engines.pt.verified_fusion import agrees_within, probe_rows

_NAMES = ("q_proj", "k_proj", "v_proj")


def _linear(module: Any) -> nn.Linear | None:
    """The plain linear that computes a projection: the module itself, or the base a LoRA wrapper calls."""
    base = getattr(module, "base", module) if type(module).__name__ == "LoraLinear" else module
    return base if type(base) is nn.Linear else None


def qkv_linears(module: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear] | None:
    """The q, k and v linears of an attention module when one GEMM can compute them: plain linears over the same
    input width, on one device, of one dtype, all with a bias or none."""
    found = [_linear(getattr(module, name, None)) for name in _NAMES]
    if any(f is None for f in found):
        return None
    q, k, v = (f for f in found if f is not None)
    weights = [q.weight, k.weight, v.weight]
    biases = [q.bias, k.bias, v.bias]
    if len({(w.shape[1], w.dtype, w.device) for w in weights}) != 1 or weights[0].device.type == "meta":
        return None
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None
    if hasattr(q, "fused_qkv"):  # already fused (an engine built twice over one model)
        return None
    return q, k, v


class FusedQKV:
    """The three projections of one attention module, computed together by the query's call."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        with torch.no_grad():
            self.weight = torch.cat([q.weight, k.weight, v.weight])
            self.bias = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias])
        self.widths = [q.out_features, k.out_features, v.out_features]
        start = 0
        for linear, width in zip((q, k, v), self.widths, strict=True):  # views of the fused tensors
            linear.weight = nn.Parameter(self.weight[start : start + width], requires_grad=False)
            if self.bias is not None:
                linear.bias = nn.Parameter(self.bias[start : start + width], requires_grad=False)
            start += width
        self.linears = (q, k, v)
        # How the fused GEMM is computed; the CPU's oneDNN packing (cpu_linears) swaps in its prepacked form.
        self.project: Callable[[torch.Tensor], torch.Tensor] = self.dense
        # [input, key, value] of the last query call; a list so that taking one leaves the other (the two
        # reads happen on the thread that made it: another thread's call never matches its input).
        self._held: list[Any] | None = None

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x).split(self.widths, dim=-1)
        self._held = [x, k, v]
        return q

    def _take(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        held = self._held
        if held is not None and held[0] is x and held[slot] is not None:
            out = held[slot]
            held[slot] = None
            if held[1] is None and held[2] is None:
                self._held = None  # both taken: the input and the fused output are not kept alive
            return out
        linear = self.linears[slot]
        return nn.functional.linear(x, linear.weight, linear.bias)

    def key(self, x: torch.Tensor) -> torch.Tensor:
        return self._take(x, 1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self._take(x, 2)


def _agrees(fused: FusedQKV) -> bool:
    weight = fused.weight
    x = probe_rows(weight)
    with torch.inference_mode():
        got = [fused.query(x), fused.key(x), fused.value(x)]
        want = [nn.functional.linear(x, m.weight, m.bias) for m in fused.linears]
    return fused._held is None and all(agrees_within(g, w, weight.dtype, 1e-4) for g, w in zip(got, want, strict=True))


def fuse_qkv_projections(model: nn.Module) -> list[FusedQKV]:
    """Give every attention module whose projections qualify one fused GEMM (checked on random inputs first);
    returns the fusions made."""
    made = []
    for module in list(model.modules()):
        linears = qkv_linears(module)
        if linears is None:
            continue
        fused = FusedQKV(*linears)
        if not _agrees(fused):
            continue
        for linear, forward in zip(linears, (fused.query, fused.key, fused.value), strict=True):
            linear.forward = forward  # type: ignore[method-assign, assignment]
        for linear in linears:
            linear.fused_qkv = fused  # type: ignore[assignment]  # (a plain attribute: not a submodule)
        made.append(fused)
    return made
