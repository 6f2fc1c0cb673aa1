"""Automatic prefix caching on the pt engine (tiny random models, float32 on CPU): greedy outputs identical to
caching off in mixed batches, under chunked prefill, preemption and eviction, with LoRA adapters and images; a
shared system prompt is prefilled once; the counters, InferStats and the on/off switch."""
from __future__ import annotations

import asyncio
import time

import pytest

from swiftops import AdapterRequest, InferRequest, InferStats, PtEngine, RequestConfig
from swiftops.protocol.settings import EngineSettings, ModelSettings

GREEDY = RequestConfig(max_tokens=12, temperature=0, ignore_eos=True)
SYSTEM = "You are a careful assistant who answers briefly. " * 4
QUESTIONS = ["who are you?", "浙江的省会在哪？", "tell me about cats", "SELECT * FROM users", "hi",
             "Write a long story about a dog " * 3]


def _req(question: str, system: str = SYSTEM) -> InferRequest:
    return InferRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])


def _texts(engine, requests, config=GREEDY, adapter=None):
    return [r.choices[0].message.content for r in engine.infer(requests, config, adapter_request=adapter)]


class PrefillCounter:
    """Counts the prompt tokens the scheduler sends to the model (the work prefix caching saves); decode tokens
    that ride along in a prefill's forward are not among them."""

    def __init__(self, engine) -> None:
        scheduler = engine._core.scheduler
        self.tokens = 0
        # Plans come from `schedule`, and from `schedule_beside` for steps launched while the previous one runs.
        for name in ("schedule", "schedule_beside"):
            setattr(scheduler, name, self._counted(getattr(scheduler, name)))

    def _counted(self, planner):
        def counted(*args):
            plan = planner(*args)
            self.tokens += sum(chunk for _, chunk in plan.prefill)
            return plan
        return counted


def _from_flags(*argv: str):
    """(ModelSettings, EngineSettings) as `swiftops deploy|infer` builds them from these flags."""
    import click

    from swiftops.cli.options import SettingsCommand, build_settings, settings_options

    @click.command(cls=SettingsCommand)
    @settings_options(ModelSettings, EngineSettings)
    def probe(**values):
        return build_settings(values, ModelSettings, EngineSettings)
    return probe.main(list(argv), standalone_mode=False)


@pytest.fixture(scope="module")
def uncached(tiny_model_dir):
    model, engine = _from_flags("--model", str(tiny_model_dir), "--max_batch_size", "8", "--max_model_len", "2048",
                                "--enable_prefix_caching", "false")
    eng = PtEngine.from_settings(model, engine)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def cached(tiny_model_dir):
    eng = PtEngine(str(tiny_model_dir), max_batch_size=8, max_model_len=2048)  # on by default
    yield eng
    eng.close()


def test_on_by_default_and_off_by_the_setting(cached, uncached):
    assert cached.prefix_caching and cached.block_manager.prefix_caching
    assert not uncached.prefix_caching and uncached.prefix_cache_stats() is None  # --enable_prefix_caching false
    assert not uncached.block_manager.prefix_caching


def test_mixed_batches_give_the_same_greedy_tokens_as_caching_off(cached, uncached):
    requests = [_req(q) for q in QUESTIONS] + [_req(q, system="Be terse.") for q in QUESTIONS[:3]]
    want = _texts(uncached, requests)
    before = cached.prefix_cache_stats()
    first = _texts(cached, requests)  # the shared system prompt is computed once, in the first step
    again = _texts(cached, list(reversed(requests)))[::-1]  # now whole prompts but their last block come cached
    one_by_one = [_texts(cached, [r])[0] for r in requests]
    assert first == want and again == want and one_by_one == want
    queries, hits = (now - then for now, then in zip(cached.prefix_cache_stats(), before))
    assert queries == 3 * sum(len(cached.encode(r)) for r in requests) and hits > queries // 2


