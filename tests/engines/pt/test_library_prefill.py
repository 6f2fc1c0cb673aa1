"""Long prefill chunks through the library kernel (cuDNN on CUDA; on CPU torch's flash kernel for CPU, with the
Triton kernels through Triton's interpreter): the same attention as the Triton kernel alone."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is in the test extra")

from swiftops.engines.pt import library_prefill  # noqa: E402
from swiftops.engines.pt.model_runner import PagedRunner  # noqa: E402
from tests.engines.pt.test_mixed_graphs import DEVICE, _seq, paged  # noqa: E402,F401  (the fixture)


def test_the_route_agrees_with_the_triton_kernel_gqa_and_odd_head_size():
    assert library_prefill.agrees(7, 1, 24, torch.float32, torch.device(DEVICE), prefix=37, n=29) == (True, "")
    assert library_prefill.agrees(4, 2, 16, torch.float32, torch.device(DEVICE), prefix=0, n=21) == (True, "")


def test_a_step_with_long_chunks_gives_the_kernels_logits(paged, monkeypatch):
    """Two long chunks over cached prefixes (listed after a short prompt: the runner moves them first), a short
    prompt and two decode rows: the same logits as the Triton kernel alone, and the same keys in the cache."""
    model, cache, blocks = paged
    monkeypatch.setattr(library_prefill, "MIN_CHUNK", 8)
    monkeypatch.setattr(library_prefill, "MIN_CONTEXT", 20)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 96, (120,), generator=gen).tolist()
    short, long_a, long_b, dec_a, dec_b = (_seq(ids[:6]), _seq(ids[6:40]), _seq(ids[40:70]), _seq(ids[70:81]),
                                           _seq(ids[81:84]))
    runner = PagedRunner(model, cache, blocks, torch.device(DEVICE))
    with torch.inference_mode():
        for seq, n in ((long_a, 14), (long_b, 12), (dec_a, 11), (dec_b, 3)):  # earlier steps
            assert blocks.ensure_capacity(seq, n)
            blocks.sync()
            runner.prefill([(seq, n)])
            seq.num_computed = n
        for seq, token in ((dec_a, 5), (dec_b, 7)):
            seq.output_ids.append(token)
        for seq, n in ((short, 6), (long_a, 34), (long_b, 30), (dec_a, 12), (dec_b, 4)):
            assert blocks.ensure_capacity(seq, n)
        step = [(short, 6), (long_a, 20), (long_b, 18), (dec_a, 1), (dec_b, 1)]
        assert library_prefill.routed(step[:3]) == [(long_a, 20), (long_b, 18)]
        before = [k.clone() for k in cache.keys]
        want = runner.prefill(step, decode_tail=2)
        keys_kernel = [k.clone() for k in cache.keys]
        for k, saved in zip(cache.keys, before, strict=True):
            k.copy_(saved)
        runner.library_prefill = True
        got = runner.prefill(step, decode_tail=2)
    names = {id(s): n for n, s in dict(short=short, long_a=long_a, long_b=long_b, dec_a=dec_a, dec_b=dec_b).items()}
    assert [names[id(s)] for s in want.seqs] == ["short", "long_a", "long_b", "dec_a", "dec_b"]
    assert [names[id(s)] for s in got.seqs] == ["long_a", "long_b", "short", "dec_a", "dec_b"]
    order = [1, 2, 0, 3, 4]
    torch.testing.assert_close(got.logits, want.logits[order], rtol=1e-4, atol=1e-4)
    for k, k_kernel in zip(cache.keys, keys_kernel, strict=True):
        torch.testing.assert_close(k, k_kernel)


def test_only_plain_causal_attention_takes_the_route():
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    assert library_prefill.plain_causal(Qwen2Config())  # a sliding window configured, not in use
    assert not library_prefill.plain_causal(Qwen2Config(use_sliding_window=True, sliding_window=64))
    assert not library_prefill.plain_causal(Gemma2Config())  # soft-capping, sliding layers
    assert not library_prefill.plain_causal(MistralConfig(sliding_window=4096))
    assert library_prefill.plain_causal(MistralConfig(sliding_window=None))
    # never on CPU, nor in float32 (cuDNN's fused attention takes half precision)
    assert not library_prefill.wanted(Qwen2Config(), torch.device("cpu"), torch.bfloat16, 128)


@pytest.mark.gpu
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(28, 4, 128), (14, 2, 64)])
def test_cudnn_agrees_with_the_kernel_on_a_long_prefix(heads, kv_heads, head_dim):
    # the 7B and 0.5B shapes in bfloat16: a 2,048-token chunk over a 6,000-token prefix, and a whole prompt
    cuda = torch.device("cuda")
    assert library_prefill.agrees(heads, kv_heads, head_dim, torch.bfloat16, cuda, prefix=6000, n=2048) == (True, "")
    assert library_prefill.agrees(heads, kv_heads, head_dim, torch.bfloat16, cuda, prefix=0, n=1000) == (True, "")
