"""Which pt engine serves a checkpoint: `PtEngine` generates; embedding, reward and classifier checkpoints get
their own engines. `PtEngine(path)` and `swiftops infer|deploy` both ask here, so a reward model is never loaded
as a causal LM (ms-swift picks the engine from the checkpoint too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCORING_TASKS = ("seq_cls", "reward", "prm")


def model_task(model: str, task_type: str | None = None) -> str:
    """`task_type` when given, else what the checkpoint's files say (a hub id's config.json is read through
    transformers, which fetches it; an id that cannot be read counts as a causal LM and fails to load later)."""
    if task_type is not None:
        return task_type
    from swiftops.engines.pt.embedding import detect_task_type

    path = Path(model).expanduser()
    return detect_task_type(str(path) if path.is_dir() else model)


def task_engine_class(task: str) -> type[Any] | None:
    """The engine class of a non-generating task; None for causal_lm (PtEngine itself)."""
    if task == "embedding":
        from swiftops.engines.pt.embedding import PtEmbeddingEngine

        return PtEmbeddingEngine
    if task in SCORING_TASKS:
        from swiftops.engines.pt.classifier import PtClassifierEngine

        return PtClassifierEngine
    return None
