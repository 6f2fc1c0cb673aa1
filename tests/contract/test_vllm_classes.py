"""Our vLLM mapping against vLLM's REAL classes: a renamed or removed argument, or a value vLLM's config
validation refuses, fails here instead of on a GPU node.

Skipped only where vllm cannot be imported in the running interpreter; `make contract` runs this file in
.venv-contract-vllm (scripts/contract-venv.sh), where it is installed. No GPU needed: only argument and
config classes are built, plus vLLM's own output objects fed through our converter.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest

vllm = pytest.importorskip("vllm", reason="vllm is not installed in this interpreter (make contract runs it)")

from vllm import AsyncEngineArgs, EngineArgs, SamplingParams  # noqa: E402
from vllm.config import CacheConfig, LoRAConfig, ModelConfig, MultiModalConfig, ParallelConfig  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams  # noqa: E402

from swiftops.engines.vllm import args  # noqa: E402
from swiftops.engines.vllm.outputs import OutputTracker  # noqa: E402
from swiftops.protocol import RequestConfig  # noqa: E402
from swiftops.protocol.sampling import effective_config  # noqa: E402
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings  # noqa: E402
from swiftops.protocol.structured_output import output_constraint  # noqa: E402

ENGINE_CASES = {
    "defaults": ({}, {}),
    "parallel": ({"torch_dtype": "bfloat16", "max_model_len": 256, "model_revision": "main"},
                 {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "data_parallel_size": 2,
                  "gpu_memory_utilization": 0.85, "max_batch_size": 64, "enforce_eager": True}),
    "cache": ({}, {"block_size": 32, "max_num_batched_tokens": 4096, "kv_cache_memory_gb": 2.0,
                   "enable_prefix_caching": False}),
    "multimodal": ({}, {"limit_mm_per_prompt": {"image": 5, "video": 2}}),
    "lora": ({"adapters": ["sql=/loras/sql", "chat=/loras/chat"]}, {"max_lora_rank": 32, "max_loras": 4}),
    "bnb": ({"quant_method": "bnb", "quant_bits": 4}, {}),
    "passthrough": ({}, {"engine_kwargs": {"disable_custom_all_reduce": True, "max_logprobs": 5}}),
}


def _sampling(config, generation, prompt_len, max_model_len, model_defaults=None, constraint=None):
    """The mapping of `config` after the engine's defaults (swiftops.protocol.sampling), as the engine calls it."""
    return args.sampling_params_kwargs(effective_config(config, generation, model_defaults),
                                       prompt_len, max_model_len, constraint)


def _kwargs(tiny_model_dir, case: str) -> dict:
    model_fields, engine_fields = ENGINE_CASES[case]
    return args.engine_args_kwargs(ModelSettings(model=str(tiny_model_dir), **model_fields),
                                   EngineSettings(infer_backend="vllm", **engine_fields), GenerationSettings(seed=1))


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
@pytest.mark.parametrize("args_class", [AsyncEngineArgs, EngineArgs])
def test_engine_args_accept_every_mapped_argument(tiny_model_dir, case, args_class):
    kwargs = _kwargs(tiny_model_dir, case)
    built = args_class(**kwargs)  # a removed or renamed field is a TypeError here
    for key, value in kwargs.items():
        assert getattr(built, key) == value


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_vllm_configs_validate_the_mapped_values(tiny_model_dir, case):
    """vLLM's own config classes (pydantic dataclasses) check ranges and allowed values."""
    built = AsyncEngineArgs(**_kwargs(tiny_model_dir, case))
    parallel = ParallelConfig(tensor_parallel_size=built.tensor_parallel_size,
                              pipeline_parallel_size=built.pipeline_parallel_size,
                              data_parallel_size=built.data_parallel_size)
    assert parallel.world_size == built.tensor_parallel_size * built.pipeline_parallel_size
    CacheConfig(block_size=built.block_size, gpu_memory_utilization=built.gpu_memory_utilization,
                enable_prefix_caching=bool(built.enable_prefix_caching),
                kv_cache_memory_bytes=built.kv_cache_memory_bytes)
    if built.limit_mm_per_prompt:
        limits = MultiModalConfig(limit_per_prompt=built.limit_mm_per_prompt).limit_per_prompt
        assert {kind: option.count for kind, option in limits.items()} == built.limit_mm_per_prompt
    if built.enable_lora:
        LoRAConfig(max_lora_rank=built.max_lora_rank, max_loras=built.max_loras, max_cpu_loras=built.max_cpu_loras)
    if built.quantization is None:  # bitsandbytes itself is not installed here
        model = ModelConfig(model=built.model, max_model_len=built.max_model_len, dtype=built.dtype,
                            revision=built.revision, seed=built.seed, trust_remote_code=built.trust_remote_code)
        assert model.max_model_len == (built.max_model_len or 512)


def test_default_lora_rank_is_one_vllm_allows():
    LoRAConfig(max_lora_rank=EngineSettings().max_lora_rank, max_loras=1)


