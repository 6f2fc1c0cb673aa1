"""The pt engine on CUDA: CUDA-graph decode gives the same greedy text as eager decode and as solo runs."""
from __future__ import annotations

import pytest

from swiftops import InferRequest, PtEngine, RequestConfig

pytestmark = pytest.mark.gpu
PROMPTS = ["who are you?", "浙江的省会在哪？", "Write a long story about a cat " * 5, "hi", "1 2 3 4"]
GREEDY = RequestConfig(max_tokens=32, temperature=0)


def _texts(engine, prompts):
    return [r.choices[0].message.content for r in
            engine.infer([InferRequest(messages=[{"role": "user", "content": p}]) for p in prompts], GREEDY)]


def test_cuda_graph_decode_matches_eager_and_solo(tiny_model_dir):
    # float32 on the GPU too: the tiny model's top-2 logit gaps are small enough that bf16 could flip a pick.
    # Two engines in one process: give each a small cache instead of 90% of the card.
    graphs = PtEngine(str(tiny_model_dir), max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5)
    eager = PtEngine(str(tiny_model_dir), max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5,
                     enforce_eager=True)
    try:
        assert graphs.runner_name == "paged" and graphs._core.runner.graphs is not None
        assert eager._core.runner.graphs is None
        batched = _texts(graphs, PROMPTS)
        assert batched == _texts(eager, PROMPTS)
        assert batched == [_texts(graphs, [p])[0] for p in PROMPTS]
        streamed = graphs.infer([InferRequest(messages=[{"role": "user", "content": PROMPTS[0]}])],
                                GREEDY.model_copy(update={"stream": True}))[0]
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == batched[0]
    finally:
        graphs.close()
        eager.close()


def test_lora_mixed_batch_under_cuda_graphs(tiny_model_dir, tmp_path, make_lora_adapter):
    import asyncio

    from swiftops import AdapterRequest

    paths = {name: make_lora_adapter(tiny_model_dir, tmp_path / name, seed, targets=("q_proj", "v_proj", "up_proj"))
             for seed, name in ((1, "a"), (2, "b"))}
    graphs = PtEngine(str(tiny_model_dir), adapters=paths, torch_dtype="float32", kv_cache_memory_gb=0.5)
    eager = PtEngine(str(tiny_model_dir), adapters=paths, torch_dtype="float32", kv_cache_memory_gb=0.5,
                     enforce_eager=True)
    jobs = [(p, AdapterRequest(name=n) if n else None) for p in PROMPTS for n in (None, "a", "b")]

    async def run(engine):
        return await asyncio.gather(*(engine.infer_async(InferRequest(messages=[{"role": "user", "content": p}]),
                                                         GREEDY, adapter_request=a) for p, a in jobs))
    try:
        got = [r.choices[0].message.content for r in asyncio.run(run(graphs))]
        want = [r.choices[0].message.content for r in asyncio.run(run(eager))]
        assert got == want
        assert len(set(got)) > len(PROMPTS)
    finally:
        graphs.close()
        eager.close()
