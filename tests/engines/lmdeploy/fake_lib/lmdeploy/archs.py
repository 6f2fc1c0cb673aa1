"""Fake lmdeploy.archs: backend choice and engine class lookup."""
from __future__ import annotations

from typing import Any

from lmdeploy.serve import FakeAsyncEngine

# Architectures the fake TurboMind "cannot run", to exercise LMDeploy's fallback to its PyTorch engine.
PYTORCH_ONLY = {"LlamaForCausalLM"}


def _architecture(model_path: str) -> str:
    import json
    import os

    with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
        return json.load(f)["architectures"][0]


def autoget_backend_config(model_path: str, backend_config: Any = None, trust_remote_code: bool = False):
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig

    if isinstance(backend_config, TurbomindEngineConfig) and _architecture(model_path) in PYTORCH_ONLY:
        common = {k: v for k, v in backend_config.kwargs.items() if k != "cache_block_seq_len"}
        return "pytorch", PytorchEngineConfig(**common)
    return ("pytorch" if isinstance(backend_config, PytorchEngineConfig) else "turbomind"), backend_config


def get_task(backend: str, model_path: str, trust_remote_code: bool = False, backend_config: Any = None):
    return "llm", FakeAsyncEngine
