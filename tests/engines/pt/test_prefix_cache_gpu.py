"""Prefix caching on CUDA: the Triton kernels prefill over cached blocks and CUDA graphs decode over them, with the
same greedy text as caching off (float32: the tiny model's top-2 gaps are too small for bf16 comparisons)."""
from __future__ import annotations

import asyncio

import pytest

from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig

pytestmark = pytest.mark.gpu
SYSTEM = "You are a careful assistant who answers briefly and cites sources. " * 6
QUESTIONS = ["who are you?", "浙江的省会在哪？", "Write a long story about a cat " * 5, "hi", "1 2 3 4"]
GREEDY = RequestConfig(max_tokens=32, temperature=0, ignore_eos=True)


def _req(question: str) -> InferRequest:
    return InferRequest(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])


def _texts(engine, requests, adapter=None):
    return [r.choices[0].message.content for r in engine.infer(requests, GREEDY, adapter_request=adapter)]


def test_cached_prefixes_under_triton_and_cuda_graphs_match_caching_off(tiny_model_dir):
    cached = PtEngine(str(tiny_model_dir), max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5)
    plain = PtEngine(str(tiny_model_dir), max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5,
                     enable_prefix_caching=False)
    chunked = PtEngine(str(tiny_model_dir), max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5,
                       max_num_batched_tokens=32)
    try:
        assert cached.cuda_graphs and cached.prefix_caching and not plain.prefix_caching
        requests = [_req(q) for q in QUESTIONS]
        want = _texts(plain, requests)
        for engine in (cached, chunked):
            assert _texts(engine, requests) == want  # the first request computes the system prompt, the rest share
            assert _texts(engine, requests) == want  # now every prompt comes cached but its last block
            assert [_texts(engine, [r])[0] for r in requests] == want
            queries, hits = engine.prefix_cache_stats()
            assert hits > queries // 2
        n3 = cached.infer([requests[0]], GREEDY.model_copy(update={"n": 3}))[0]
        assert [c.message.content for c in n3.choices] == [want[0]] * 3
    finally:
        for engine in (cached, plain, chunked):
            engine.close()


def test_lora_mixes_with_prefix_caching_under_cuda_graphs(tiny_model_dir, tmp_path, make_lora_adapter):
    paths = {name: make_lora_adapter(tiny_model_dir, tmp_path / name, seed, targets=("q_proj", "v_proj", "up_proj"))
             for seed, name in ((1, "a"), (2, "b"))}
    cached = PtEngine(str(tiny_model_dir), adapters=paths, torch_dtype="float32", kv_cache_memory_gb=0.5)
    plain = PtEngine(str(tiny_model_dir), adapters=paths, torch_dtype="float32", kv_cache_memory_gb=0.5,
                     enable_prefix_caching=False)
    jobs = [(q, AdapterRequest(name=n) if n else None) for q in QUESTIONS for n in (None, "a", "b")]

    async def run(engine):
        return await asyncio.gather(*(engine.infer_async(_req(q), GREEDY, adapter_request=a) for q, a in jobs))
    try:
        want = [r.choices[0].message.content for r in asyncio.run(run(plain))]
        for _ in range(2):
            assert [r.choices[0].message.content for r in asyncio.run(run(cached))] == want
        assert len(set(want)) > len(QUESTIONS)
    finally:
        cached.close()
        plain.close()
