"""Pure mappings from swiftops settings and requests to vLLM's keyword arguments.

Nothing here imports vllm: these functions return plain dicts that the engine hands to
`AsyncEngineArgs(**...)`, `SamplingParams(**...)` and `LoRARequest(**...)`. Unit tests check the
values; contract tests (tests/contract/, run in a venv with vLLM) build the real classes from them,
so a renamed or removed vLLM argument fails there rather than on a GPU node.
"""

from __future__ import annotations

from typing import Any

from swiftops.engines.gguf_source import gguf_source
from swiftops.protocol import PromptTooLongError, RequestConfig
from swiftops.protocol.capabilities import require, support
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import OutputConstraint

# Our dtype names -> vLLM's (vLLM accepts these spellings for `dtype`).
_DTYPES = {"auto": "auto", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
# Our --quant_method -> vLLM's `quantization`. Pre-quantized checkpoints (GPTQ, AWQ, fp8) need nothing:
# vLLM reads the method from the checkpoint's config.
_QUANTIZATION = {"bnb": "bitsandbytes"}
# Engine options that swiftops sets itself and engine_kwargs must not override silently.
_OWNED_ENGINE_ARGS = ("model", "enable_lora")


def engine_args_kwargs(
    model: ModelSettings, engine: EngineSettings, generation: GenerationSettings | None = None
) -> dict[str, Any]:
    """Keyword arguments of vLLM's `AsyncEngineArgs` for these settings.

    Fields the user did not set that have a swiftops default unlike vLLM's (block_size,
    max_num_batched_tokens) are left to vLLM, which tunes them per GPU and attention backend.
    """
    if not model.model:
        raise ConfigError("no model given; pass --model", param="model")
    if model.device_map:
        raise ConfigError(support("vllm", "device_map").reason, param="device_map")
    if engine.max_itl_ratio:
        raise ConfigError(support("vllm", "max_itl_ratio").reason, param="max_itl_ratio")
    if model.quant_bits not in (None, 4) and model.quant_method == "bnb":
        raise ConfigError(
            "vLLM loads bitsandbytes models in 4 bits only; use --quant_bits 4 or --infer_backend pt",
            param="quant_bits",
        )
    kwargs: dict[str, Any] = {
        "model": gguf_model_path(model) or model.model,
        "dtype": _DTYPES[model.torch_dtype],
        "trust_remote_code": model.trust_remote_code,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "data_parallel_size": engine.data_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enforce_eager": engine.enforce_eager,
    }
    if engine.max_batch_size:
        kwargs["max_num_seqs"] = engine.max_batch_size
    if model.model_revision:
        kwargs["revision"] = model.model_revision
    if model.tokenizer:  # for a GGUF file: the base model's tokenizer, which vLLM need not convert
        kwargs["tokenizer"] = model.tokenizer
    if model.max_model_len:
        kwargs["max_model_len"] = model.max_model_len
    if model.quant_method:
        kwargs["quantization"] = _QUANTIZATION[model.quant_method]
    explicit = engine.model_fields_set
    if "max_num_batched_tokens" in explicit:
        kwargs["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if "block_size" in explicit:
        kwargs["block_size"] = engine.block_size
    if engine.kv_cache_memory_gb:
        kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_memory_gb * (1 << 30))
    if engine.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = engine.enable_prefix_caching
    if engine.limit_mm_per_prompt:
        kwargs["limit_mm_per_prompt"] = dict(engine.limit_mm_per_prompt)
    if model.adapters:
        kwargs.update(lora_kwargs(model, engine))
    if generation is not None and generation.seed is not None:
        kwargs["seed"] = generation.seed
    for key in _OWNED_ENGINE_ARGS:
        if key in engine.engine_kwargs:
            raise ConfigError(
                f"engine_kwargs must not set {key!r}: swiftops sets it from "
                f"{'--model' if key == 'model' else '--adapters'}",
                param="engine_kwargs",
            )
    kwargs.update(engine.engine_kwargs)
    return kwargs


def gguf_model_path(model: ModelSettings) -> str | None:
    """vLLM's `model` for a GGUF checkpoint: the path of the one local file (vLLM reads single-file GGUF;
    recent releases need the vllm-gguf-plugin package). None when the model is not GGUF."""
    gguf = gguf_source(model.model, model.gguf_file)
    if gguf is None:
        return None
    if not gguf.is_local:
        raise ConfigError(
            f"vLLM reads a local GGUF file: download {gguf.file_name} from {gguf.location} and pass "
            f"--model path/to/{gguf.file_name} (with --tokenizer set to the base model's hub id)",
            param="model",
        )
    return gguf.path


def tokenizer_source(model: ModelSettings) -> tuple[str, dict[str, Any]]:
    """Where the engine's own tokenizer (chat template, detokenizing) comes from, with from_pretrained's kwargs:
    --tokenizer when given, else the GGUF file's metadata, else the model's directory or hub id."""
    if model.tokenizer:
        return model.tokenizer, {"trust_remote_code": model.trust_remote_code}
    gguf = gguf_source(model.model, model.gguf_file)
    if gguf is not None:
        return gguf.location, {"gguf_file": gguf.file_name}
    return model.model or "", {"revision": model.model_revision, "trust_remote_code": model.trust_remote_code}


def lora_kwargs(model: ModelSettings, engine: EngineSettings) -> dict[str, Any]:
    """LoRA part of the engine arguments: room for every named adapter (vLLM serves them all in one batch)."""
    if model.quant_method == "bnb":
        raise ConfigError(support("vllm", "qlora").reason, param="adapters")
    if model.merge_lora:
        raise ConfigError(support("vllm", "merge_lora").reason, param="merge_lora")
    return {
        "enable_lora": True,
        "max_lora_rank": engine.max_lora_rank,
        # All named adapters stay resident unless the user caps it lower (vLLM swaps the rest from CPU).
        "max_loras": max(1, min(engine.max_loras, len(model.adapters))),
        "max_cpu_loras": max(engine.max_loras, len(model.adapters)),
    }


def lora_request_kwargs(name: str, path: str, lora_int_id: int) -> dict[str, Any]:
    """Arguments of vLLM's `LoRARequest` for one named adapter; ids are unique per engine and start at 1."""
    if lora_int_id < 1:
        raise ValueError("vLLM LoRA ids start at 1")
    return {"lora_name": name, "lora_int_id": lora_int_id, "lora_path": path}


def sampling_params_kwargs(
    config: RequestConfig,
    prompt_len: int,
    max_model_len: int,
    constraint: OutputConstraint | None = None,
) -> dict[str, Any]:
    """Keyword arguments of vLLM's `SamplingParams` for one request; `config` has every default applied
    (swiftops.protocol.sampling.effective_config). `output_kind` is set by the engine (it is an enum of vLLM's)."""
    room = max_model_len - prompt_len
    if room < 1:
        raise PromptTooLongError(prompt_len, max_model_len)
    if config.num_beams > 1:
        require("vllm", "beam_search")
    if config.return_details:
        require("vllm", "return_details")
    kwargs: dict[str, Any] = {
        "n": config.n,
        "max_tokens": min(config.max_tokens or room, room),
        "temperature": float(config.temperature or 0.0),
        "top_p": float(config.top_p or 1.0),
        # vLLM: 0 (or -1 in older releases) disables top-k; 0 is accepted by every release we support.
        "top_k": int(config.top_k or 0),
        "min_p": config.min_p,
        "repetition_penalty": float(config.repetition_penalty or 1.0),
        "presence_penalty": config.presence_penalty,
        "frequency_penalty": config.frequency_penalty,
        "seed": config.seed,
        "stop": list(config.stop or []),
        "stop_token_ids": list(config.stop_token_ids or []),
        "ignore_eos": config.ignore_eos,
    }
    if config.logit_bias:
        kwargs["logit_bias"] = dict(config.logit_bias)
    if config.logprobs:
        # vLLM's `logprobs=k` returns the sampled token's logprob plus the k most likely ones.
        kwargs["logprobs"] = int(config.top_logprobs or 0)
    if constraint is not None:
        kwargs["structured_outputs"] = structured_outputs_kwargs(constraint)
    return kwargs


def structured_outputs_kwargs(constraint: OutputConstraint) -> dict[str, Any]:
    """A request's output constraint -> arguments of vLLM's `StructuredOutputsParams` (its guided decoding)."""
    if constraint.kind == "json_object":
        return {"json_object": True}
    if constraint.kind == "json_schema":
        structured: dict[str, Any] = {"json": constraint.schema}
        if constraint.strict:  # OpenAI's strict: no properties beyond those declared
            structured["disable_additional_properties"] = True
        return structured
    if constraint.kind == "choice":
        return {"choice": constraint.choices}
    return {constraint.kind: constraint.source}  # regex, grammar: vLLM's own names


def wants_logprobs(sampling_kwargs: dict[str, Any]) -> bool:
    return "logprobs" in sampling_kwargs
