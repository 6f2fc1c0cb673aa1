"""Our LMDeploy mapping against LMDeploy's REAL classes: a renamed or removed argument, or a value its
configs' own checks refuse, fails here instead of on a GPU node.

Skipped only where lmdeploy cannot be imported in the running interpreter; `make contract` runs this file
in .venv-contract-lmdeploy (scripts/contract-venv.sh). No GPU needed: configs are built and LMDeploy's
own backend choice (`autoget_backend_config`) and engine lookup (`get_task`) run on a tiny local model.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest

lmdeploy = pytest.importorskip("lmdeploy", reason="lmdeploy is not installed in this interpreter "
                                                   "(make contract runs it)")

from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig, VisionConfig  # noqa: E402
from lmdeploy.archs import autoget_backend_config, get_task  # noqa: E402

from swiftops.engines.lmdeploy import args  # noqa: E402
from swiftops.engines.lmdeploy.outputs import ChoiceTracker  # noqa: E402
from swiftops.protocol import RequestConfig  # noqa: E402
from swiftops.protocol.sampling import effective_config  # noqa: E402
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings  # noqa: E402
from swiftops.protocol.structured_output import output_constraint  # noqa: E402

CONFIG_CASES = {
    "defaults": ({}, {}),
    "parallel": ({"torch_dtype": "bfloat16", "max_model_len": 4096, "model_revision": "main"},
                 {"tensor_parallel_size": 2, "data_parallel_size": 2, "max_batch_size": 64}),
    "cache": ({}, {"cache_max_entry_count": 0.5, "quant_policy": 8, "enable_prefix_caching": True, "block_size": 64,
                   "max_num_batched_tokens": 4096}),
    "kv_int4": ({}, {"quant_policy": 4}),
    "lora": ({"adapters": ["sql=/loras/sql", "chat=/loras/chat"]}, {"lmdeploy_backend": "pytorch",
                                                                     "enforce_eager": True}),
    "passthrough": ({}, {"engine_kwargs": {"max_prefill_token_num": 1024}}),
}
CLASSES = {"turbomind": TurbomindEngineConfig, "pytorch": PytorchEngineConfig}


def _generation(config, generation, prompt_len, max_model_len, model_defaults=None, constraint=None):
    """The first choice's mapping of `config` after the engine's defaults (swiftops.protocol.sampling)."""
    return args.generation_config_kwargs(effective_config(config, generation, model_defaults),
                                         prompt_len, max_model_len, constraint)[0]


def _config_kwargs(case: str, backend: str, model_path: str = "m") -> dict:
    model_fields, engine_fields = CONFIG_CASES[case]
    return args.backend_config_kwargs(ModelSettings(model=model_path, **model_fields),
                                      EngineSettings(infer_backend="lmdeploy", **engine_fields), backend)


# Adapters on TurboMind are refused by the mapping itself (unit tests), so that pair is not built.
@pytest.mark.parametrize("case, backend", [(c, b) for c in sorted(CONFIG_CASES) for b in CLASSES
                                           if (c, b) != ("lora", "turbomind")])
def test_engine_configs_accept_every_mapped_argument(case, backend):
    kwargs = _config_kwargs(case, backend)
    config = CLASSES[backend](**kwargs)  # a removed or renamed field is a TypeError; __post_init__ checks values
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_lmdeploys_backend_choice_keeps_our_settings(tiny_model_dir):
    """On a machine where TurboMind cannot run (no CUDA here), LMDeploy converts our TurboMind config to a
    PyTorch one: the settings we mapped must survive the conversion."""
    kwargs = _config_kwargs("cache", "turbomind", str(tiny_model_dir))
    backend, config = autoget_backend_config(str(tiny_model_dir), TurbomindEngineConfig(**kwargs))
    assert backend in ("turbomind", "pytorch")
    for key in ("cache_max_entry_count", "enable_prefix_caching", "max_prefill_token_num"):
        assert getattr(config, key) == kwargs[key], key
    assert int(config.quant_policy) == 8
    task, engine_class = get_task(backend, str(tiny_model_dir), backend_config=config)
    assert task == "llm"
    params = inspect.signature(engine_class.__init__).parameters
    assert {"model_path", "model_name", "backend", "backend_config", "trust_remote_code"} <= set(params)


def test_vision_config_accepts_the_mapping():
    assert VisionConfig(**args.vision_config_kwargs(EngineSettings(vision_batch_size=4))).max_batch_size == 4


GENERATION_CASES = [
    RequestConfig(),
    RequestConfig(n=2, max_tokens=50, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1, seed=11,
                  stop=["END"], stop_token_ids=[5], ignore_eos=True),
    RequestConfig(logprobs=True),
    RequestConfig(logprobs=True, top_logprobs=5, temperature=0),
    RequestConfig(top_k=-1, temperature=2.0),
]


@pytest.mark.parametrize("config", GENERATION_CASES, ids=range(len(GENERATION_CASES)))
def test_generation_config_accepts_the_mapping(config):
    kwargs = _generation(config, GenerationSettings(), prompt_len=10, max_model_len=512)
    gen = GenerationConfig(**kwargs)
    assert gen.max_new_tokens == kwargs["max_new_tokens"] and gen.random_seed == config.seed
    assert gen.do_sample == (kwargs["temperature"] > 0) and gen.logprobs == kwargs.get("logprobs")


def test_logit_bias_processor_is_a_generation_config_logits_processor():
    import torch

    (kwargs,) = args.generation_config_kwargs(RequestConfig(logit_bias={1: 5.0}), 10, 512, backend="pytorch")
    gen = GenerationConfig(**kwargs)
    (processor,) = gen.logits_processors
    assert processor(torch.tensor([0]), torch.zeros(4)).tolist() == [0.0, 5.0, 0.0, 0.0]


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}},
    {"guided_regex": "[a-z]{2,4}"},
    {"guided_choice": ["yes", "no (maybe)"]},
])
def test_response_formats_compile_in_lmdeploy(fields):
    from lmdeploy._guided_decoding import ensure_response_format_compilable

    mapped = args.lmdeploy_response_format(output_constraint(RequestConfig(**fields)))
    ensure_response_format_compilable(mapped)  # raises ValueError for a shape LMDeploy cannot compile
    GenerationConfig(response_format=mapped)


def test_async_engine_surface_we_call_exists():
    from lmdeploy.serve.core import AsyncEngine

    preprocess = inspect.signature(AsyncEngine.preprocess).parameters
    assert {"messages", "session_id", "gen_config", "do_preprocess", "adapter_name", "input_ids"} <= set(preprocess)
    assert {"request", "stream_response"} <= set(inspect.signature(AsyncEngine.generate).parameters)
    assert {"loop", "use_async_api"} <= set(inspect.signature(AsyncEngine.start_loop).parameters)
    assert callable(AsyncEngine.close)


def test_error_codes_we_map_exist():
    from lmdeploy.serve.core.exceptions import ErrorCode, RequestError

    from swiftops.engines.lmdeploy.engine import library_error

    codes = {e.value for e in ErrorCode}
    assert {"context_length_exceeded", "invalid_request", "unsupported_feature", "model_not_found"} <= codes
    assert library_error(RequestError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, "too long")).status == 400
    assert library_error(RequestError(ErrorCode.INVALID_REQUEST, "bad")).status == 400
    assert library_error(RequestError(ErrorCode.INTERNAL_ERROR)).status == 500


def test_real_genouts_convert_to_our_outputs(tiny_model_dir):
    from lmdeploy.serve.core.async_engine import GenOut
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tokenizer.encode(" hello world again", add_special_tokens=False)
    tracker = ChoiceTracker(0, tokenizer, [1, 2], [], 1)
    outs = [tracker.convert(GenOut("", 5, 2, token_ids=ids[:2], logprobs=[{ids[0]: -0.1}, {ids[1]: -0.2}])),
            tracker.convert(GenOut("", 5, len(ids), "length", token_ids=ids[2:]))]
    assert "".join(o.text for o in outs) == tokenizer.decode(ids) and tracker.finished
    assert outs[0].prompt_tokens == 5 and outs[-1].completion_tokens == len(ids)
    assert [e.logprob for e in outs[0].logprobs] == [-0.1, -0.2]


def test_engine_instance_surface_we_call_exists():
    """swiftops.engines.lmdeploy.token_stream drives the PyTorch engine's instance as AsyncEngine.generate does."""
    from lmdeploy.messages import EngineOutput, ResponseType
    from lmdeploy.pytorch.engine.engine_instance import EngineInstance
    from lmdeploy.serve.core import AsyncEngine
    from lmdeploy.serve.managers.session_manager import RequestHandlePool

    assert {"input_ids", "gen_config"} <= set(inspect.signature(AsyncEngine._determine_gen_config).parameters)
    stream = inspect.signature(EngineInstance.async_stream_infer).parameters
    assert {"session_id", "input_ids", "gen_config", "adapter_name", "kwargs"} <= set(stream)
    assert inspect.iscoroutinefunction(EngineInstance.async_cancel)
    assert callable(RequestHandlePool.get) and callable(RequestHandlePool.put)
    assert {"SUCCESS", "FINISH", "CANCEL", "INPUT_LENGTH_ERROR"} <= {t.name for t in ResponseType}
    assert {"status", "token_ids", "logprobs"} <= {f.name for f in dataclasses.fields(EngineOutput)}


