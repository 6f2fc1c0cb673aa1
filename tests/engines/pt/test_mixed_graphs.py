"""Mixed prefill/decode steps through the CUDA-graph path's static inputs (padded tokens and sequences, tile maps):
the same logits as the eager step. On CPU the buckets are never captured and their forward runs through Triton's
interpreter; on the GPU machine the engine's start-up check and tests/engines/pt/test_pt_engine_gpu.py replay them."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is in the test extra")

from swiftops.engines.pt.attention import ATTN_IMPLEMENTATION, register
from swiftops.engines.pt.block_manager import BlockManager
from swiftops.engines.pt.kv_cache import CacheShape, PagedKVCache
from swiftops.engines.pt.mixed_graphs import CudaGraphMixedSteps, mixed_steps_agree, token_buckets
from swiftops.engines.pt.model_runner import PagedRunner
from swiftops.engines.pt.scheduler import Scheduler
from swiftops.engines.pt.sequence import SamplingParams, Sequence

DEVICE = torch.device("cpu")


@pytest.fixture()
def paged(monkeypatch):
    """A tiny Qwen2 (GQA 7: the prefill tile holds 18 tokens) on the paged path with the Triton kernels."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    monkeypatch.setenv("SWIFTOPS_PT_ATTENTION", "triton")
    register()
    config = Qwen2Config(hidden_size=56, num_hidden_layers=2, num_attention_heads=7, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=96, attn_implementation=ATTN_IMPLEMENTATION)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    cache = PagedKVCache(CacheShape(2, 1, 8, torch.float32), num_blocks=40, block_size=4, device=DEVICE)
    blocks = BlockManager(num_blocks=40, block_size=4, max_seqs=6, max_model_len=64, device=DEVICE)
    return model, cache, blocks


def _seq(ids):
    return Sequence(prompt_ids=list(ids), params=SamplingParams(max_tokens=8), sink=lambda out: None)


def test_start_up_check_passes_on_the_graph_inputs(paged):
    model, cache, blocks = paged
    mixed = CudaGraphMixedSteps(model, cache, blocks, DEVICE, max_batch=6, max_tokens=300)
    assert mixed.buckets == [256, 300]
    assert mixed_steps_agree(model, cache, blocks, DEVICE, mixed) == (True, None)
    assert blocks.num_free == 39  # the check gave its blocks back (block 0 is the scratch block)


