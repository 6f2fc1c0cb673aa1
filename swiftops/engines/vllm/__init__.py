"""The vllm backend: `VllmEngine` on vLLM's async engine.

The engine module loads lazily, so `swiftops.engines.vllm.args` (pure mappings) imports neither
torch nor vllm; vllm itself is imported only when an engine is built.
"""

from typing import Any

__all__ = ["VllmEngine"]


def __getattr__(name: str) -> Any:
    if name == "VllmEngine":
        from swiftops.engines.vllm.engine import VllmEngine

        return VllmEngine
    raise AttributeError(f"module 'swiftops.engines.vllm' has no attribute {name!r}")
