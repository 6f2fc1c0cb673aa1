"""Many LoRA adapters on the pt engine: mixed batches equal solo runs, merge equals unmerged, LRU, checks."""
from __future__ import annotations

import json

import pytest
import torch

from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig
from swiftops.protocol import ConfigError, ModelNotFoundError

GREEDY = RequestConfig(max_tokens=20, temperature=0)
PROMPTS = ["who are you?", "浙江的省会在哪？", "tell me about cats and dogs", "SELECT * FROM users"]



@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    root = tmp_path_factory.mktemp("loras")
    return {name: make_lora_adapter(tiny_model_dir, root / name, seed)
            for name, seed in (("sql", 1), ("chat", 2), ("poem", 3))}


@pytest.fixture(scope="module")
def engine(tiny_model_dir, adapters):
    eng = PtEngine(str(tiny_model_dir), adapters=adapters, max_batch_size=16)
    yield eng
    eng.close()


def _req(text):
    return InferRequest(messages=[{"role": "user", "content": text}])


async def _gather(engine, jobs):
    import asyncio
    return await asyncio.gather(*(engine.infer_async(_req(p), GREEDY, adapter_request=a) for p, a in jobs))


def _solo(engine, prompt, adapter):
    return engine.infer([_req(prompt)], GREEDY, adapter_request=adapter)[0].choices[0].message.content


def test_mixed_batch_equals_solo_runs(engine, adapters):
    import asyncio
    names = [None, *adapters]
    jobs = [(p, AdapterRequest(name=n) if n else None) for p in PROMPTS for n in names]
    mixed = asyncio.run(_gather(engine, jobs))
    for (prompt, adapter), resp in zip(jobs, mixed):
        assert resp.choices[0].message.content == _solo(engine, prompt, adapter)
        assert resp.model == (adapter.name if adapter else engine.model_name)
    # adapters really change the output
    by_adapter = {n: [r.choices[0].message.content for (p, a), r in zip(jobs, mixed) if (a.name if a else None) == n]
                  for n in names}
    assert len({tuple(v) for v in by_adapter.values()}) == len(names)
    assert set(engine.adapter_names) == set(adapters)


def test_streaming_with_an_adapter(engine):
    adapter = AdapterRequest(name="poem")
    chunks = list(engine.infer([_req(PROMPTS[2])], GREEDY.model_copy(update={"stream": True}),
                               adapter_request=adapter)[0])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _solo(engine, PROMPTS[2], adapter)


def test_merged_adapter_gives_the_unmerged_output(tiny_model_dir, adapters, engine):
    merged = PtEngine(str(tiny_model_dir), adapters={"sql": adapters["sql"]}, merge_lora=True)
    try:
        assert merged.adapter_names == []
        for prompt in PROMPTS:
            want = _solo(engine, prompt, AdapterRequest(name="sql"))
            assert merged.infer([_req(prompt)], GREEDY)[0].choices[0].message.content == want
    finally:
        merged.close()


def test_peft_reference_matches_our_lora_logits(tiny_model_dir, adapters, engine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters["chat"]).eval()
    ids = engine.encode(_req(PROMPTS[0]))
    with torch.inference_mode():
        want = int(ref(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    resp = engine.infer([_req(PROMPTS[0])], RequestConfig(max_tokens=1, temperature=0, logprobs=True),
                        adapter_request=AdapterRequest(name="chat"))[0]
    assert resp.choices[0].logprobs.content[0].token == engine.tokenizer.decode([want])


def test_lru_unloading_with_one_slot(tiny_model_dir, adapters, engine):
    small = PtEngine(str(tiny_model_dir), adapters=adapters, max_loras=1, max_batch_size=8)
    try:
        import asyncio
        jobs = [(p, AdapterRequest(name=n)) for p in PROMPTS[:2] for n in adapters]
        got = asyncio.run(_gather(small, jobs))
        for (prompt, adapter), resp in zip(jobs, got):
            assert resp.choices[0].message.content == _solo(engine, prompt, adapter)
        assert len(small.lora.slots) == 1
    finally:
        small.close()


def test_adapter_loaded_by_path_at_request_time(tiny_model_dir, adapters, engine):
    eng = PtEngine(str(tiny_model_dir), enable_lora=True, adapters={"sql": adapters["sql"]})
    try:
        new = AdapterRequest(name="late-poem", path=adapters["poem"])
        assert _solo(eng, PROMPTS[1], new) == _solo(engine, PROMPTS[1], AdapterRequest(name="poem"))
        assert "late-poem" in eng.adapter_names
        with pytest.raises(ModelNotFoundError, match="not loaded"):
            eng.infer([_req("hi")], GREEDY, adapter_request=AdapterRequest(name="nope"))
    finally:
        eng.close()


def test_adapter_for_another_model_is_refused(tiny_model_dir, tmp_path, make_lora_adapter):
    from transformers import AutoModelForCausalLM, Qwen2Config
    cfg = Qwen2Config.from_pretrained(tiny_model_dir)
    cfg.intermediate_size = 96  # other MLP shape: up_proj is 64->96 instead of 64->128
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(other)
    adapter = make_lora_adapter(other, tmp_path / "bad", 0, targets=("up_proj",))
    cfg_json = json.loads((tmp_path / "bad" / "adapter_config.json").read_text())
    cfg_json["base_model_name_or_path"] = "other-base"
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ConfigError, match="does not fit this model.*up_proj"):
        PtEngine(str(tiny_model_dir), adapters={"bad": adapter})