def test_a_shared_1000_token_system_prompt_is_prefilled_once(cached, uncached):
    clause = "Follow the policy below to the letter and cite its clause numbers. "
    system = clause * (1000 // len(cached.tokenizer(clause).input_ids) + 2)
    assert 1000 <= len(cached.tokenizer(system).input_ids) < 1100
    requests = [_req(f"question {i}: what does clause {i} say?", system=system) for i in range(8)]
    prompt_lens = [len(cached.encode(r)) for r in requests]
    counters = [PrefillCounter(e) for e in (cached, uncached)]
    stats = InferStats()
    resp = cached.infer(requests, RequestConfig(max_tokens=4, temperature=0), metrics=[stats])
    with_cache = [r.choices[0].message.content for r in resp]
    assert with_cache == _texts(uncached, requests, RequestConfig(max_tokens=4, temperature=0))
    shared = min(prompt_lens)
    assert counters[1].tokens == sum(prompt_lens)  # off: every prompt whole
    # On: the system prompt once, then each request's own tail (its last partial block and question).
    assert counters[0].tokens <= max(prompt_lens) + 7 * (max(prompt_lens) - 1000 + cached.block_manager.block_size)
    assert counters[0].tokens < shared * 1.5
    summary = stats.compute()
    assert summary["prefix_cache_queries"] == sum(prompt_lens)
    assert summary["prefix_cache_hit_rate"] > 0.8 and summary["prefix_cache_hits"] == sum(prompt_lens) - counters[0].tokens


def test_chunked_prefill_and_eviction_under_memory_pressure_lose_nothing(tiny_model_dir, uncached):
    # A cache of 24 blocks of 16 tokens: a handful of prompts at once, so cached blocks are evicted all the time.
    small = PtEngine(str(tiny_model_dir), max_batch_size=6, max_num_batched_tokens=32, block_size=16,
                     kv_cache_memory_gb=24 * 16 * 512 / (1 << 30), max_model_len=2048)
    try:
        assert small.block_manager.num_blocks == 25
        requests = [_req(q, system=s) for s in (SYSTEM, "Be terse.", "Answer in French. " * 6) for q in QUESTIONS]
        config = RequestConfig(max_tokens=48, temperature=0, ignore_eos=True)
        want = _texts(uncached, requests, config)
        got = _texts(small, requests, config) + _texts(small, requests, config)
        assert got == want + want
        assert small._core.scheduler.num_preemptions > 0  # decode ran out of blocks: preempted and recomputed
        blocks = small.block_manager
        queries, hits = small.prefix_cache_stats()
        assert 0 < hits < queries
        assert blocks.num_free == blocks.num_blocks - 1  # everything is free again (cached or not)...
        assert all(r == 0 for r in blocks._refs)  # ...and held by nobody
    finally:
        small.close()


def test_n_samples_share_the_prompt_blocks(cached, uncached):
    request = _req("list three colours")
    counter = PrefillCounter(cached)
    config = RequestConfig(max_tokens=8, temperature=0, n=3)
    got = cached.infer([request], config)[0]
    want = uncached.infer([request], config)[0]
    assert [c.message.content for c in got.choices] == [c.message.content for c in want.choices]
    prompt = len(cached.encode(request))
    assert counter.tokens < prompt + 2 * (cached.block_manager.block_size + 1)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    root = tmp_path_factory.mktemp("prefix-loras")
    return {name: make_lora_adapter(tiny_model_dir, root / name, seed) for name, seed in (("sql", 1), ("chat", 2))}


def test_lora_mixes_never_share_across_adapters_but_do_across_names_of_one(tiny_model_dir, adapters):
    lora_cached = PtEngine(str(tiny_model_dir), adapters=adapters, max_batch_size=8)
    lora_plain = PtEngine(str(tiny_model_dir), adapters=adapters, max_batch_size=8, enable_prefix_caching=False)
    try:
        names = [None, "sql", "chat"]
        jobs = [(q, AdapterRequest(name=n) if n else None) for q in QUESTIONS[:3] for n in names]

        async def run(engine):
            return await asyncio.gather(*(engine.infer_async(_req(q), GREEDY, adapter_request=a) for q, a in jobs))

        want = [r.choices[0].message.content for r in asyncio.run(run(lora_plain))]
        assert [r.choices[0].message.content for r in asyncio.run(run(lora_cached))] == want
        assert [r.choices[0].message.content for r in asyncio.run(run(lora_cached))] == want  # all cached now
        assert len({want[i] for i in range(3)}) == 3  # the adapters change the output: sharing would show
        # The same weights under another name share the cache: their identity is the weights, not the name.
        counter = PrefillCounter(lora_cached)
        twin = AdapterRequest(name="sql-twin", path=adapters["sql"])
        assert _texts(lora_cached, [_req(QUESTIONS[0])], adapter=twin) == [want[1]]
        assert counter.tokens <= lora_cached.block_manager.block_size
    finally:
        lora_cached.close()
        lora_plain.close()


def test_vlm_images_are_part_of_the_cache_key(tiny_vlm_dir):
    from PIL import Image

    blue, red = Image.new("RGB", (112, 84), (9, 99, 199)), Image.new("RGB", (112, 84), (200, 30, 30))
    system = "Describe pictures for a blind reader, colour first. " * 3

    def ask(image, question="what colour is it?"):
        return InferRequest(messages=[{"role": "system", "content": system},
                                      {"role": "user", "content": f"<image>{question}"}], images=[image])

    requests = [ask(blue), ask(red), ask(blue, "and its shape?"), _req("who are you?", system=system)]
    vlm_cached = PtEngine(str(tiny_vlm_dir), max_batch_size=8)
    vlm_plain = PtEngine(str(tiny_vlm_dir), max_batch_size=8, enable_prefix_caching=False)
    try:
        want = _texts(vlm_plain, requests)
        assert want[0] != want[1]  # the image matters: a cache shared across images would show
        assert _texts(vlm_cached, requests) == want
        counter = PrefillCounter(vlm_cached)
        assert [_texts(vlm_cached, [r])[0] for r in requests] == want
        prompt_lens = [len(vlm_cached.encoder.encode(r).input_ids) for r in requests[:3]]
        assert counter.tokens <= 4 * vlm_cached.block_manager.block_size  # each whole prompt was cached
        # A new image after the same system prompt: the text before the image is shared, the rest computed.
        counter.tokens = 0
        green = Image.new("RGB", (112, 84), (20, 200, 20))
        assert _texts(vlm_cached, [ask(green)]) == _texts(vlm_plain, [ask(green)])
        assert counter.tokens < prompt_lens[0] - len(vlm_cached.tokenizer(system).input_ids) + 16
    finally:
        vlm_cached.close()
        vlm_plain.close()


def test_prometheus_exports_the_counters_under_our_names_and_vllms(cached):
    from fastapi.testclient import TestClient

    from swiftops.server.app import create_app

    with TestClient(create_app(cached)) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:  # the warm-up request
            time.sleep(0.05)
        body = {"model": cached.model_name, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        text = client.get("/metrics").text
    samples = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    queries, hits = cached.prefix_cache_stats()
    assert hits > 0
    for prefix in ("swiftops_", "vllm:"):
        assert samples[f"{prefix}prefix_cache_queries_total"] == queries
        assert samples[f"{prefix}prefix_cache_hits_total"] == hits


def test_triton_kernels_prefill_over_cached_blocks(tiny_model_dir, uncached, monkeypatch):
    """The paged Triton kernels (on CPU through Triton's interpreter) attend over blocks another request computed."""
    pytest.importorskip("triton")
    requests = [_req(q) for q in QUESTIONS[:3]]
    config = RequestConfig(max_tokens=4, temperature=0, ignore_eos=True)
    want = _texts(uncached, requests, config)
    monkeypatch.setenv("SWIFTOPS_PT_ATTENTION", "triton")
    kernels = PtEngine(str(tiny_model_dir), max_batch_size=8, max_num_batched_tokens=64)
    try:
        assert kernels._core.runner.use_triton and kernels.prefix_caching
        assert _texts(kernels, requests, config) == want
        assert _texts(kernels, requests, config) == want
        queries, hits = kernels.prefix_cache_stats()
        assert hits > queries // 2
    finally:
        kernels.close()


def test_a_failed_step_leaves_nothing_unwritten_in_the_cache(tiny_model_dir, uncached, monkeypatch):
    """A step that fails before the model ran had offered its prefill's blocks to the cache (so that requests
    admitted with it could share them): they are taken out again, and its batchmates recompute them alone."""
    from swiftops.protocol import EngineError

    monkeypatch.setenv("SWIFTOPS_FAULT_INJECT", "error:@@boom@@")
    faulty = PtEngine(str(tiny_model_dir), max_batch_size=8, max_model_len=2048)
    monkeypatch.delenv("SWIFTOPS_FAULT_INJECT")
    try:
        good = [_req(q) for q in QUESTIONS[:4]]
        want = _texts(uncached, good)
        # Alone: its step computes the system prompt's blocks for no one else, and fails.
        with pytest.raises(EngineError):
            faulty.infer([_req("fail @@boom@@ first")], GREEDY)
        assert _texts(faulty, good) == want  # the system prompt is computed again, not taken from unwritten blocks
        results = faulty.infer([_req("fail @@boom@@ now"), *good], GREEDY, return_exceptions=True)
        assert isinstance(results[0], EngineError)
        assert [r.choices[0].message.content for r in results[1:]] == want
        assert _texts(faulty, good) == want  # now from blocks the recomputes filled
        assert faulty.prefix_cache_stats()[1] > 0
    finally:
        faulty.close()