def test_the_fake_library_has_lmdeploys_shapes():
    """tests/engines/lmdeploy/fake_lib stands in for LMDeploy in the engine tests; its GenOut must match."""
    import ast
    from pathlib import Path

    from lmdeploy.serve.core.async_engine import GenOut

    source = (Path(__file__).resolve().parents[1] / "engines" / "lmdeploy" / "fake_lib" / "lmdeploy" /
              "serve.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "GenOut")
    fake_fields = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]
    real_fields = [f.name for f in dataclasses.fields(GenOut)]
    assert fake_fields == real_fields[:len(fake_fields)]
    from lmdeploy.messages import EngineOutput, ResponseType

    messages = (Path(__file__).resolve().parents[1] / "engines" / "lmdeploy" / "fake_lib" / "lmdeploy" /
                "messages.py").read_text()
    tree = ast.parse(messages).body
    fake_output = next(n for n in tree if isinstance(n, ast.ClassDef) and n.name == "EngineOutput")
    fake_fields = [n.target.id for n in fake_output.body if isinstance(n, ast.AnnAssign)]
    assert fake_fields == [f.name for f in dataclasses.fields(EngineOutput)][:len(fake_fields)]
    fake_types = next(n for n in tree if isinstance(n, ast.ClassDef) and n.name == "ResponseType")
    names = [t.targets[0].id for t in fake_types.body if isinstance(t, ast.Assign)]
    assert names == [t.name for t in ResponseType][:len(names)]
