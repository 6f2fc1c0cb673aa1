"""Pure mappings from swiftops settings and requests to LMDeploy's keyword arguments.

Nothing here imports lmdeploy: the engine builds `TurbomindEngineConfig(**...)` or
`PytorchEngineConfig(**...)`, `VisionConfig(**...)` and `GenerationConfig(**...)` from these dicts, and
contract tests (tests/contract/, run in a venv with LMDeploy) build the real classes from them.
"""

from __future__ import annotations

from typing import Any, Literal

from swiftops.engines.engine_options import resolve_sampling
from swiftops.protocol import BadRequestError, PromptTooLongError, RequestConfig
from swiftops.protocol.capabilities import require, support
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import OutputConstraint

LmdeployBackend = Literal["turbomind", "pytorch"]
# LMDeploy spells dtypes like this; it has no float32 inference.
_DTYPES = {"auto": "auto", "float16": "float16", "bfloat16": "bfloat16"}


def choose_backend(model: ModelSettings, engine: EngineSettings) -> LmdeployBackend:
    """The LMDeploy engine to ask for: the user's choice, else pytorch for adapters (TurboMind has no
    LoRA), else turbomind (LMDeploy itself falls back to pytorch for models TurboMind cannot run)."""
    if engine.lmdeploy_backend is not None:
        if engine.lmdeploy_backend == "turbomind" and model.adapters:
            raise ConfigError(support("lmdeploy", "lora", "turbomind").reason, param="lmdeploy_backend")
        return engine.lmdeploy_backend
    return "pytorch" if model.adapters else "turbomind"


def backend_config_kwargs(model: ModelSettings, engine: EngineSettings, backend: LmdeployBackend) -> dict[str, Any]:
    """Keyword arguments of `TurbomindEngineConfig` (backend="turbomind") or `PytorchEngineConfig`."""
    if model.device_map:
        raise ConfigError(support("lmdeploy", "device_map").reason, param="device_map")
    if engine.pipeline_parallel_size > 1:
        raise ConfigError(support("lmdeploy", "pipeline_parallel").reason, param="pipeline_parallel_size")
    if model.quant_method == "bnb":
        raise ConfigError(support("lmdeploy", "quant:bnb").reason, param="quant_method")
    if model.torch_dtype not in _DTYPES:
        raise ConfigError(support("lmdeploy", "float32").reason, param="torch_dtype")
    if model.merge_lora:
        raise ConfigError(support("lmdeploy", "merge_lora").reason, param="merge_lora")
    kwargs: dict[str, Any] = {
        "dtype": _DTYPES[model.torch_dtype],
        "tp": engine.tensor_parallel_size,
        "quant_policy": engine.quant_policy,
    }
    if engine.max_batch_size:
        kwargs["max_batch_size"] = engine.max_batch_size
    if engine.data_parallel_size > 1:
        kwargs["dp"] = engine.data_parallel_size
    if model.max_model_len:
        kwargs["session_len"] = model.max_model_len
    if model.model_revision:
        kwargs["revision"] = model.model_revision
    if engine.cache_max_entry_count is not None:
        kwargs["cache_max_entry_count"] = engine.cache_max_entry_count
    if engine.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = engine.enable_prefix_caching
    explicit = engine.model_fields_set
    if "max_num_batched_tokens" in explicit:
        kwargs["max_prefill_token_num"] = engine.max_num_batched_tokens
    if backend == "pytorch":
        # Without a mode, LMDeploy's PyTorch engine computes no logprobs at all (found on the GPU machine):
        # ask for the raw distribution, which is what the pt engine and vLLM report.
        kwargs["logprobs_mode"] = "raw_logprobs"
        if "block_size" in explicit:
            kwargs["block_size"] = engine.block_size
        if engine.enforce_eager:
            kwargs["eager_mode"] = True
        if model.adapters:
            kwargs["adapters"] = dict(model.adapters)
    elif "block_size" in explicit:
        kwargs["cache_block_seq_len"] = engine.block_size
    kwargs.update(engine.engine_kwargs)
    return kwargs


def vision_config_kwargs(engine: EngineSettings) -> dict[str, Any]:
    """Keyword arguments of LMDeploy's `VisionConfig` (vision models only)."""
    return {"max_batch_size": engine.vision_batch_size}


def generation_config_kwargs(
    config: RequestConfig,
    generation: GenerationSettings,
    prompt_len: int,
    max_model_len: int,
    model_defaults: dict[str, Any] | None = None,
    constraint: OutputConstraint | None = None,
) -> dict[str, Any]:
    """Keyword arguments of LMDeploy's `GenerationConfig` for ONE choice of a request.

    n > 1 and stop strings are done by the engine (several sessions; text matching), because LMDeploy
    matches stop words as single tokens only. Precedence as the pt engine: request, settings, checkpoint.
    """
    room = max_model_len - prompt_len
    if room < 1:
        raise PromptTooLongError(prompt_len, max_model_len)
    if config.presence_penalty or config.frequency_penalty:
        require("lmdeploy", "presence_frequency_penalty")
    temperature, top_k, top_p = resolve_sampling(config, generation, model_defaults)
    if temperature > 2:
        raise BadRequestError("LMDeploy takes temperatures from 0 to 2", param="temperature")
    penalty = config.repetition_penalty if config.repetition_penalty is not None else generation.repetition_penalty
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_new_tokens": min(config.max_tokens or generation.max_new_tokens or room, room),
        "do_sample": temperature > 0,
        "temperature": float(temperature),
        "top_p": float(top_p or 1.0),
        "top_k": int(top_k or 0),  # 0: no top-k (LMDeploy's own default is 50)
        "min_p": config.min_p,
        "repetition_penalty": float(penalty or 1.0),
        "ignore_eos": config.ignore_eos,
        "random_seed": config.seed if config.seed is not None else generation.seed,
        "stop_token_ids": list(config.stop_token_ids or []) or None,
        "skip_special_tokens": True,
    }
    if config.logprobs or config.top_logprobs or generation.logprobs:
        top = config.top_logprobs if config.top_logprobs is not None else (generation.top_logprobs or 0)
        # LMDeploy returns the sampled token's logprob among the top ones; ask for at least one.
        kwargs["logprobs"] = max(1, int(top))
    if constraint is not None:
        kwargs["response_format"] = lmdeploy_response_format(constraint)
    return kwargs


def lmdeploy_response_format(constraint: OutputConstraint) -> dict[str, Any]:
    """A request's output constraint in the shape LMDeploy compiles with xgrammar (json_schema, regex_schema).
    A choice becomes a regex of its escaped alternatives; EBNF grammars are refused (a 400 saying where they run)."""
    if constraint.kind == "grammar":
        require("lmdeploy", "guided_grammar")
    if constraint.kind == "regex":
        return {"type": "regex_schema", "regex_schema": constraint.source}
    if constraint.kind == "choice":
        return {"type": "regex_schema", "regex_schema": constraint.choice_regex}
    name = "tool_call" if constraint.tool_call else "json_object" if constraint.kind == "json_object" else "schema"
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": constraint.schema, "strict": constraint.strict},
    }


def choice_seed(seed: int | None, index: int) -> int | None:
    """Seed of choice `index` of an n > 1 request: distinct per choice, reproducible per request (as pt does)."""
    return None if seed is None else seed + index
