"""Which pt engine serves a checkpoint: `PtEngine` generates; embedding, reward and classifier checkpoints get
their own engines. `PtEngine(path)` and `swiftops infer|deploy` both ask here, so a reward model is never loaded
as a causal LM (ms-swift picks the engine from the checkpoint too)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TaskType = str  # one of ModelSettings.task_type's literals
SCORING_TASKS = ("seq_cls", "reward", "prm")
_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "mpnet",
    "distilbert",
    "electra",
    "deberta",
    "deberta-v2",
    "modernbert",
    "nomic_bert",
    "camembert",
    "albert",
    "e5",
    "new",
}


def model_task(model: str, task_type: str | None = None) -> str:
    """`task_type` when given, else what the checkpoint's files say (a hub id's config.json is read through
    transformers, which fetches it; an id that cannot be read counts as a causal LM and fails to load later)."""
    if task_type is not None:
        return task_type
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


def detect_task_type(model_path: str) -> TaskType:
    """causal_lm, embedding, seq_cls, reward or prm, from a local checkpoint's files and config.json.

    sentence-transformers files -> embedding; *ForSequenceClassification -> reward with one label, else seq_cls;
    *ProcessRewardModel / *ForTokenClassification -> prm; *RewardModel -> reward; encoder-only base models
    (BertModel...) -> embedding; anything else (causal LMs, VLMs) -> causal_lm. A hub id that is not
    downloaded yet is read through transformers' AutoConfig.
    """
    if os.path.isfile(os.path.join(model_path, "modules.json")):
        return "embedding"
    config_path = os.path.join(model_path, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    else:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_path).to_dict()
        except (OSError, ValueError):
            return "causal_lm"
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch.endswith("ForSequenceClassification"):
            labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
            return "reward" if labels == 1 else "seq_cls"
        if arch.endswith(("ProcessRewardModel", "ForTokenClassification")):
            return "prm"
        if arch.endswith("RewardModel"):
            return "reward"
    if config.get("model_type") in _ENCODER_TYPES and not any(
        a.endswith(("ForMaskedLM", "ForCausalLM")) for a in architectures
    ):
        return "embedding"
    return "causal_lm"
