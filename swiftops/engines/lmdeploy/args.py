"""Pure mappings from swiftops settings and requests to LMDeploy's keyword arguments.

Nothing here imports lmdeploy: the engine builds `TurbomindEngineConfig(**...)` or
`PytorchEngineConfig(**...)`, `VisionConfig(**...)` and `GenerationConfig(**...)` from these dicts, and
contract tests (tests/contract/, run in a venv with LMDeploy) build the real classes from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from swiftops.protocol import BadRequestError, PromptTooLongError, RequestConfig
from swiftops.protocol.capabilities import require, support
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, ModelSettings
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
    if engine.max_itl_ratio:
        raise ConfigError(support("lmdeploy", "max_itl_ratio").reason, param="max_itl_ratio")
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
    prompt_len: int,
    max_model_len: int,
    constraint: OutputConstraint | None = None,
    backend: LmdeployBackend | None = None,
) -> list[dict[str, Any]]:
    """Keyword arguments of LMDeploy's `GenerationConfig`, one per choice of a request (each runs as its own
    session, seeded seed + i); `config` has every default applied (swiftops.protocol.sampling.effective_config),
    `backend` is the LMDeploy engine that runs it (unset: the capability table's default).

    Stop strings are matched by the engine on the text, because LMDeploy matches stop words as single tokens only.
    """
    room = max_model_len - prompt_len
    if room < 1:
        raise PromptTooLongError(prompt_len, max_model_len)
    for feature, asked in (
        ("presence_frequency_penalty", config.presence_penalty or config.frequency_penalty),
        ("beam_search", config.num_beams > 1),
        ("return_details", config.return_details),
        ("logit_bias", config.logit_bias),
    ):
        if asked:
            require("lmdeploy", feature, backend)
    temperature = float(config.temperature or 0.0)
    if temperature > 2:
        raise BadRequestError("LMDeploy takes temperatures from 0 to 2", param="temperature")
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_new_tokens": min(config.max_tokens or room, room),
        "do_sample": temperature > 0,
        "temperature": temperature,
        "top_p": float(config.top_p or 1.0),
        "top_k": int(config.top_k or 0),  # 0: no top-k (LMDeploy's own default is 50)
        "min_p": config.min_p,
        "repetition_penalty": float(config.repetition_penalty or 1.0),
        "ignore_eos": config.ignore_eos,
        "random_seed": config.seed,
        "stop_token_ids": list(config.stop_token_ids or []) or None,
        "skip_special_tokens": True,
    }
    if config.logit_bias:
        kwargs["logits_processors"] = [LogitBiasProcessor(config.logit_bias)]
    if config.logprobs:
        # LMDeploy returns the sampled token's logprob among the top ones; ask for at least one.
        kwargs["logprobs"] = max(1, int(config.top_logprobs or 0))
    if constraint is not None:
        kwargs["response_format"] = lmdeploy_response_format(constraint, backend)
    return [{**kwargs, "random_seed": choice_seed(config.seed, i)} for i in range(config.n)]


class LogitBiasProcessor:
    """OpenAI's logit_bias as an LMDeploy logits processor (its PyTorch engine calls it per sequence and step with
    the token ids so far and that sequence's logits [V]). The ids were checked against the vocabulary before."""

    def __init__(self, logit_bias: dict[int, float]) -> None:
        self.logit_bias = dict(logit_bias)

    def __call__(self, token_ids: Any, logits: Any) -> Any:
        for token_id, bias in self.logit_bias.items():
            logits[token_id] += bias
        return logits


@dataclass(frozen=True)
class LmdeployRequest:
    """What the LMDeploy engine runs for one request."""

    choices: list[dict[str, Any]]  # GenerationConfig keyword arguments, one session per choice
    stops: list[str]  # stop strings, matched by the engine on the text (LMDeploy matches single tokens only)
    top_logprobs: int | None  # alternatives per token in the response; None: no logprobs


def map_request(
    config: RequestConfig,
    prompt_len: int,
    max_model_len: int,
    constraint: OutputConstraint | None = None,
    backend: LmdeployBackend | None = None,
) -> LmdeployRequest:
    """The LMDeploy backend's mapping of a request (`config` with every default applied)."""
    return LmdeployRequest(
        generation_config_kwargs(config, prompt_len, max_model_len, constraint, backend),
        list(config.stop or []),
        config.top_logprobs if config.logprobs else None,
    )


def lmdeploy_response_format(constraint: OutputConstraint, backend: LmdeployBackend | None = None) -> dict[str, Any]:
    """A request's output constraint in the shape LMDeploy compiles with xgrammar (json_schema, regex_schema).
    A choice becomes a regex of its escaped alternatives; EBNF grammars are refused (a 400 saying where they run)."""
    if constraint.kind == "grammar":
        require("lmdeploy", "guided_grammar", backend)
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
