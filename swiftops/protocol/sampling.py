"""A request's sampling settings with every default applied: the one definition of the defaults and their order.

Per field, the first of these that is set wins:

1. the request (`RequestConfig`: the Python API, an OpenAI request, the CLI's per-run choices);
2. the engine's generation defaults (`GenerationSettings`: --temperature, --max_new_tokens ... on the command line,
   `spec.generation` in a manifest, `generation=` or keyword arguments in Python);
3. the checkpoint's generation_config.json (temperature, top_k, top_p), only when neither 1 nor 2 sets a
   temperature: a checkpoint that does not sample is greedy;
4. the built-in value (greedy, top_p 1, no top-k, no repetition penalty, no stop strings, no logprobs).

Every engine calls `effective_config` once per request and hands only its result to its backend's mapping
(pt: `swiftops.engines.pt.sequence.SamplingParams.from_config`, vLLM and LMDeploy: their `args` modules); no
other code reads the sampling fields of `GenerationSettings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from swiftops.protocol.request import RequestConfig
from swiftops.protocol.settings import GenerationSettings

# RequestConfig field -> the GenerationSettings field that gives its default (step 2).
ENGINE_DEFAULTS = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop_words",
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
}


# RequestConfig fields that name token ids the backends index the logits with, and how to read those ids from the
# field's value. Every engine checks them against its model's vocabulary before the request runs
# (`swiftops.engines.prompt_checks.check_logit_token_ids`): an id past the logits' width is a 400 on every
# backend, never an indexing error on the device.
LOGIT_INDEX_FIELDS: dict[str, Callable[[Any], Iterable[int]]] = {"logit_bias": dict.keys}


def model_sampling_defaults(generation_config: Any) -> dict[str, Any]:
    """Step 3: the sampling a checkpoint's generation_config.json asks for ({} when it does not sample)."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return {}
    defaults: dict[str, Any] = {"do_sample": True}
    for key in ("temperature", "top_k", "top_p"):
        value = getattr(generation_config, key, None)
        if value is not None:
            defaults[key] = value
    return defaults


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def wants_logprobs(config: RequestConfig, generation: GenerationSettings) -> bool:
    """Logprobs are returned when the request or the engine's defaults ask for them (top_logprobs implies them)."""
    return bool(config.logprobs or config.top_logprobs or generation.logprobs or generation.top_logprobs is not None)


def stop_strings(config: RequestConfig, generation: GenerationSettings) -> list[str]:
    """The request's stop strings, else the engine's default stop words (empty ones dropped)."""
    return [s for s in (config.stop or generation.stop_words or []) if s]


def effective_config(
    config: RequestConfig, generation: GenerationSettings, model_defaults: dict[str, Any] | None = None
) -> RequestConfig:
    """`config` with steps 2-4 applied: temperature, top_p, repetition_penalty and top_logprobs are numbers,
    stop a list, logprobs whether to return them, top_k None or > 0; max_tokens stays None when neither the
    request nor the engine caps it (the backend then generates up to the context)."""
    g = generation
    temperature = _first(config.temperature, g.temperature)
    top_k = _first(config.top_k, g.top_k)
    top_p = _first(config.top_p, g.top_p)
    if temperature is None:
        model_defaults = model_defaults or {}
        temperature = float(model_defaults.get("temperature", 1.0)) if model_defaults else 0.0
        top_k = _first(top_k, model_defaults.get("top_k"))
        top_p = _first(top_p, model_defaults.get("top_p"))
    update = {
        "max_tokens": config.max_tokens or g.max_new_tokens,
        "temperature": float(temperature),
        "top_k": int(top_k) if top_k is not None and int(top_k) > 0 else None,
        "top_p": float(top_p or 1.0),
        "repetition_penalty": float(_first(config.repetition_penalty, g.repetition_penalty) or 1.0),
        "seed": _first(config.seed, g.seed),
        "stop": stop_strings(config, g),
        "logprobs": wants_logprobs(config, g),
        "top_logprobs": int(_first(config.top_logprobs, g.top_logprobs) or 0),
    }
    return config.model_copy(update=update)
