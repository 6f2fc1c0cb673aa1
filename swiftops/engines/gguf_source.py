"""Where a GGUF checkpoint lies: `--model path/to/model.gguf`, or `--model DIR_OR_REPO --gguf_file NAME`
(transformers' spelling). Path logic only, no torch: the factory checks it before anything loads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeGuard

from swiftops.protocol.errors import ConfigError

GGUF_SUFFIX = ".gguf"
# What to install when the `gguf` package is missing (transformers reads GGUF through it).
GGUF_EXTRA = "pip install 'swiftops[gguf]'"


@dataclass(frozen=True)
class GgufSource:
    location: str  # a local directory, or a hub repo id (transformers downloads the one file)
    file_name: str  # the .gguf file inside it

    @property
    def path(self) -> str:
        return os.path.join(self.location, self.file_name)

    @property
    def is_local(self) -> bool:
        return os.path.isdir(os.path.expanduser(self.location))


def is_gguf_path(model: str | None) -> TypeGuard[str]:
    return model is not None and model.lower().endswith(GGUF_SUFFIX)


def gguf_source(model: str | None, gguf_file: str | None = None) -> GgufSource | None:
    """The GGUF checkpoint these settings name, or None for a transformers checkpoint (directory or hub id)."""
    if gguf_file:
        if not model:
            raise ConfigError(
                "--gguf_file needs --model: the directory (or hub repo) that holds the file", param="gguf_file"
            )
        if is_gguf_path(model):
            raise ConfigError(
                f"--model {model} is already a GGUF file; drop --gguf_file, or pass --model the "
                f"directory that holds {gguf_file}",
                param="gguf_file",
            )
        if not is_gguf_path(gguf_file) or "/" in gguf_file:
            raise ConfigError(
                f"--gguf_file {gguf_file}: give the name of a .gguf file inside --model "
                f"(e.g. --gguf_file model.Q4_K_M.gguf)",
                param="gguf_file",
            )
        return GgufSource(model, gguf_file)
    if is_gguf_path(model):
        location, name = os.path.split(model.rstrip("/"))
        return GgufSource(location or ".", name)
    return None
