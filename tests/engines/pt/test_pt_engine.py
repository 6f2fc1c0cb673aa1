"""PtEngine behaviour on tiny random models: batching invariance, streaming, stops, n, seeds, logprobs, limits."""
from __future__ import annotations

import asyncio

import pytest
import torch

from swiftops import InferRequest, InferStats, PtEngine, RequestConfig
from swiftops.protocol import BadRequestError, PromptTooLongError

PROMPTS = ["who are you?", "浙江的省会在哪？这里有什么好玩的地方", "Write a long story about a cat " * 6,
           "hi", "def add(a, b):\n    return a + b\nExplain this code."]
GREEDY = RequestConfig(max_tokens=24, temperature=0)


def _req(text: str) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


def _text(resp) -> str:
    return resp.choices[0].message.content


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = PtEngine(str(tiny_model_dir), max_batch_size=8)
    yield eng
    eng.close()


def test_fast_path_is_used_for_standard_architectures(engine):
    assert engine.runner_name == "paged"


def test_the_cpu_step_budget_defaults_to_2048_tokens_and_a_flag_sets_it(engine, tiny_model_dir):
    # (the GPU default, 8,192, is asserted in test_pt_engine_gpu.py)
    assert engine.max_num_batched_tokens == 2048 and engine._core.scheduler.max_num_batched_tokens == 2048
    small = PtEngine(str(tiny_model_dir), max_batch_size=2, max_num_batched_tokens=32)
    try:
        assert small._core.scheduler.max_num_batched_tokens == 32
        long_prompt = [7] * 100  # four steps of at most 32 tokens, then the answer
        response = small.infer([InferRequest(prompt=long_prompt)], RequestConfig(max_tokens=4, temperature=0,
                                                                                  ignore_eos=True))[0]
        assert response.usage.prompt_tokens == 100 and response.usage.completion_tokens == 4
        assert small._core.steps >= 4 + 3
    finally:
        small.close()


def test_batch_equals_single(engine):
    batched = engine.infer([_req(p) for p in PROMPTS], GREEDY)
    for prompt, resp in zip(PROMPTS, batched):
        alone = engine.infer([_req(prompt)], GREEDY)[0]
        assert _text(resp) == _text(alone)
        assert resp.usage.completion_tokens == alone.usage.completion_tokens
    assert len({_text(r) for r in batched}) == len(PROMPTS)  # different prompts, different answers


def test_steps_that_prefill_beside_decode_rows_are_pipelined_and_answer_as_alone(tiny_model_dir):
    """Two batch slots and 24-token steps: prompts are admitted and chunked while others decode, in steps launched
    from the previous step's tokens still on the device; every answer (greedy, and seeded sampling) is the one the
    request gets alone, and rows that stop early (max_tokens 3) drop their token of the step in flight."""
    eng = PtEngine(str(tiny_model_dir), torch_dtype="float32", max_batch_size=2, max_num_batched_tokens=24)
    try:
        configs = [RequestConfig(max_tokens=n, temperature=0, ignore_eos=True) for n in (3, 20, 9)]
        configs.append(RequestConfig(max_tokens=16, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True))
        requests = [_req(p) for p in PROMPTS[:4]]
        core = eng._core
        before = core.pipelined_prefills
        together = asyncio.run(_gather(eng, requests, configs))
        assert core.pipelined_prefills > before
        for request, config, got in zip(requests, configs, together):
            alone = eng.infer([request], config, use_tqdm=False)[0]
            assert _text(got) == _text(alone) and got.usage.completion_tokens == config.max_tokens
    finally:
        eng.close()


async def _gather(eng, requests, configs):
    return await asyncio.gather(*(eng.infer_async(r, c) for r, c in zip(requests, configs)))


