"""swiftops: LLM and multimodal-LLM inference and deployment.

`import swiftops` is light: engines (and torch, vllm, lmdeploy) load on first use.
"""

from __future__ import annotations

from typing import Any

from swiftops.metrics.stats import InferStats
from swiftops.protocol import (
    AdapterRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    InferRequest,
    RequestConfig,
)

__version__ = "0.1.0"

_LAZY = {
    "PtEngine": "swiftops.engines.pt",
    "InferClient": "swiftops.engines.client",
    "VllmEngine": "swiftops.engines.vllm",
    "LmdeployEngine": "swiftops.engines.lmdeploy",
    "InferEngine": "swiftops.engines.base",
    "TransformersEngine": "swiftops.engines.pt",  # ms-swift >= 3.7's name for PtEngine
    "load_dataset": "swiftops.dataset.requests",
    "DeployArguments": "swiftops.deploy_process",
    "run_deploy": "swiftops.deploy_process",
    # ms-swift's helpers that its demos import (examples/infer/demo_lora.py, demo_agent.py, demo_grounding.py)
    "get_template": "swiftops.template.template",
    "Template": "swiftops.template.template",
    "agent_templates": "swiftops.template.template",
    "agent_template_map": "swiftops.template.template",
    "safe_snapshot_download": "swiftops.models.hub",
    "BaseArguments": "swiftops.models.hub",
    "get_model_tokenizer": "swiftops.models.hub",
    "draw_bbox": "swiftops.template.grounding",
    "load_image": "swiftops.media.image",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'swiftops' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), "PtEngine" if name == "TransformersEngine" else name)


__all__ = [
    "AdapterRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamResponse",
    "InferRequest",
    "InferStats",
    "RequestConfig",
    *_LAZY,
]