SAMPLING_CASES = [
    RequestConfig(),
    RequestConfig(n=3, max_tokens=50, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1,
                  presence_penalty=0.5, frequency_penalty=-0.5, seed=11, stop=["\n\n", "END"], stop_token_ids=[5],
                  ignore_eos=True),
    RequestConfig(logprobs=True),
    RequestConfig(logprobs=True, top_logprobs=5, temperature=0),
    RequestConfig(top_k=-1, temperature=1.5),
    RequestConfig(logit_bias={5: -100, 9: 2.5}),
]


@pytest.mark.parametrize("config", SAMPLING_CASES, ids=range(len(SAMPLING_CASES)))
def test_sampling_params_accept_the_mapping(config):
    kwargs = _sampling(config, GenerationSettings(stop_words=["###"]), prompt_len=10,
                                         max_model_len=512)
    params = SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)
    assert params.n == config.n and params.max_tokens == kwargs["max_tokens"]
    assert params.seed == config.seed and params.output_kind == RequestOutputKind.DELTA
    assert params.logprobs == kwargs.get("logprobs")
    assert params.logit_bias == kwargs.get("logit_bias")


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}},
    {"guided_regex": "[a-z]{2,4}"},
    {"guided_choice": ["yes", "no (maybe)"]},
    {"guided_grammar": 'root ::= "a" | "b"'},
])
def test_structured_outputs_params_accept_the_mapping(fields):
    structured = StructuredOutputsParams(**args.structured_outputs_kwargs(output_constraint(RequestConfig(**fields))))
    SamplingParams(max_tokens=4, structured_outputs=structured, output_kind=RequestOutputKind.DELTA)


def test_lora_request_accepts_the_mapping():
    request = LoRARequest(**args.lora_request_kwargs("sql", "/loras/sql", 3))
    assert (request.lora_name, request.lora_int_id, request.lora_path) == ("sql", 3, "/loras/sql")


def test_async_engine_surface_we_call_exists():
    assert vllm.AsyncLLMEngine.from_engine_args
    generate = inspect.signature(vllm.AsyncLLMEngine.generate).parameters
    assert list(generate)[1:4] == ["prompt", "sampling_params", "request_id"]
    assert {"lora_request", "tokenization_kwargs"} <= set(generate)
    assert "request_id" in inspect.signature(vllm.AsyncLLMEngine.abort).parameters
    assert callable(vllm.AsyncLLMEngine.shutdown)


def test_real_request_outputs_convert_to_our_outputs():
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    first = RequestOutput("r", None, [1, 2, 3], None, [
        CompletionOutput(0, "Hel", [7], None, [{7: Logprob(-0.1, 1, "Hel"), 9: Logprob(-2.0, 2, "X")}]),
    ], finished=False)
    last = RequestOutput("r", None, [1, 2, 3], None, [
        CompletionOutput(0, "lo", [8], None, [{8: Logprob(-0.2, 1, "lo"), 9: Logprob(-3.0, 2, "X")}],
                         finish_reason="length"),
    ], finished=True)
    tracker = OutputTracker(1, 3, 1, decode=str)
    outs = tracker.convert(first) + tracker.convert(last)
    assert [o.text for o in outs] == ["Hel", "lo"] and outs[-1].finish_reason == "length"
    assert outs[-1].completion_tokens == 2 and outs[-1].prompt_tokens == 3 and tracker.done
    assert [(e.token, e.top_logprobs[0].token) for o in outs for e in o.logprobs] == [("Hel", "Hel"), ("lo", "lo")]


def test_the_fake_library_has_vllms_shapes():
    """tests/engines/vllm/fake_lib stands in for vLLM in the engine tests; its objects must match vLLM's."""
    import importlib.util
    from pathlib import Path

    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    path = Path(__file__).resolve().parents[1] / "engines" / "vllm" / "fake_lib" / "vllm" / "__init__.py"
    source = path.read_text()
    for real in (CompletionOutput, RequestOutput, Logprob):
        fake_fields = _dataclass_fields_in(source, real.__name__)
        real_params = list(inspect.signature(real).parameters)
        assert set(fake_fields) <= set(real_params), (real.__name__, set(fake_fields) - set(real_params))
        # Fields the fake fills positionally keep vLLM's order.
        positional = [f for f in fake_fields if f not in ("finish_reason", "stop_reason")]
        assert positional == [p for p in real_params if p in positional], real.__name__
    assert importlib.util.find_spec("vllm.lora.request") is not None


def _dataclass_fields_in(source: str, class_name: str) -> list[str]:
    import ast

    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]


def test_engine_args_is_a_dataclass_with_the_fields_we_set():
    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    mapped = set()
    for case in ENGINE_CASES:
        model_fields, engine_fields = ENGINE_CASES[case]
        mapped |= set(args.engine_args_kwargs(ModelSettings(model="m", **model_fields),
                                              EngineSettings(**engine_fields), GenerationSettings(seed=1)))
    assert mapped <= fields, mapped - fields
