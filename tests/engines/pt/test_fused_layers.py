"""The fused rotary and gated-MLP kernels against transformers' own code (Triton's interpreter on CPU)."""
from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is in the test extra")

from swiftops.engines.pt.fused_mlp import fuse_gated_mlps, silu_mul  # noqa: E402
from swiftops.engines.pt.fused_rotary import fuse_rotary, rotary  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qwen2(**overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=128, **overrides)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(DEVICE).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_transformers_apply_rotary_pos_emb(dtype):
    from transformers.models.qwen2 import modeling_qwen2
    original = getattr(modeling_qwen2, "_swiftops_original_apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)
    gen = torch.Generator().manual_seed(3)
    tokens, heads, kv_heads, dim = 9, 6, 2, 24
    # laid out as the attention module passes them: [1, T, H, D] projections transposed to [1, H, T, D]
    q = torch.randn(1, tokens, heads, dim, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    k = torch.randn(1, tokens, kv_heads, dim, generator=gen).to(DEVICE, dtype).transpose(1, 2)
    angles = torch.rand(1, tokens, dim // 2, generator=gen) * 50
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)
    want_q, want_k = original(q, k, cos, sin)
    got_q, got_k = rotary(q, k, cos, sin)
    assert got_q.shape == want_q.shape and got_k.shape == want_k.shape
    # bfloat16: within a unit or two of its rounding (Triton's CPU interpreter rounds its own way); a wrong formula
    # is off by O(1)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(got_q, want_q, **tolerance)
    torch.testing.assert_close(got_k, want_k, **tolerance)


def test_fuse_rotary_switches_the_modeling_module_and_keeps_the_forward():
    from transformers.models.qwen2 import modeling_qwen2
    model = _qwen2()
    ids = torch.randint(0, 128, (1, 11), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    saved = modeling_qwen2.apply_rotary_pos_emb
    try:
        assert fuse_rotary(model) == 1
        assert modeling_qwen2.apply_rotary_pos_emb is not saved
        with torch.inference_mode():
            got = model(input_ids=ids).logits
        # on CPU the switched function hands CPU tensors back to the original; on CUDA the kernel runs
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    finally:
        modeling_qwen2.apply_rotary_pos_emb = saved
        if hasattr(modeling_qwen2, "_swiftops_original_apply_rotary_pos_emb"):
            del modeling_qwen2._swiftops_original_apply_rotary_pos_emb


def test_rotary_of_another_formula_is_not_switched(monkeypatch):
    from transformers.models.qwen2 import modeling_qwen2

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):  # GPT-J style pairs: not the half rotation
        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", interleaved)
    assert fuse_rotary(_qwen2()) == 0
    assert modeling_qwen2.apply_rotary_pos_emb is interleaved
    assert sys.modules["transformers.models.qwen2.modeling_qwen2"] is modeling_qwen2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_the_two_kernels(dtype):
    gen = torch.Generator().manual_seed(5)
    gate_up = (torch.randn(7, 2 * 40, generator=gen) * 4).to(DEVICE, dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(silu_mul(gate_up), want, **tolerance)


def test_fused_mlps_keep_the_model_output_and_share_weights():
    model = _qwen2()
    ids = torch.randint(0, 128, (1, 11), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    gate_before = model.model.layers[0].mlp.gate_proj.weight.clone()
    assert fuse_gated_mlps(model) == 2
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.data_ptr() == mlp.gate_up_weight.data_ptr()  # views, no second copy
    assert torch.equal(mlp.gate_proj.weight, gate_before)
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_mlp_with_wrapped_projections_keeps_its_forward():
    model = _qwen2()
    mlp = model.model.layers[0].mlp
    mlp.up_proj = torch.nn.Sequential(mlp.up_proj)  # stands for a LoRA or quantized wrapper
    forward = mlp.forward
    assert fuse_gated_mlps(model) == 1  # the other layer only
    assert mlp.forward == forward and not hasattr(mlp, "gate_up_weight")


def test_projections_wrapped_after_the_switch_are_honoured():
    model = _qwen2()
    assert fuse_gated_mlps(model) == 2
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2)).to(DEVICE)

    class Doubled(torch.nn.Module):  # stands for a LoRA wrapper put in later: its output must count
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, value):
            return 2 * self.inner(value)

    with torch.inference_mode():
        before = mlp(x)
        mlp.up_proj = Doubled(mlp.up_proj)
        after = mlp(x)
    torch.testing.assert_close(after, 2 * before, rtol=1e-4, atol=1e-4)
