"""The pure mapping from swiftops settings and requests to vLLM's arguments (no vllm needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from swiftops.engines.vllm import args
from swiftops.protocol import InferRequest, PromptTooLongError, RequestConfig
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.sampling import effective_config, model_sampling_defaults
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import output_constraint


def _sampling(config, generation, prompt_len, max_model_len, model_defaults=None, constraint=None):
    """The mapping of `config` after the engine's defaults (swiftops.protocol.sampling), as the engine calls it."""
    return args.sampling_params_kwargs(effective_config(config, generation, model_defaults),
                                       prompt_len, max_model_len, constraint)


def test_engine_args_carry_parallelism_memory_and_batching():
    kwargs = args.engine_args_kwargs(
        ModelSettings(model="org/m", torch_dtype="bfloat16", max_model_len=8192, model_revision="v1",
                      trust_remote_code=True),
        EngineSettings(tensor_parallel_size=2, pipeline_parallel_size=2, data_parallel_size=3,
                       gpu_memory_utilization=0.8, max_batch_size=64, enforce_eager=True,
                       enable_prefix_caching=False, limit_mm_per_prompt={"image": 5, "video": 2}),
        GenerationSettings(seed=7))
    assert kwargs == {
        "model": "org/m", "dtype": "bfloat16", "trust_remote_code": True, "revision": "v1", "max_model_len": 8192,
        "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "data_parallel_size": 3,
        "gpu_memory_utilization": 0.8, "max_num_seqs": 64, "enforce_eager": True, "enable_prefix_caching": False,
        "limit_mm_per_prompt": {"image": 5, "video": 2}, "seed": 7,
    }


def test_swiftops_defaults_unlike_vllms_are_left_to_vllm_unless_given():
    default = args.engine_args_kwargs(ModelSettings(model="m"), EngineSettings())
    assert "block_size" not in default and "max_num_batched_tokens" not in default
    assert "enable_prefix_caching" not in default and "quantization" not in default and "seed" not in default
    given = args.engine_args_kwargs(ModelSettings(model="m"), EngineSettings(block_size=32, max_num_batched_tokens=4096,
                                                                            kv_cache_memory_gb=1.5))
    assert given["block_size"] == 32 and given["max_num_batched_tokens"] == 4096
    assert given["kv_cache_memory_bytes"] == int(1.5 * (1 << 30))


def test_adapters_turn_lora_on_with_room_for_all_of_them():
    kwargs = args.engine_args_kwargs(ModelSettings(model="m", adapters=["a=/x/a", "b=/x/b", "c=/x/c"]),
                                     EngineSettings(max_lora_rank=32))
    assert kwargs["enable_lora"] is True and kwargs["max_lora_rank"] == 32
    assert kwargs["max_loras"] == 3 and kwargs["max_cpu_loras"] == 8
    capped = args.engine_args_kwargs(ModelSettings(model="m", adapters=["a=/x/a", "b=/x/b", "c=/x/c"]),
                                     EngineSettings(max_loras=2))
    assert capped["max_loras"] == 2 and capped["max_cpu_loras"] == 3
    assert "enable_lora" not in args.engine_args_kwargs(ModelSettings(model="m"), EngineSettings())


def test_bnb_quantization_maps_to_bitsandbytes_and_refuses_qlora():
    kwargs = args.engine_args_kwargs(ModelSettings(model="m", quant_method="bnb", quant_bits=4), EngineSettings())
    assert kwargs["quantization"] == "bitsandbytes"
    with pytest.raises(ConfigError, match="QLoRA"):
        args.engine_args_kwargs(ModelSettings(model="m", quant_method="bnb", adapters=["a=/x"]), EngineSettings())
    with pytest.raises(ConfigError, match="4 bits"):
        args.engine_args_kwargs(ModelSettings(model="m", quant_method="bnb", quant_bits=8), EngineSettings())


def test_engine_kwargs_pass_through_but_cannot_replace_the_model():
    kwargs = args.engine_args_kwargs(ModelSettings(model="m"),
                                     EngineSettings(engine_kwargs={"disable_custom_all_reduce": True, "max_num_seqs": 8}))
    assert kwargs["disable_custom_all_reduce"] is True and kwargs["max_num_seqs"] == 8
    with pytest.raises(ConfigError, match="engine_kwargs must not set 'model'"):
        args.engine_args_kwargs(ModelSettings(model="m"), EngineSettings(engine_kwargs={"model": "other"}))


def test_device_map_is_refused_with_what_to_use_instead():
    with pytest.raises(ConfigError, match="places the model itself"):
        args.engine_args_kwargs(ModelSettings(model="m", device_map="auto"), EngineSettings())


