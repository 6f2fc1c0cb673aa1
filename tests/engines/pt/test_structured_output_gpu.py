"""Structured outputs on CUDA: the bitmask goes to the device and xgrammar's Triton kernel masks the whole batch,
under CUDA-graph decode and the pipelined steps."""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from swiftops import InferRequest, PtEngine, RequestConfig

pytestmark = pytest.mark.gpu

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "kind": {"enum": ["cat", "dog", "bird"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    "owner": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                                               "verified": {"type": "boolean"}},
              "required": ["age", "verified"], "additionalProperties": False}},
    "required": ["name", "kind", "tags", "owner"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}


def _prompts(n: int) -> list[InferRequest]:
    return [InferRequest(messages=[{"role": "user", "content": f"pet {i}"}]) for i in range(n)]


def test_json_schema_batch_under_cuda_graphs(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=64, torch_dtype="float32", kv_cache_memory_gb=0.5)
    try:
        assert engine._core.runner.graphs is not None
        before = engine._core.pipelined_steps
        sampled = engine.infer(_prompts(64), RequestConfig(max_tokens=160, temperature=1.0, response_format=FORMAT),
                               use_tqdm=False)
        assert engine._core.pipelined_steps > before
        for response in sampled:
            assert response.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(response.choices[0].message.content), SCHEMA)
        greedy = RequestConfig(max_tokens=160, temperature=0, response_format=FORMAT)
        batched = [r.choices[0].message.content for r in engine.infer(_prompts(8), greedy, use_tqdm=False)]
        alone = [engine.infer([p], greedy)[0].choices[0].message.content for p in _prompts(8)]
        assert batched == alone
    finally:
        engine.close()


def test_padded_logits_on_the_device(tiny_model_dir):
    from transformers import AutoTokenizer

    from swiftops.engines.pt.guided_decoding import GrammarCompiler, constrain
    from swiftops.engines.pt.sequence import SamplingParams, Sequence
    from swiftops.protocol.structured_output import OutputConstraint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer) + 40
    compiler = GrammarCompiler(tokenizer, vocab, {tokenizer.eos_token_id})
    constraint = OutputConstraint("regex", "[0-9]{2}", param="guided_regex")
    grammar = compiler.matcher(compiler.compile_sync(constraint), constraint)
    params = SamplingParams(max_tokens=4)
    logits = torch.zeros(2, vocab, device="cuda", dtype=torch.bfloat16)
    constrain(logits, [Sequence([1], params, print, grammar=grammar), Sequence([1], params, print)])
    allowed = torch.nonzero(logits[0] == 0).flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).isdigit() for t in allowed)
    assert bool((logits[1] == 0).all())
    compiler.close()