def test_a_chunked_mixed_step_with_padding_equals_the_eager_step(paged):
    model, cache, blocks = paged
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 96, (80,), generator=gen).tolist()
    fresh, chunked, dec_a, dec_b = _seq(ids[:9]), _seq(ids[9:39]), _seq(ids[39:50]), _seq(ids[50:53])
    eager = PagedRunner(model, cache, blocks, DEVICE)
    mixed = CudaGraphMixedSteps(model, cache, blocks, DEVICE, max_batch=6, max_tokens=64)
    graphed = PagedRunner(model, cache, blocks, DEVICE, mixed_graphs=mixed)
    with torch.inference_mode():
        # earlier steps: half of `chunked`'s prompt, the decoding sequences' prompts
        for seq, n in ((chunked, 12), (dec_a, 11), (dec_b, 3)):
            assert blocks.ensure_capacity(seq, n)
            blocks.sync()
            eager.prefill([(seq, n)])
            seq.num_computed = n
        for seq, token in ((dec_a, 5), (dec_b, 7)):
            seq.output_ids.append(token)
        for seq, n in ((fresh, 9), (chunked, 30), (dec_a, 12), (dec_b, 4)):
            assert blocks.ensure_capacity(seq, n)
        blocks.sync()
        # `chunked` ends its prompt: the last 18 of its 30 tokens over the 12 already cached
        step = [(fresh, 9), (chunked, 18), (dec_a, 1), (dec_b, 1)]
        keys_before = [k.clone() for k in cache.keys]
        want = eager.prefill(step, decode_tail=2)
        keys_eager = [k.clone() for k in cache.keys]
        for k, before in zip(cache.keys, keys_before, strict=True):
            k.copy_(before)
        got = graphed.prefill(step, decode_tail=2)
        keys_graphed = [k.clone() for k in cache.keys]
        # Pipelined: the decode rows' tokens (5, 7) still on the device, not yet on the host; either path.
        for seq in (dec_a, dec_b):
            seq.output_ids.pop()
        fed = []
        for runner in (graphed, eager):
            for k, before in zip(cache.keys, keys_before, strict=True):
                k.copy_(before)
            fed.append(runner.prefill(step, decode_tail=2, tail_tokens=torch.tensor([5, 7])))
            for k, k_eager in zip(cache.keys, keys_eager, strict=True):
                torch.testing.assert_close(k[4:], k_eager[4:])
        # a prompt with precomputed embeddings (a multimodal prompt's path: the step's tokens go in as embeddings,
        # the decode rows' from their device tokens); here its own token embeddings, so the same logits
        fresh.mm_embeds = model.get_input_embeddings()(torch.tensor(fresh.prompt_ids))
        for k, before in zip(cache.keys, keys_before, strict=True):
            k.copy_(before)
        fed.append(eager.prefill(step, decode_tail=2, tail_tokens=torch.tensor([5, 7])))
        fresh.mm_embeds = None
    assert got.seqs == want.seqs == [fresh, chunked, dec_a, dec_b]
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    for out in fed:
        assert out.seqs == want.seqs
        torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)
    # the padded tokens (64 - 29 of them) wrote only the scratch block 0 (slots 0-3); every other slot as eager
    for k, k_eager in zip(keys_graphed, keys_eager, strict=True):
        torch.testing.assert_close(k[4:], k_eager[4:])


def test_a_step_larger_than_the_largest_bucket_runs_eagerly(paged):
    model, cache, blocks = paged
    mixed = CudaGraphMixedSteps(model, cache, blocks, DEVICE, max_batch=6, max_tokens=8)
    assert mixed.buckets == [8] and not mixed.fits(9, 1) and mixed.fits(8, 6) and not mixed.fits(8, 7)
    seq = _seq(range(1, 12))
    runner = PagedRunner(model, cache, blocks, DEVICE, mixed_graphs=mixed)
    assert blocks.ensure_capacity(seq, 11)
    with torch.inference_mode():
        out = runner.prefill([(seq, 11)])  # 11 tokens > 8: the eager path (staging it would fail its layout)
    assert out.logits.shape == (1, 96)


def test_token_buckets():
    assert token_buckets(2048) == [256, 512, 768, 1024, 1280, 1536, 1792, 2048]
    assert token_buckets(8192)[-4:] == [1792, 2048, 4096, 8192]
    assert token_buckets(3000)[-3:] == [1792, 2048, 3000]
    assert token_buckets(300) == [256, 300]
    assert token_buckets(100) == [100]


@pytest.mark.parametrize(("max_seqs", "budget"), [(4, 64), (32, 16), (8, 40)])
def test_no_scheduled_step_exceeds_max_step_tokens(max_seqs, budget):
    blocks = BlockManager(num_blocks=400, block_size=4, max_seqs=max_seqs, max_model_len=256, device=DEVICE)
    sched = Scheduler(blocks, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    for i in range(3 * max_seqs):
        sched.add(_seq([1] * (5 + 7 * i % 60)))
    largest = 0
    for _ in range(200):
        plan = sched.schedule()
        if not plan:
            break
        largest = max(largest, len(plan.decode) + sum(n for _, n in plan.prefill))
        for seq, n in plan.prefill:
            seq.num_computed += n
            if seq.num_pending == 0:
                seq.output_ids.append(3)
        for seq in plan.decode:
            seq.num_computed += 1
            seq.output_ids.append(3)
        for seq in list(sched.running):
            if len(seq.output_ids) >= 4:
                sched.running.remove(seq)
                blocks.release(seq)
    assert 0 < largest <= sched.max_step_tokens
