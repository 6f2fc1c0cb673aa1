"""`device_map` and `max_memory` on the pt engine: a model split by a JSON map (layer by layer, here all on the CPU)
answers exactly as the same model loaded whole; on two GPUs the split really spans both."""
from __future__ import annotations

import json

import pytest
import torch

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt.checkpoint import load_model, parse_max_memory
from swiftops.protocol import ConfigError

PROMPTS = ["who are you?", "Write a long story about a cat " * 4, "hi"]
GREEDY = RequestConfig(max_tokens=16, temperature=0)


def layer_map(num_layers: int, devices: list) -> dict:
    """Every module of a Qwen2/Llama checkpoint named, layers dealt over `devices` in contiguous halves."""
    per = -(-num_layers // len(devices))
    mapping = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    mapping.update({f"model.layers.{i}": devices[i // per] for i in range(num_layers)})
    mapping.update({"model.norm": devices[-1], "lm_head": devices[-1]})
    return mapping


def answers(engine: PtEngine) -> list[str]:
    requests = [InferRequest(messages=[{"role": "user", "content": p}]) for p in PROMPTS]
    return [r.choices[0].message.content for r in engine.infer(requests, GREEDY)]


def engine(model_dir, **kwargs) -> PtEngine:
    # Two engines live in one process on a GPU machine: small caches, no graph capture, fp32 for exact greedy ties.
    return PtEngine(str(model_dir), max_batch_size=4, enforce_eager=True, torch_dtype="float32",
                    kv_cache_memory_gb=0.1, **kwargs)


def test_json_device_map_generates_what_the_whole_model_does(tiny_model_dir):
    whole = engine(tiny_model_dir)
    try:
        expected = answers(whole)
        num_layers = whole.model.config.num_hidden_layers
        device = str(next(whole.model.parameters()).device)  # cpu here; cuda:0 on a GPU machine
    finally:
        whole.close()
    split = engine(tiny_model_dir, device_map=json.dumps(layer_map(num_layers, [device])))
    try:
        assert {str(p.device) for p in split.model.parameters()} == {device}
        assert split.runner_name == "paged"  # one device: the paged KV cache path still applies
        assert answers(split) == expected
    finally:
        split.close()


@pytest.mark.gpu
def test_device_map_over_a_gpu_and_the_cpu_generates_what_one_gpu_does(tiny_model_dir):
    whole = engine(tiny_model_dir)
    try:
        expected = answers(whole)
        num_layers = whole.model.config.num_hidden_layers
    finally:
        whole.close()
    split = engine(tiny_model_dir, device_map=json.dumps(layer_map(num_layers, [0, "cpu"])))
    try:
        # accelerate keeps the "cpu" layers' weights in RAM and streams them to the GPU for each forward.
        assert set(split.model.hf_device_map.values()) == {0, "cpu"}
        print("runner over cuda:0 + cpu:", split.runner_name)
        assert answers(split) == expected
    finally:
        split.close()


def test_max_memory_goes_to_accelerate_with_device_map_auto(tiny_model_dir):
    # Only the CPU has a budget, so accelerate places everything there (on a GPU machine too).
    loaded = load_model(str(tiny_model_dir), device_map="auto", max_memory='{"cpu": "2GiB"}')
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"} and loaded.device.type == "cpu"
    assert parse_max_memory('{"0": "20GiB", "1": "20GiB", "cpu": "64GiB"}') == {0: "20GiB", 1: "20GiB",
                                                                              "cpu": "64GiB"}
    with pytest.raises(ConfigError, match="--max_memory needs --device_map"):
        load_model(str(tiny_model_dir), max_memory='{"cpu": "2GiB"}')
    with pytest.raises(ConfigError, match="JSON object"):
        parse_max_memory('["cpu"]')


@pytest.mark.gpu
def test_device_map_over_two_gpus_generates_what_one_gpu_does(tiny_model_dir):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    whole = engine(tiny_model_dir)
    try:
        expected = answers(whole)
        num_layers = whole.model.config.num_hidden_layers
    finally:
        whole.close()
    split = engine(tiny_model_dir, device_map=json.dumps(layer_map(num_layers, [0, 1])))
    try:
        assert {p.device.index for p in split.model.parameters()} == {0, 1}
        print("runner over cuda:0 + cuda:1:", split.runner_name)
        assert answers(split) == expected
    finally:
        split.close()
