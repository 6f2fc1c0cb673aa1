"""The pure mapping from swiftops settings and requests to LMDeploy's arguments (no lmdeploy needed)."""
from __future__ import annotations

import pytest

from swiftops.engines.lmdeploy import args
from swiftops.protocol import BadRequestError, PromptTooLongError, RequestConfig, UnsupportedError
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.sampling import effective_config
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import output_constraint


def _generation(config, generation, prompt_len, max_model_len, model_defaults=None, constraint=None):
    """The first choice's mapping of `config` after the engine's defaults (swiftops.protocol.sampling)."""
    return args.generation_config_kwargs(effective_config(config, generation, model_defaults),
                                         prompt_len, max_model_len, constraint)[0]


def test_turbomind_config_carries_tp_dp_session_and_cache():
    kwargs = args.backend_config_kwargs(
        ModelSettings(model="m", torch_dtype="bfloat16", max_model_len=8192, model_revision="v2"),
        EngineSettings(tensor_parallel_size=2, data_parallel_size=2, max_batch_size=64, cache_max_entry_count=0.5,
                       quant_policy=8, enable_prefix_caching=True, block_size=128, max_num_batched_tokens=4096),
        "turbomind")
    assert kwargs == {"dtype": "bfloat16", "tp": 2, "dp": 2, "session_len": 8192, "revision": "v2",
                      "max_batch_size": 64, "cache_max_entry_count": 0.5, "quant_policy": 8,
                      "enable_prefix_caching": True, "cache_block_seq_len": 128, "max_prefill_token_num": 4096}


def test_pytorch_config_carries_adapters_eager_mode_and_block_size():
    kwargs = args.backend_config_kwargs(ModelSettings(model="m", adapters=["sql=/l/sql", "chat=/l/chat"]),
                                        EngineSettings(enforce_eager=True, block_size=32), "pytorch")
    assert kwargs["adapters"] == {"sql": "/l/sql", "chat": "/l/chat"}
    assert kwargs["eager_mode"] is True and kwargs["block_size"] == 32 and "cache_block_seq_len" not in kwargs
    # the PyTorch engine computes logprobs only with a mode set (seen on a GPU: none came back without it)
    assert kwargs["logprobs_mode"] == "raw_logprobs"


def test_defaults_are_lmdeploys_own():
    kwargs = args.backend_config_kwargs(ModelSettings(model="m"), EngineSettings(), "turbomind")
    assert kwargs == {"dtype": "auto", "tp": 1, "quant_policy": 0}  # max_batch_size: LMDeploy picks per GPU


def test_backend_choice_follows_adapters_unless_told():
    assert args.choose_backend(ModelSettings(model="m"), EngineSettings()) == "turbomind"
    assert args.choose_backend(ModelSettings(model="m", adapters=["a=/a"]), EngineSettings()) == "pytorch"
    assert args.choose_backend(ModelSettings(model="m"), EngineSettings(lmdeploy_backend="pytorch")) == "pytorch"
    with pytest.raises(ConfigError, match="TurboMind engine cannot serve LoRA"):
        args.choose_backend(ModelSettings(model="m", adapters=["a=/a"]), EngineSettings(lmdeploy_backend="turbomind"))


@pytest.mark.parametrize("model, engine, message", [
    ({"device_map": "auto"}, {}, "places the model itself"),
    ({}, {"pipeline_parallel_size": 2}, "no pipeline parallelism"),
    ({"quant_method": "bnb"}, {}, "bitsandbytes"),
    ({"torch_dtype": "float32"}, {}, "float16 or bfloat16"),
])
def test_what_lmdeploy_cannot_do_is_refused_with_what_to_do(model, engine, message):
    with pytest.raises(ConfigError, match=message):
        args.backend_config_kwargs(ModelSettings(model="m", **model), EngineSettings(**engine), "turbomind")


def test_engine_kwargs_pass_through():
    kwargs = args.backend_config_kwargs(ModelSettings(model="m"), EngineSettings(engine_kwargs={"max_prefill_iters": 2}),
                                        "turbomind")
    assert kwargs["max_prefill_iters"] == 2


def test_vision_batch_size_goes_to_vision_config():
    assert args.vision_config_kwargs(EngineSettings(vision_batch_size=4)) == {"max_batch_size": 4}