def test_greedy_tokens_equal_transformers_generate(engine):
    """float32 on CPU: the batch (decoded in pipelined steps: each launched from the previous step's tokens before
    the host sees them) gives exactly transformers' greedy tokens."""
    requests = [_req(p) for p in PROMPTS]
    before = engine._core.pipelined_steps
    config = GREEDY.model_copy(update={"ignore_eos": True})
    responses = engine.infer(requests, config)
    assert engine._core.pipelined_steps > before
    for request, response in zip(requests, responses):
        ids = torch.tensor([engine.encode(request)])
        with torch.inference_mode():  # generate would hold EOS back for min_new_tokens; ignore_eos lets it be chosen
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                        do_sample=False, eos_token_id=-1, pad_token_id=0)
        want = out[0, ids.shape[1]:].tolist()
        assert engine.tokenizer.decode(want, skip_special_tokens=True) == _text(response)
        assert response.usage.completion_tokens == len(want) == 24


def test_stream_concatenates_to_the_non_stream_text(engine):
    whole = engine.infer([_req(PROMPTS[1])], GREEDY)[0]
    chunks = list(engine.infer([_req(PROMPTS[1])], GREEDY.model_copy(update={"stream": True}))[0])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _text(whole)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_ends_generation_and_is_not_returned(engine):
    full = _text(engine.infer([_req(PROMPTS[0])], GREEDY)[0])
    stop = full[5:8]
    assert stop and stop in full
    cut = engine.infer([_req(PROMPTS[0])], GREEDY.model_copy(update={"stop": [stop]}))[0]
    assert _text(cut) == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = engine.infer([_req(PROMPTS[0])], GREEDY.model_copy(update={"stop": [stop], "stream": True}))[0]
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == _text(cut)


def test_max_tokens_gives_length(engine):
    resp = engine.infer([_req("hello")], RequestConfig(max_tokens=3, temperature=0))[0]
    assert resp.usage.completion_tokens == 3 and resp.choices[0].finish_reason == "length"


def test_n_choices(engine):
    resp = engine.infer([_req("tell me a story")], RequestConfig(max_tokens=12, temperature=1.0, n=3, seed=7))[0]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.message.content for c in resp.choices}) > 1
    assert 3 <= resp.usage.completion_tokens <= 36


