"""Where the weights come from, the ms-swift way: the `args.json` that ms-swift writes next to a trained adapter
(`--adapters DIR` alone finds its base model and system prompt there), and the hub: Hugging Face (transformers'
cache, the default) or ModelScope (`--use_hf false` / `USE_HF=0`, with the `modelscope` package installed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, overload

from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import GenerationSettings, ModelSettings

ARGS_FILE = "args.json"  # written by `swift sft` into each checkpoint directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix it or pass --load_args false") from None
    return data if isinstance(data, dict) else {}


def adapter_base_model(adapter_dir: str) -> tuple[str | None, dict[str, Any]]:
    """(the base model an adapter was trained on, its ms-swift args) from args.json, else adapter_config.json."""
    directory = Path(adapter_dir).expanduser()
    args = _read_json(directory / ARGS_FILE) if (directory / ARGS_FILE).is_file() else {}
    base = args.get("model") or args.get("model_id_or_path") or args.get("model_name_or_path")
    if not base and (directory / "adapter_config.json").is_file():
        base = _read_json(directory / "adapter_config.json").get("base_model_name_or_path")
    return (str(base) if base else None), args


# Generation settings in, generation settings out (the overloads tell mypy; the third definition runs).
@overload
def apply_adapter_args(
    model: ModelSettings, generation: GenerationSettings
) -> tuple[ModelSettings, GenerationSettings]: ...
@overload
def apply_adapter_args(model: ModelSettings, generation: None = None) -> tuple[ModelSettings, None]: ...
def apply_adapter_args(
    model: ModelSettings, generation: GenerationSettings | None = None
) -> tuple[ModelSettings, GenerationSettings | None]:
    """`--adapters DIR` without `--model`: the base model from the adapter's args.json (and its system prompt
    when --system is unset), as `swift infer --adapters` does. Flags given on the command line win."""
    if model.model or not model.load_args or not model.adapters:
        return model, generation
    # ms-swift reads the first adapter's args.json (`--adapters lora1=A lora2=B` with no --model); a hub id
    # (`--adapters swift/test_lora`) is fetched first, from the hub --use_hf / USE_HF picks.
    name, path = next(iter(model.adapters.items()))
    from swiftops.engines.factory import looks_like_hub_id

    if not Path(path).expanduser().exists() and looks_like_hub_id(path):
        path = fetch_snapshot(path, None, model.use_hf)
        model = model.model_copy(update={"adapters": {**model.adapters, name: path}})
    base, args = adapter_base_model(path)
    if not base:
        return model, generation
    model = model.model_copy(update={"model": base})
    if generation is not None and generation.system is None and isinstance(args.get("system"), str):
        generation = generation.model_copy(update={"system": args["system"]})
    return model, generation


def wants_hugging_face(use_hf: bool | None) -> bool:
    """--use_hf, else ms-swift's USE_HF variable, else Hugging Face."""
    if use_hf is not None:
        return use_hf
    value = os.environ.get("USE_HF", "").strip().lower()
    return value in ("", "1", "true", "yes")


def fetch_from_hugging_face(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot fetch {repo_id} from Hugging Face: {first}") from None


def fetch_snapshot(repo_id: str, revision: str | None, use_hf: bool | None) -> str:
    """A local snapshot of a hub repository, from Hugging Face or (--use_hf false / USE_HF=0) ModelScope."""
    if wants_hugging_face(use_hf):
        return fetch_from_hugging_face(repo_id, revision)
    return fetch_from_modelscope(repo_id, revision)


def fetch_from_modelscope(repo_id: str, revision: str | None) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(
            "--use_hf false (or USE_HF=0) downloads from ModelScope, which needs "
            "`pip install modelscope`; or drop it to use Hugging Face"
        ) from None
    try:
        return snapshot_download(repo_id, revision=revision)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot fetch {repo_id} from ModelScope: {first}") from None


def fetch_hub_ids(model: ModelSettings, is_hub_id: Any) -> ModelSettings:
    """With ModelScope chosen, hub ids (model and adapters) become local snapshots; Hugging Face ids are left to
    transformers, which fetches them into its own cache."""
    if wants_hugging_face(model.use_hf):
        return model
    update: dict[str, Any] = {}
    if model.model and not Path(model.model).expanduser().exists() and is_hub_id(model.model):
        update["model"] = fetch_from_modelscope(model.model, model.model_revision)
    adapters = {
        name: fetch_from_modelscope(path, None) if not Path(path).expanduser().exists() and is_hub_id(path) else path
        for name, path in model.adapters.items()
    }
    if adapters != model.adapters:
        update["adapters"] = adapters
    return model.model_copy(update=update) if update else model
