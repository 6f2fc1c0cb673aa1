"""One GEMM for an attention module's q, k and v projections (swiftops.engines.pt.fused_qkv): the same results as the
three linears, the weights shared, and the plain computation whenever a call is not the one the fused GEMM served."""
from __future__ import annotations

import threading

import torch
from torch import nn

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt.fused_qkv import fuse_qkv_projections, qkv_linears


class _Attention(nn.Module):  # the projections of a grouped-query attention module (8 query, 2 kv heads of 4)
    def __init__(self, bias: bool = True, v_bias: bool | None = None) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32, bias=bias)
        self.k_proj = nn.Linear(32, 8, bias=bias)
        self.v_proj = nn.Linear(32, 8, bias=bias if v_bias is None else v_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


def _pair(**kwargs) -> tuple[_Attention, _Attention]:
    torch.manual_seed(0)
    plain = _Attention(**kwargs)
    fused = _Attention(**kwargs)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def test_fused_projections_equal_the_three_linears_and_share_one_weight():
    plain, module = _pair()
    made = fuse_qkv_projections(module)
    assert len(made) == 1
    fused = made[0]
    assert module.q_proj.weight.data_ptr() == fused.weight.data_ptr()
    assert module.v_proj.bias.data_ptr() == fused.bias.data_ptr() + (32 + 8) * fused.bias.element_size()
    with torch.inference_mode():
        for shape in ((1, 32), (7, 32), (2, 5, 32)):
            x = torch.randn(*shape)
            for got, want in zip(module(x), plain(x), strict=True):
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert fused._held is None  # key and value taken: nothing kept alive between layers
    torch.testing.assert_close(module.state_dict()["k_proj.weight"], plain.k_proj.weight.detach())


def test_a_call_with_another_input_or_in_another_order_is_computed_plainly():
    plain, module = _pair()
    fuse_qkv_projections(module)
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    with torch.inference_mode():
        module.q_proj(x)
        torch.testing.assert_close(module.k_proj(y), plain.k_proj(y))  # cross-attention: another input
        torch.testing.assert_close(module.k_proj(x), plain.k_proj(x))  # (the held key is still the right one)
        torch.testing.assert_close(module.v_proj(x), plain.v_proj(x))
        torch.testing.assert_close(module.v_proj(x), plain.v_proj(x))  # taken already: computed again
        torch.testing.assert_close(module.k_proj(x), plain.k_proj(x))  # key before any query call


def test_calls_from_two_threads_each_get_their_own_input_projected():
    plain, module = _pair()
    fuse_qkv_projections(module)
    errors: list[str] = []
    start = threading.Barrier(2)

    def run(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        start.wait()
        with torch.inference_mode():
            for _ in range(300):
                x = torch.randn(4, 32, generator=gen)
                for got, want in zip(module(x), plain(x), strict=True):
                    if not torch.allclose(got, want, rtol=1e-6, atol=1e-6):
                        errors.append("mismatch")

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_modules_that_one_gemm_cannot_serve_are_left_alone():
    _, mixed_bias = _pair(v_bias=False)
    assert qkv_linears(mixed_bias) is None and fuse_qkv_projections(mixed_bias) == []
    half = _Attention()
    half.v_proj = nn.Linear(32, 8).to(torch.float64)
    assert qkv_linears(half) is None
    module = _Attention()
    assert len(fuse_qkv_projections(module)) == 1
    assert fuse_qkv_projections(module) == []  # fused once, not again


def test_pt_engine_fuses_every_layer_and_answers_as_the_unfused_model(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, torch_dtype="float32")
    try:
        layers = engine.model.config.num_hidden_layers
        assert engine.fused_kernels["qkv"] == layers
        prompts = [InferRequest(prompt=[5 + i] * (8 + i)) for i in range(4)]
        config = RequestConfig(max_tokens=12, temperature=0, ignore_eos=True)
        fused = [r.choices[0].message.content for r in engine.infer(prompts, config, use_tqdm=False)]
        undone = 0
        for module in engine.model.modules():  # back to the linears' own forwards, same engine and cache
            if hasattr(module, "fused_qkv"):
                del module.forward
                undone += 1
        assert undone == 3 * layers
        plain = [r.choices[0].message.content for r in engine.infer(prompts, config, use_tqdm=False)]
    finally:
        engine.close()
    assert fused == plain