def test_sampling_params_from_a_request():
    config = RequestConfig(n=3, max_tokens=50, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05,
                           repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5, seed=11, stop=["\n\n"],
                           stop_token_ids=[5], ignore_eos=True, logprobs=True, top_logprobs=3)
    kwargs = _sampling(config, GenerationSettings(), prompt_len=10, max_model_len=1000)
    assert kwargs == {"n": 3, "max_tokens": 50, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                      "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 11,
                      "stop": ["\n\n"], "stop_token_ids": [5], "ignore_eos": True, "logprobs": 3}


def test_sampling_defaults_come_from_settings_then_the_checkpoint():
    g = GenerationSettings(max_new_tokens=20, temperature=0.3, seed=5, stop_words=["END"])
    kwargs = _sampling(RequestConfig(), g, prompt_len=10, max_model_len=100)
    assert (kwargs["max_tokens"], kwargs["temperature"], kwargs["seed"], kwargs["stop"]) == (20, 0.3, 5, ["END"])
    assert "logprobs" not in kwargs
    sampling_model = model_sampling_defaults(SimpleNamespace(do_sample=True, temperature=0.6, top_k=20, top_p=0.8))
    kwargs = _sampling(RequestConfig(), GenerationSettings(), 10, 100, sampling_model)
    assert (kwargs["temperature"], kwargs["top_k"], kwargs["top_p"]) == (0.6, 20, 0.8)
    greedy_model = model_sampling_defaults(SimpleNamespace(do_sample=False, temperature=0.6))
    assert _sampling(RequestConfig(), GenerationSettings(), 10, 100, greedy_model)["temperature"] == 0.0


def test_max_tokens_never_exceeds_the_room_left_in_the_context():
    assert _sampling(RequestConfig(max_tokens=500), GenerationSettings(), 90, 100)["max_tokens"] == 10
    assert _sampling(RequestConfig(), GenerationSettings(), 90, 100)["max_tokens"] == 10
    with pytest.raises(PromptTooLongError):
        _sampling(RequestConfig(), GenerationSettings(), 100, 100)


def test_logprobs_without_alternatives_ask_for_the_sampled_token_only():
    assert _sampling(RequestConfig(logprobs=True), GenerationSettings(), 1, 10)["logprobs"] == 0
    assert _sampling(RequestConfig(), GenerationSettings(logprobs=True, top_logprobs=2),
                                       1, 10)["logprobs"] == 2


def _constraint(**fields):
    config = RequestConfig(**{k: v for k, v in fields.items() if k not in ("tools", "tool_choice")})
    request = InferRequest(messages=[{"role": "user", "content": "hi"}], tools=fields.get("tools"),
                           tool_choice=fields.get("tool_choice"))
    return output_constraint(config, request)


def test_structured_outputs_map_every_constraint_to_vllms_params():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = args.structured_outputs_kwargs
    assert structured(_constraint(response_format={"type": "json_object"})) == {"json_object": True}
    named = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert structured(_constraint(response_format=named)) == {"json": schema}
    assert structured(_constraint(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema, "strict": True}})) == {"json": schema, "disable_additional_properties": True}
    assert structured(_constraint(guided_json=json.dumps(schema))) == {"json": schema}
    assert structured(_constraint(guided_regex="[a-z]+")) == {"regex": "[a-z]+"}
    assert structured(_constraint(guided_choice=["yes", "no"])) == {"choice": ["yes", "no"]}
    assert structured(_constraint(guided_grammar='root ::= "a"')) == {"grammar": 'root ::= "a"'}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    forced = structured(_constraint(tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}}))
    assert forced["json"]["properties"] == {"name": {"const": "f"}, "arguments": schema}
    kwargs = _sampling(RequestConfig(), GenerationSettings(), 1, 10, None,
                                         _constraint(guided_choice=["a"]))
    assert kwargs["structured_outputs"] == {"choice": ["a"]}
    assert "structured_outputs" not in _sampling(RequestConfig(), GenerationSettings(), 1, 10)


def test_lora_requests_get_distinct_ids_from_one():
    assert args.lora_request_kwargs("sql", "/a", 1) == {"lora_name": "sql", "lora_int_id": 1, "lora_path": "/a"}
    with pytest.raises(ValueError):
        args.lora_request_kwargs("sql", "/a", 0)


def test_the_mapping_imports_neither_vllm_nor_torch():
    code = ("import sys, swiftops, swiftops.engines.vllm.args, swiftops.engines.lmdeploy.args, "
            "swiftops.protocol.capabilities; "
            "print(sorted(m for m in ('vllm', 'lmdeploy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_logit_bias_goes_to_sampling_params():
    kwargs = _sampling(RequestConfig(logit_bias={5: -100, 9: 2.5}), GenerationSettings(), 1, 10)
    assert kwargs["logit_bias"] == {5: -100.0, 9: 2.5}
    assert "logit_bias" not in _sampling(RequestConfig(), GenerationSettings(), 1, 10)
