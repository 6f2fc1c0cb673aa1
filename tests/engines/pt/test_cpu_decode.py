"""The CPU decode forward without transformers' per-layer glue (swiftops.engines.pt.cpu_decode): logits equal to the
model's own path bit for bit, used for the classes it serves, refused by the start-up check when it is wrong."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt.model_runner import paged_path_agrees
from swiftops.engines.pt.sequence import SamplingParams, Sequence


def _prefilled(runner, prompts: list[list[int]]) -> list[Sequence]:
    seqs = []
    for ids in prompts:
        seq = Sequence(prompt_ids=ids, params=SamplingParams(max_tokens=8), sink=lambda out: None)
        assert runner.blocks.ensure_capacity(seq, len(ids))
        seqs.append(seq)
    runner.prefill([(s, len(s.prompt_ids)) for s in seqs])
    for seq in seqs:
        seq.num_computed = len(seq.prompt_ids)
    return seqs


@pytest.mark.parametrize("model_dir", ["tiny_model_dir", "tiny_llama_dir"])
def test_lean_decode_logits_equal_the_models_own_path_exactly(model_dir, request):
    engine = PtEngine(str(request.getfixturevalue(model_dir)), max_batch_size=8, torch_dtype="float32")
    runner = engine._core.runner
    seqs: list[Sequence] = []
    try:
        layers = engine.model.config.num_hidden_layers
        assert engine.fused_kernels["lean_decode"] == layers and runner.lean is not None
        gen = torch.Generator().manual_seed(1)
        # contexts that end inside a block, on its last slot and past a boundary; 5 sequences of different lengths
        prompts = [torch.randint(3, 200, (n,), generator=gen).tolist() for n in (3, 15, 16, 17, 40)]
        with torch.inference_mode():
            seqs += _prefilled(runner, prompts)
            for step in range(3):
                for seq in seqs:
                    seq.output_ids.append(7 + step)
                    assert runner.blocks.ensure_capacity(seq, seq.num_tokens)
                lean = runner.decode(seqs)
                kept, runner.lean = runner.lean, None
                try:  # the same step again through transformers' forward: the same slots get the same keys
                    plain = runner.decode(seqs)
                finally:
                    runner.lean = kept
                assert torch.equal(lean, plain), (lean - plain).abs().max()
                for seq in seqs:
                    seq.num_computed = seq.num_tokens
    finally:
        for seq in seqs:
            runner.blocks.release(seq)
        engine.close()


def test_the_engine_answers_as_with_the_models_forward(tiny_llama_dir, monkeypatch):
    prompts = [InferRequest(prompt=[5 + i] * (6 + 3 * i)) for i in range(5)]
    config = RequestConfig(max_tokens=20, temperature=0, ignore_eos=True)
    answers = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("SWIFTOPS_PT_LEAN_DECODE", setting)
        engine = PtEngine(str(tiny_llama_dir), max_batch_size=4, torch_dtype="float32")
        try:
            assert ("lean_decode" in engine.fused_kernels) == (setting == "1")
            responses = engine.infer(prompts, config, use_tqdm=False)
            assert all(r.usage.completion_tokens == 20 for r in responses)
            answers[setting] = [r.choices[0].message.content for r in responses]
        finally:
            engine.close()
    assert answers["1"] == answers["0"]


def test_a_wrong_lean_forward_fails_the_start_up_check(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, torch_dtype="float32")
    try:
        runner = engine._core.runner
        lean = runner.lean
        vocab = engine.tokenizer.vocab_size
        args = (engine.model, runner.cache, runner.blocks, runner.device, vocab)
        assert paged_path_agrees(*args, lean)[0]
        # the softmax scale doubled in one layer: the kind of slip in copied glue the check exists for
        wrong = dataclasses.replace(lean.layers[1], scaling=lean.layers[1].scaling * 2)
        lean.layers[1], right = wrong, lean.layers[1]
        try:
            agrees, error = paged_path_agrees(*args, lean)
        finally:
            lean.layers[1] = right
        assert not agrees and error is not None and error > 1e-3
    finally:
        engine.close()


def test_models_and_settings_it_does_not_serve_keep_their_forward(tiny_model_dir, tiny_vlm_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, torch_dtype="float32", enable_lora=True)
    try:
        assert "lean_decode" not in engine.fused_kernels and engine._core.runner.lean is None
    finally:
        engine.close()
    engine = PtEngine(str(tiny_vlm_dir), max_batch_size=2, torch_dtype="float32")  # M-RoPE positions
    try:
        assert "lean_decode" not in engine.fused_kernels
    finally:
        engine.close()