def test_seed_makes_sampling_reproducible(engine):
    cfg = RequestConfig(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    first = _text(engine.infer([_req("sample me")], cfg)[0])
    # same seed inside a batch of other sampled requests: same text
    batch = engine.infer([_req("other"), _req("sample me"), _req("third one")], cfg)
    assert _text(batch[1]) == first
    other = _text(engine.infer([_req("sample me")], cfg.model_copy(update={"seed": 99}))[0])
    assert other != first


def test_logprobs_match_a_direct_forward(engine):
    cfg = RequestConfig(max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    req = _req("logprobs please")
    resp = engine.infer([req], cfg)[0]
    entries = resp.choices[0].logprobs.content
    assert len(entries) == 6
    prompt_ids = engine.encode(req)
    assert all(len(e.top_logprobs) == 3 for e in entries)
    # Recompute with a plain transformers forward over the prompt plus the greedy tokens.
    with torch.inference_mode():
        seq = list(prompt_ids)
        for entry in entries:
            logits = engine.model(input_ids=torch.tensor([seq], device=engine.model.device)).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            token = int(torch.argmax(lp))
            assert entry.logprob == pytest.approx(float(lp[token]), abs=1e-4)
            assert entry.top_logprobs[0].logprob == pytest.approx(float(lp.max()), abs=1e-4)
            assert entry.token == engine.tokenizer.decode([token])
            seq.append(token)


def test_prompt_longer_than_context_is_a_clear_error(engine):
    long = "word " * 2000
    with pytest.raises(PromptTooLongError, match="context is 512 tokens"):
        engine.infer([_req(long)], GREEDY)
    # max_tokens beyond the context is capped, not an error
    resp = engine.infer([_req("hi")], RequestConfig(max_tokens=100000, temperature=0, ignore_eos=True))[0]
    assert resp.usage.prompt_tokens + resp.usage.completion_tokens == engine.max_model_len


def test_infer_async_and_metrics(engine):
    async def main():
        return await asyncio.gather(*(engine.infer_async(_req(p), GREEDY) for p in PROMPTS[:3]))
    results = asyncio.run(main())
    assert [_text(r) for r in results] == [_text(r) for r in engine.infer([_req(p) for p in PROMPTS[:3]], GREEDY)]
    stats = InferStats()
    engine.infer([_req(p) for p in PROMPTS], GREEDY, metrics=[stats])
    summary = stats.compute()
    assert summary["num_samples"] == summary["num_requests"] == len(PROMPTS)
    engine.infer([_req(PROMPTS[0])], RequestConfig(max_tokens=3, temperature=1.0, n=2), metrics=[stats])
    assert (stats.compute()["num_requests"], stats.compute()["num_samples"]) == (len(PROMPTS) + 1, len(PROMPTS) + 2)
    assert summary["num_generated_tokens"] > 0 and summary["tokens/s"] > 0
    assert 0 < summary["ttft_p50"] <= summary["latency_p99"]


def test_abandoned_stream_frees_its_slot(engine):
    stream = engine.infer([_req("a long answer please")], RequestConfig(max_tokens=400, temperature=0,
                                                                       ignore_eos=True, stream=True))[0]
    next(stream)
    stream.close()
    for _ in range(100):
        if engine.num_running == 0 and engine.num_waiting == 0:
            break
        import time
        time.sleep(0.02)
    assert engine.num_running == 0 and engine.num_waiting == 0


def test_prompt_matches_the_tokenizers_own_chat_template(engine):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    ours = engine.encode(InferRequest(messages=messages))
    theirs = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
    assert ours == list(theirs)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ours = engine.encode(InferRequest(messages=messages[1:2], tools=tools))
    theirs = engine.tokenizer.apply_chat_template(messages[1:2], tools=tools, add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]
    assert ours == list(theirs)


@pytest.mark.parametrize("arch", ["llama"])
def test_llama_arch_batch_equals_single(tiny_llama_dir, arch):
    eng = PtEngine(str(tiny_llama_dir), max_batch_size=4)
    try:
        assert eng.runner_name == "paged"
        batched = eng.infer([_req(p) for p in PROMPTS[:3]], GREEDY)
        assert [_text(r) for r in batched] == [_text(eng.infer([_req(p)], GREEDY)[0]) for p in PROMPTS[:3]]
    finally:
        eng.close()


def test_chunked_prefill_preemption_and_fallback_agree(tiny_model_dir, engine):
    """Tiny prefill budget (chunks), a KV cache so small it must preempt, and the fallback runner: same text."""
    reqs = [_req(p) for p in PROMPTS]
    want = [_text(r) for r in engine.infer(reqs, GREEDY)]
    chunked = PtEngine(str(tiny_model_dir), max_batch_size=8, max_num_batched_tokens=16,
                       kv_cache_memory_gb=220 * 512 / (1 << 30))  # ~220 tokens of cache for 5 prompts
    try:
        assert [_text(r) for r in chunked.infer(reqs, GREEDY)] == want
        # Five choices of one request arrive together; four fit at admission (3 blocks each of 13) and outgrow the
        # cache as they decode: preemption is certain, whatever the timing of the requests above.
        choices = chunked.infer([reqs[3]], GREEDY.model_copy(update={"n": 5}))[0].choices
        assert [c.message.content for c in choices] == [want[3]] * 5
        assert chunked._core.scheduler.num_preemptions > 0
    finally:
        chunked.close()
    fallback = PtEngine(str(tiny_model_dir), max_batch_size=8, runner="fallback")
    try:
        assert fallback.runner_name == "fallback"
        assert [_text(r) for r in fallback.infer(reqs, GREEDY)] == want
    finally:
        fallback.close()


def test_triton_kernels_in_the_engine_agree_with_sdpa(tiny_model_dir, engine, monkeypatch):
    """The Triton attention path end to end (on CPU through Triton's interpreter): prefill in chunks of 16 tokens
    over a paged prefix, with decode rows riding along (their own launch), and decode of a mixed batch give the
    SDPA path's greedy text."""
    pytest.importorskip("triton")
    from swiftops.engines.pt import triton_attention

    reqs = [_req(p) for p in PROMPTS]
    config = GREEDY.model_copy(update={"max_tokens": 8})
    want = [_text(r) for r in engine.infer(reqs, config)]
    monkeypatch.setenv("SWIFTOPS_PT_ATTENTION", "triton")
    tails = []  # decode rows per prefill-step launch: the runner must pass them, or they take the prefill tile
    kernel = triton_attention.paged_attention

    def recording(*args, **kwargs):
        tails.append(kwargs.get("decode_tail", 0))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(triton_attention, "paged_attention", recording)
    kernels = PtEngine(str(tiny_model_dir), max_batch_size=8, max_num_batched_tokens=16)
    try:
        assert kernels.runner_name == "paged" and kernels._core.runner.use_triton
        assert [_text(r) for r in kernels.infer(reqs, config)] == want
    finally:
        kernels.close()
    assert any(tails)


def test_decode_right_after_a_block_boundary_reads_the_new_block(engine):
    """Prompts that fill whole 16-token blocks: the first decode step needs a new block, allocated by the scheduler
    just before a pipelined decode starts; its table entry must reach the device first."""
    prompts = [[(7 * i + j) % 1000 + 3 for j in range(length)] for i, length in enumerate((16, 32, 47))]
    config = RequestConfig(max_tokens=20, temperature=0, ignore_eos=True)
    responses = engine.infer([InferRequest(prompt=p) for p in prompts], config)
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                        do_sample=False, eos_token_id=-1, pad_token_id=0)
        want = engine.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        assert _text(response) == want


def test_logit_bias_forces_and_bans_tokens_in_batch_and_beam_search(engine):
    forced = engine.tokenizer.encode("zebra", add_special_tokens=False)[0]
    config = RequestConfig(max_tokens=4, temperature=0, logit_bias={forced: 100})
    for resp in (engine.infer([_req("hello")], config)[0],
                 engine.infer([_req("hello")], config.model_copy(update={"num_beams": 2}))[0]):
        assert resp.choices[0].message.content == engine.tokenizer.decode([forced] * 4)
    with torch.inference_mode():
        prompt = torch.tensor([engine.encode(_req("hello"))], device=engine.model.device)
        top = int(engine.model(input_ids=prompt).logits[0, -1].argmax())
    assert _text(engine.infer([_req("hello")], RequestConfig(max_tokens=1, temperature=0))[0]) == \
        engine.tokenizer.decode([top])
    banned = engine.infer([_req("hello")], RequestConfig(max_tokens=1, temperature=0, logit_bias={top: -100}))[0]
    assert _text(banned) != engine.tokenizer.decode([top])
    with pytest.raises(BadRequestError, match="outside this model's vocabulary"):
        engine.infer([_req("hello")], RequestConfig(max_tokens=1, logit_bias={10**6: 1}))


def test_a_stream_dropped_after_close_is_no_error(tiny_model_dir):
    import asyncio

    from swiftops import PtEngine

    async def drop_after_close() -> None:
        closing = PtEngine(str(tiny_model_dir), max_batch_size=2)
        stream = await closing.infer_async(_req("a long answer please"), RequestConfig(
            max_tokens=400, temperature=0, ignore_eos=True, stream=True))
        await stream.__anext__()
        closing.close()
        await stream.aclose()  # the consumer goes after the engine: its abort finds nothing to stop, and says nothing
        assert closing.num_running == 0

    asyncio.run(drop_after_close())
