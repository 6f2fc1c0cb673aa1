"""What each backend can do, in one table used by manifest validation, the CLI and the server.

A feature a backend lacks is refused before any weights load, with the reason and what to do
instead. Imports nothing heavy (no torch, no backend library): `swiftops validate` runs on a laptop.

    reason = unsupported_reason("lmdeploy", "lora", lmdeploy_backend="turbomind")
    require("vllm", "device_map")  # raises UnsupportedError with the reason
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from swiftops.protocol.errors import UnsupportedError

Backend = Literal["pt", "vllm", "lmdeploy"]
# Backends that map a request (`RequestConfig`): the engines, and InferClient, which sends it to a server.
REQUEST_BACKENDS = ("pt", "vllm", "lmdeploy", "client")
LmdeployBackend = Literal["turbomind", "pytorch"]
# LMDeploy picks TurboMind when the model supports it; features that only its PyTorch engine has
# are checked against this unless the manifest/flags name the engine.
DEFAULT_LMDEPLOY_BACKEND: LmdeployBackend = "turbomind"


@dataclass(frozen=True)
class Support:
    """One cell of the table: whether a backend does a feature, and if not, why and what to use instead."""

    supported: bool
    reason: str = ""


YES = Support(True)


def no(reason: str) -> Support:
    return Support(False, reason)


# feature -> backend -> Support; "lmdeploy:turbomind" / "lmdeploy:pytorch" refine "lmdeploy".
CAPABILITIES: dict[str, dict[str, Support]] = {
    "lora": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy:pytorch": YES,
        "lmdeploy:turbomind": no(
            "LMDeploy's TurboMind engine cannot serve LoRA adapters; "
            "set backend.options.lmdeploy_backend: pytorch, merge the adapter, or use pt/vllm"
        ),
    },
    "multi_lora": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy:pytorch": YES,
        "lmdeploy:turbomind": no("LMDeploy's TurboMind engine cannot serve LoRA adapters; use pt or vllm"),
    },
    "qlora": {
        "pt": YES,
        "vllm": no("QLoRA (LoRA on a bitsandbytes 4-bit base) runs only on the pt backend"),
        "lmdeploy": no("QLoRA (LoRA on a bitsandbytes 4-bit base) runs only on the pt backend"),
    },
    "quant:bnb": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy": no("LMDeploy cannot load bitsandbytes checkpoints; use an AWQ/GPTQ checkpoint or pt/vllm"),
    },
    "quant:gptq": {"pt": YES, "vllm": YES, "lmdeploy": YES},
    "quant:awq": {"pt": YES, "vllm": YES, "lmdeploy": YES},
    "quant:fp8": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy": no("LMDeploy cannot load fp8 checkpoints here; use AWQ/GPTQ or vllm"),
    },
    "tensor_parallel": {
        "pt": no(
            "the pt backend runs one process per model; split a large model over GPUs with "
            "parallelism.device_map, or use vllm/lmdeploy for tensor parallelism"
        ),
        "vllm": YES,
        "lmdeploy": YES,
    },
    "pipeline_parallel": {
        "pt": no("the pt backend has no pipeline parallelism; use parallelism.device_map or vllm"),
        "vllm": YES,
        "lmdeploy": no("LMDeploy has no pipeline parallelism; use tensor parallelism or vllm"),
    },
    "data_parallel_server": {
        "pt": no("the pt server runs one engine per process; scale a Deployment with replicas instead"),
        "vllm": YES,
        "lmdeploy": YES,
    },
    "data_parallel_job": {
        "pt": no(
            "the pt backend runs a data-parallel job as torchrun processes, one shard each: set "
            "--nproc_per_node (spec.job.nproc_per_node) instead of a data parallel size"
        ),
        "vllm": YES,
        "lmdeploy": YES,
    },
    "device_map": {
        "pt": YES,
        "vllm": no("vLLM places the model itself; use parallelism.tensor/pipeline instead of device_map"),
        "lmdeploy": no("LMDeploy places the model itself; use parallelism.tensor instead of device_map"),
    },
    "max_itl_ratio": {
        "pt": YES,
        "vllm": no("vLLM schedules prefill chunks itself; bound them with --max_num_batched_tokens instead"),
        "lmdeploy": no("LMDeploy schedules prefill itself; bound it with --max_num_batched_tokens instead"),
    },
    "cpu": {
        "pt": YES,
        "vllm": no("the vllm backend needs a GPU; set resources.gpu.count >= 1 or use pt on CPU"),
        "lmdeploy": no("the lmdeploy backend needs a GPU; set resources.gpu.count >= 1 or use pt on CPU"),
    },
    "multimodal": {"pt": YES, "vllm": YES, "lmdeploy": YES},
    "logprobs": {"pt": YES, "vllm": YES, "lmdeploy": YES, "client": YES},
    # Rows below were learnt building the vllm/lmdeploy engines against vLLM 0.31 and LMDeploy 0.18.
    "dynamic_lora": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy": no("LMDeploy loads adapters at start only; list every adapter in --adapters (spec.adapters)"),
    },
    "merge_lora": {
        "pt": YES,
        "vllm": no(
            "merging an adapter into the weights is done by the pt backend; merge it there first, or serve "
            "the adapter unmerged"
        ),
        "lmdeploy": no(
            "merging an adapter into the weights is done by the pt backend; merge it there first, or serve "
            "the adapter unmerged with lmdeploy_backend: pytorch"
        ),
    },
    "beam_search": {
        "pt": YES,
        "client": YES,  # the server's backend decides
        "vllm": no("the vllm backend has no beam search in this version; use --infer_backend pt for num_beams > 1"),
        "lmdeploy": no("LMDeploy has no beam search; use --infer_backend pt for num_beams > 1"),
    },
    # Constrained decoding: response_format json_object / json_schema, guided_json, forced tool calls (pt: xgrammar).
    "structured_output": {"pt": YES, "vllm": YES, "lmdeploy": YES, "client": YES},
    "guided_regex": {"pt": YES, "vllm": YES, "lmdeploy": YES, "client": YES},
    "guided_choice": {"pt": YES, "vllm": YES, "lmdeploy": YES, "client": YES},  # lmdeploy: as a regex of the choices
    "guided_grammar": {
        "pt": YES,
        "vllm": YES,
        "client": YES,
        "lmdeploy": no(
            "LMDeploy compiles JSON schemas and regexes only, not EBNF grammars; use --infer_backend pt "
            "or vllm for guided_grammar"
        ),
    },
    "presence_frequency_penalty": {
        "pt": YES,
        "vllm": YES,
        "client": YES,
        "lmdeploy": no("LMDeploy has no presence/frequency penalty; use repetition_penalty, or pt/vllm"),
    },
    "return_details": {
        "pt": YES,
        "vllm": no("return_details (the images' sizes as the model saw them) comes from the pt backend only; drop it"),
        "lmdeploy": no(
            "return_details (the images' sizes as the model saw them) comes from the pt backend only; drop it"
        ),
        "client": no(
            "return_details is for the Python API's local engines (OpenAI's wire format has no such field); "
            "run PtEngine in-process, or drop it"
        ),
    },
    "logit_bias": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy:pytorch": YES,  # as a logits processor
        "lmdeploy:turbomind": no(
            "LMDeploy's TurboMind engine runs no logits processors, so logit_bias cannot apply; set "
            "backend.options.lmdeploy_backend: pytorch (--lmdeploy_backend pytorch), or use pt/vllm"
        ),
        "client": YES,
    },
    "video_input": {
        "pt": YES,
        "vllm": no("the vllm backend takes images only in this version; run videos on the pt backend"),
        "lmdeploy": no("the lmdeploy backend takes images only in this version; run videos on the pt backend"),
    },
    "audio_input": {
        "pt": YES,
        "vllm": no("the vllm backend takes images only in this version; run audio on the pt backend"),
        "lmdeploy": no("the lmdeploy backend takes images only in this version; run audio on the pt backend"),
    },
    "float32": {
        "pt": YES,
        "vllm": YES,
        "lmdeploy": no("LMDeploy runs in float16 or bfloat16; use dtype auto, float16 or bfloat16, or pt/vllm"),
    },
}

FEATURES = tuple(CAPABILITIES)

# Every RequestConfig field, with the feature row whose "no" cells refuse it (None: every backend maps it). Each
# backend's mapping (pt: swiftops.engines.pt.request_plan; vllm, lmdeploy: their `args` modules; client: the
# HTTP body) must carry a field of this table or refuse it with `require`: tests/engines/test_request_fields.py
# sets each field on each backend and fails for a field that is in RequestConfig and not here, or that a backend
# neither maps nor refuses.
REQUEST_FIELDS: dict[str, str | None] = {
    "max_tokens": None,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "min_p": None,
    "repetition_penalty": None,
    "presence_penalty": "presence_frequency_penalty",
    "frequency_penalty": "presence_frequency_penalty",
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": None,
    "logit_bias": "logit_bias",
    "seed": None,
    "stream": None,
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "n": None,
    "num_beams": "beam_search",
    "return_details": "return_details",
    "response_format": "structured_output",
    "guided_json": "structured_output",
    "guided_regex": "guided_regex",
    "guided_choice": "guided_choice",
    "guided_grammar": "guided_grammar",
}
# Read by every engine's response shaping (InferEngine.infer_async: chunks or one response), not by the library: a
# backend whose mapping shows no trace of them still honours them.
RESPONSE_FIELDS = ("stream",)


def support(backend: str, feature: str, lmdeploy_backend: str | None = None) -> Support:
    """The table cell for `feature` on `backend` (the LMDeploy engine refines lmdeploy's cell)."""
    if feature not in CAPABILITIES:
        raise KeyError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
    row = CAPABILITIES[feature]
    if backend == "lmdeploy":
        refined = row.get(f"lmdeploy:{lmdeploy_backend or DEFAULT_LMDEPLOY_BACKEND}")
        if refined is not None:
            return refined
    cell = row.get(backend)
    if cell is None:
        raise KeyError(f"unknown backend {backend!r} for {feature}; known: {', '.join(b for b in row if ':' not in b)}")
    return cell


def unsupported_reason(backend: str, feature: str, lmdeploy_backend: str | None = None) -> str | None:
    """None when the backend does the feature, else the reason (which says what to do instead)."""
    cell = support(backend, feature, lmdeploy_backend)
    return None if cell.supported else cell.reason


def require(backend: str, feature: str, lmdeploy_backend: str | None = None) -> None:
    """Raise UnsupportedError (HTTP 400, CLI exit 2) when the backend cannot do the feature."""
    reason = unsupported_reason(backend, feature, lmdeploy_backend)
    if reason is not None:
        raise UnsupportedError(f"{backend} cannot do {feature}: {reason}", code="unsupported_feature")


def table_rows() -> list[tuple[str, dict[str, str]]]:
    """feature -> {pt, vllm, lmdeploy: 'yes' | 'no: reason'} for docs (README backend table)."""
    rows = []
    for feature in FEATURES:
        cells = {}
        for backend in ("pt", "vllm", "lmdeploy"):
            cell = support(backend, feature)
            cells[backend] = "yes" if cell.supported else f"no: {cell.reason}"
        rows.append((feature, cells))
    return rows
