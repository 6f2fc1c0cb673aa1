"""ms-swift's download helpers for Python scripts: `safe_snapshot_download` (a local path as it is, a hub id as a
local snapshot) and `BaseArguments.from_pretrained` (the `args.json` that ms-swift writes next to a trained
checkpoint), so that demos such as ms-swift's demo_lora.py run unchanged.

The hub is Hugging Face unless `use_hf=False` (or USE_HF=0) asks for ModelScope, as on the command line
(swiftops.engines.model_source)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swiftops.engines.model_source import ARGS_FILE, adapter_base_model, fetch_snapshot
from swiftops.protocol.errors import ConfigError


def safe_snapshot_download(
    model_id_or_path: str, revision: str | None = None, use_hf: bool | None = None, **_ignored: Any
) -> str:
    """A local directory of the model or adapter: the path itself when it exists, else a hub snapshot."""
    path = Path(model_id_or_path).expanduser()
    if path.exists():
        return str(path)
    return fetch_snapshot(model_id_or_path, revision, use_hf)


class BaseArguments:
    """The settings a checkpoint was trained with, read from its args.json (`BaseArguments.from_pretrained(dir)`):
    `args.model` (the base model), `args.template`, `args.system`, `args.norm_bbox`, and any other key as an
    attribute. Keys args.json lacks read as None."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only called for names args.json did not have
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __repr__(self) -> str:
        return f"BaseArguments({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str) -> BaseArguments:
        directory = Path(checkpoint_dir).expanduser()
        if not directory.is_dir():
            raise ConfigError(
                f"{checkpoint_dir} is not a checkpoint directory; pass the folder that holds "
                f"{ARGS_FILE} (safe_snapshot_download(...) gives one for a hub id)"
            )
        base, args = adapter_base_model(str(directory))
        if not args and not (directory / ARGS_FILE).is_file() and base is None:
            raise ConfigError(
                f"{checkpoint_dir} has no {ARGS_FILE} (nor an adapter_config.json naming its base "
                f"model); ms-swift writes one next to each trained checkpoint"
            )
        values = dict(args)
        values["model"] = base
        values.setdefault("ckpt_dir", str(directory))
        return cls(**values)


def get_model_tokenizer(
    model_id_or_path: str,
    torch_dtype: Any = None,
    revision: str | None = None,
    use_hf: bool | None = None,
    load_model: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """ms-swift's `get_model_tokenizer`: (the transformers causal LM, or None with load_model=False; its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = safe_snapshot_download(model_id_or_path, revision=revision, use_hf=use_hf)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    model = None
    if load_model:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype or "auto", trust_remote_code=kwargs.get("trust_remote_code", False)
        )
    return model, tokenizer