def test_generation_config_for_one_choice():
    config = RequestConfig(n=3, max_tokens=50, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05,
                           repetition_penalty=1.1, seed=11, stop=["END"], stop_token_ids=[5], ignore_eos=True, logprobs=True, top_logprobs=3)
    kwargs = _generation(config, GenerationSettings(), prompt_len=10, max_model_len=1000)
    # n and stop strings are the engine's job (one session per choice; text matching)
    assert kwargs == {"n": 1, "max_new_tokens": 50, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                      "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True, "random_seed": 11, "stop_token_ids": [5],
                      "skip_special_tokens": True, "logprobs": 3}


def test_greedy_defaults_and_room_left():
    kwargs = _generation(RequestConfig(), GenerationSettings(), prompt_len=90, max_model_len=100)
    assert kwargs["do_sample"] is False and kwargs["temperature"] == 0.0 and kwargs["max_new_tokens"] == 10
    assert kwargs["top_k"] == 0 and kwargs["stop_token_ids"] is None and "logprobs" not in kwargs
    with pytest.raises(PromptTooLongError):
        _generation(RequestConfig(), GenerationSettings(), 100, 100)


def test_checkpoint_sampling_defaults_apply_when_nothing_else_sets_temperature():
    kwargs = _generation(RequestConfig(), GenerationSettings(), 1, 100,
                                           {"do_sample": True, "temperature": 0.6, "top_k": 20})
    assert (kwargs["do_sample"], kwargs["temperature"], kwargs["top_k"]) == (True, 0.6, 20)


def test_penalties_lmdeploy_lacks_are_refused():
    with pytest.raises(UnsupportedError, match="repetition_penalty"):
        _generation(RequestConfig(presence_penalty=0.5), GenerationSettings(), 1, 100)
    with pytest.raises(BadRequestError, match="0 to 2"):
        _generation(RequestConfig(temperature=3), GenerationSettings(), 1, 100)


def test_logprobs_ask_for_at_least_the_sampled_token():
    assert _generation(RequestConfig(logprobs=True), GenerationSettings(), 1, 10)["logprobs"] == 1


def _constraint(**fields):
    return output_constraint(RequestConfig(**fields))


def test_output_constraints_in_lmdeploys_response_format_shape():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    shape = args.lmdeploy_response_format
    assert shape(_constraint(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})) \
        == {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema, "strict": False}}
    assert shape(_constraint(response_format={"type": "json_object"}))["json_schema"]["schema"] == {"type": "object"}
    assert shape(_constraint(guided_json=schema))["json_schema"]["schema"] == schema
    assert shape(_constraint(guided_regex="[0-9]{3}")) == {"type": "regex_schema", "regex_schema": "[0-9]{3}"}
    # A choice is a regex of its literal alternatives (LMDeploy has no choice type).
    assert shape(_constraint(guided_choice=["a.b", "c|d", "x y"])) == \
        {"type": "regex_schema", "regex_schema": r"(a\.b|c\|d|x y)"}
    with pytest.raises(UnsupportedError, match="guided_grammar"):
        shape(_constraint(guided_grammar='root ::= "a"'))
    kwargs = _generation(RequestConfig(), GenerationSettings(), 1, 10, None,
                                           _constraint(guided_regex="a+"))
    assert kwargs["response_format"] == {"type": "regex_schema", "regex_schema": "a+"}
    assert "response_format" not in _generation(RequestConfig(), GenerationSettings(), 1, 10)


def test_choice_seeds_differ_per_choice_and_stay_unset_without_a_seed():
    assert [args.choice_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert args.choice_seed(None, 2) is None


def test_each_choice_is_one_session_with_its_own_seed():
    choices = args.generation_config_kwargs(RequestConfig(n=3, seed=7, temperature=0.5), 1, 10)
    assert [c["random_seed"] for c in choices] == [7, 8, 9] and {c["n"] for c in choices} == {1}
    assert [c["random_seed"] for c in args.generation_config_kwargs(RequestConfig(n=2), 1, 10)] == [None, None]


def test_logit_bias_is_a_logits_processor_on_the_pytorch_engine_and_refused_on_turbomind():
    import torch

    config = RequestConfig(logit_bias={1: 100, 3: -2.5})
    (choice,) = args.generation_config_kwargs(config, 1, 10, backend="pytorch")
    (processor,) = choice["logits_processors"]
    assert processor(torch.tensor([0]), torch.zeros(5)).tolist() == [0.0, 100.0, 0.0, -2.5, 0.0]
    assert "logits_processors" not in args.generation_config_kwargs(RequestConfig(), 1, 10, backend="pytorch")[0]
    with pytest.raises(UnsupportedError, match="lmdeploy_backend: pytorch"):
        args.generation_config_kwargs(config, 1, 10, backend="turbomind")
