"""The fused RMSNorm kernel against transformers' own RMSNorm modules (Triton's interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is in the test extra")

from swiftops.engines.pt.fused_norm import fuse_rms_norms, rms_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_matches_qwen2_rmsnorm_and_replaces_it():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    norm = Qwen2RMSNorm(96, eps=1e-6).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    want = norm(x)
    assert torch.allclose(rms_norm(x, norm.weight, norm.variance_epsilon), want, atol=1e-5, rtol=1e-5)
    holder = torch.nn.Sequential(norm)
    assert fuse_rms_norms(holder) == 1
    assert torch.allclose(norm(x), want, atol=1e-5, rtol=1e-5)  # the module now runs the kernel


def test_a_norm_with_another_formula_keeps_its_forward():
    class GemmaLikeRMSNorm(torch.nn.Module):  # 1 + weight: not the standard formula
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(32))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)).to(x.dtype)

    norm = GemmaLikeRMSNorm().to(DEVICE)
    forward = norm.forward
    assert fuse_rms_norms(torch.nn.Sequential(norm)) == 0
    assert norm.forward == forward
