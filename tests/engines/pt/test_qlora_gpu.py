"""QLoRA and bnb checkpoints on CUDA (bitsandbytes has no CPU path here): a 4-bit base quantized on load with
LoRA adapters on top, mixed batches equal solo runs; a saved 4-bit checkpoint loads from its own config."""
from __future__ import annotations

import pytest

from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig

pytestmark = pytest.mark.gpu
pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed in this interpreter")
GREEDY = RequestConfig(max_tokens=12, temperature=0)
PROMPTS = ["who are you?", "浙江的省会在哪？", "SELECT * FROM users"]


def _texts(engine, jobs):
    import asyncio

    async def run():
        return await asyncio.gather(*(engine.infer_async(InferRequest(messages=[{"role": "user", "content": p}]),
                                                         GREEDY, adapter_request=a) for p, a in jobs))
    return [r.choices[0].message.content for r in asyncio.run(run())]


def test_qlora_mixed_batch_equals_solo(tiny_model_dir, tmp_path, make_lora_adapter):
    adapters = {name: make_lora_adapter(tiny_model_dir, tmp_path / name, seed) for seed, name in ((1, "a"), (2, "b"))}
    engine = PtEngine(str(tiny_model_dir), adapters=adapters, quant_method="bnb", quant_bits=4,
                      kv_cache_memory_gb=0.5)
    try:
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
        jobs = [(p, AdapterRequest(name=n) if n else None) for p in PROMPTS for n in (None, "a", "b")]
        mixed = _texts(engine, jobs)
        assert mixed == [_texts(engine, [job])[0] for job in jobs]
        assert len({mixed[i] for i in range(3)}) == 3  # base, a and b answer differently
    finally:
        engine.close()


def test_saved_bnb_checkpoint_is_detected_from_its_config(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
        device_map={"": 0})
    quantized.save_pretrained(tmp_path / "tiny-bnb")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "tiny-bnb")
    engine = PtEngine(str(tmp_path / "tiny-bnb"), kv_cache_memory_gb=0.5)
    try:
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
        out = engine.infer([InferRequest(messages=[{"role": "user", "content": "hi"}])], GREEDY)[0]
        assert out.usage.completion_tokens > 0 and out.choices[0].finish_reason in ("stop", "length")
    finally:
        engine.close()
