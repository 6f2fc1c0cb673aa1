"""The lmdeploy backend: `LmdeployEngine` on LMDeploy's async engine (TurboMind or PyTorch).

The engine module loads lazily, so `swiftops.engines.lmdeploy.args` (pure mappings) imports neither
torch nor lmdeploy; lmdeploy itself is imported only when an engine is built.
"""

from typing import Any

__all__ = ["LmdeployEngine"]


def __getattr__(name: str) -> Any:
    if name == "LmdeployEngine":
        from swiftops.engines.lmdeploy.engine import LmdeployEngine

        return LmdeployEngine
    raise AttributeError(f"module 'swiftops.engines.lmdeploy' has no attribute {name!r}")
