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


def test_mixed_prefill_decode_steps_replay_graphs_and_match_eager(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("SWIFTOPS_PT_MIXED_GRAPHS", raising=False)  # on by default
    # 12 prompts through 4 batch slots: later prompts join running decodes, so most prefills are mixed steps; a
    # 64-token step budget gives the buckets [64] and chunks the long prompt
    kwargs = dict(max_batch_size=4, max_num_batched_tokens=64, torch_dtype="float32", kv_cache_memory_gb=0.5)
    graphs = PtEngine(str(tiny_model_dir), **kwargs)
    eager = PtEngine(str(tiny_model_dir), enforce_eager=True, **kwargs)
    prompts = PROMPTS + [f"count to {i}" for i in range(7)]
    try:
        mixed = graphs._core.runner.mixed_graphs
        assert mixed is not None and mixed.buckets == [64] and eager._core.runner.mixed_graphs is None
        batched = _texts(graphs, prompts)
        assert mixed.replays >= 5
        assert batched == _texts(eager, prompts)
        assert batched == [_texts(graphs, [p])[0] for p in prompts]
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


def _long_context_copy(tiny_model_dir, tmp_path, positions: int):
    """The tiny model with a longer native context (its rotary embedding takes any length)."""
    import json
    import shutil

    path = tmp_path / f"tiny-{positions}"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (path / "config.json").write_text(json.dumps(config))
    return path


def _greedy_reference(model, prompt: list[int], steps: int):
    """transformers' own greedy decoding (its forward with a DynamicCache, as `generate` runs it), EOS included as
    an ordinary token like `ignore_eos`: (tokens, raw logits [steps, V] in float32)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([prompt], device=model.device)
    tokens, logits = [], []
    with torch.inference_mode():
        for _ in range(steps):
            row = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1].float()
            logits.append(row)
            tokens.append(int(row.argmax()))
            ids = torch.tensor([[tokens[-1]]], device=model.device)
    return tokens, torch.stack(logits)


def test_bf16_greedy_matches_generate_up_to_the_first_near_tie(tiny_model_dir):
    """Engine defaults (bf16 here) against transformers' generate. A random model's top two logits are sometimes
    (nearly) tied, and two correct bf16 implementations may then pick differently: compare the tokens up to the
    first step whose reference top-2 gap is within one bf16 step of the logits (1/64 for logits in [2, 4))."""
    import torch
    from transformers import AutoModelForCausalLM

    engine = PtEngine(str(tiny_model_dir), torch_dtype="bfloat16", kv_cache_memory_gb=1)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16,
                                              attn_implementation="sdpa").cuda().eval()
    try:
        assert engine.cuda_graphs and engine.max_batch_size == 256
        requests = [InferRequest(messages=[{"role": "user", "content": p}]) for p in PROMPTS * 4]
        config = GREEDY.model_copy(update={"ignore_eos": True})
        ours = [r.choices[0].message.content for r in engine.infer(requests, config)]
        compared = 0
        for request, text in zip(requests, ours):
            tokens, logits = _greedy_reference(hf, engine.encode(request), 32)
            top2 = logits.topk(2, dim=-1).values
            ties = ((top2[:, 0] - top2[:, 1]) <= 1 / 64).nonzero()
            agree = int(ties[0]) if len(ties) else len(tokens)
            # a cut inside a multi-byte character decodes to U+FFFD where the longer text has the character
            prefix = engine.tokenizer.decode(tokens[:agree], skip_special_tokens=True).rstrip("\ufffd")
            assert text.startswith(prefix), (agree, prefix, text)
            compared += agree
        assert compared >= 0.5 * 32 * len(requests)  # most of the tokens were compared, not skipped as ties
    finally:
        engine.close()


def test_defaults_take_the_checkpoint_context_with_graphs(tiny_model_dir, tmp_path):
    """The default max_model_len is the checkpoint's (here 32,768): a prompt 16 tokens shorter runs, CUDA graphs in
    use; and the engine starts at 131,072 without falling back to eager decode."""
    path = _long_context_copy(tiny_model_dir, tmp_path, 32768)
    engine = PtEngine(str(path), kv_cache_memory_gb=1)
    try:
        assert engine.max_model_len == 32768 and engine.cuda_graphs
        assert engine.max_num_batched_tokens == 8192  # the GPU's step budget (the prompt below takes four steps)
        prompt = [7] * (32768 - 16)
        response = engine.infer([InferRequest(prompt=prompt)], RequestConfig(max_tokens=8, temperature=0,
                                                                             ignore_eos=True))[0]
        assert response.usage.prompt_tokens == 32768 - 16 and response.usage.completion_tokens == 8
    finally:
        engine.close()
    longest = PtEngine(str(_long_context_copy(tiny_model_dir, tmp_path, 131072)), kv_cache_memory_gb=1)
    try:
        assert longest.max_model_len == 131072 and longest.cuda_graphs
    finally:
        longest.close()


def test_the_serving_prefill_bound_is_timed_on_the_step_graphs(tiny_model_dir):
    from swiftops.engines.pt.step_budget import MIN_PREFILL_TOKENS

    kwargs = dict(max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5)
    bounded = PtEngine(str(tiny_model_dir), max_itl_ratio=1.75, **kwargs)
    free = PtEngine(str(tiny_model_dir), **kwargs)
    try:
        bound = bounded._core.scheduler.prefill_bound
        assert free._core.scheduler.prefill_bound is None
        # a tiny model's steps cost about the same at any size: the line may be flat (no bound), never negative
        assert bound is None or (bound.fixed_tokens > 0 and bound.prefill_tokens(8) >= MIN_PREFILL_TOKENS)
        assert _texts(bounded, PROMPTS) == _texts(free, PROMPTS)
    finally:
        bounded.close()
        free.close()


def test_the_steps_are_timed_on_the_gpu_for_the_bound_and_answers_do_not_change(tiny_model_dir):
    from swiftops.engines.pt.step_budget import MIN_PREFILL_TOKENS, PrefillBound
    from swiftops.engines.pt.step_clock import StepClock

    kwargs = dict(max_batch_size=8, torch_dtype="float32", kv_cache_memory_gb=0.5)
    engine = PtEngine(str(tiny_model_dir), max_itl_ratio=1.75, **kwargs)
    free = PtEngine(str(tiny_model_dir), **kwargs)
    prompts = [f"{p} ({i})" for i in range(8) for p in PROMPTS]  # 40 requests, 8 at a time: later ones join decodes
    try:
        core = engine._core
        mixed, graphs = core.runner.mixed_graphs, core.runner.graphs
        assert mixed is not None and graphs is not None
        # a tiny model's start-up line may be flat (no bound): give it one, as measure_bound would
        bound = PrefillBound(1.75, 100.0, 256, fixed_ms=0.5, per_token_ms=0.001,
                             mixed_buckets=tuple(mixed.buckets), decode_buckets=tuple(graphs.buckets))
        core.scheduler.prefill_bound, core.clock = bound, StepClock(bound, core.device)
        assert _texts(engine, prompts) == _texts(free, prompts)
    finally:
        engine.close()
        free.close()
    assert core.clock.on
    counted = bound.measured.count
    assert {kind for kind, _ in counted} == {"decode", "mixed"}
    # keyed by the graph each step replayed
    assert all(size in (graphs.buckets if kind == "decode" else mixed.buckets) for kind, size in counted)
    means = bound.measured.mean_ms
    assert all(0 < ms < 1000 for ms in means.values())
    # a step that prefills prompts beside decode rows takes longer than a decode step of those rows
    assert max(ms for (kind, _), ms in means.items() if kind == "mixed") > min(
        ms for (kind, _), ms in means.items() if kind == "decode")
    if bound._scales["mixed"] and bound._scales["decode"]:  # trusted: the bound keeps to the measured times
        assert bound.prefill_tokens(4) >= MIN_PREFILL_TOKENS
    assert len(core.clock._open) <= 2  # every step read back but the last ones in flight
