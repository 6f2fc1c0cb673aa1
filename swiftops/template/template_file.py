"""`--template`: a chat template read from a file, replacing the checkpoint's.

ms-swift names its built-in templates (qwen2_5, llama3...); swiftops runs the tokenizer's own template, so a
name is refused with a pointer to the file form, never silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from swiftops.protocol.errors import ConfigError


def read_chat_template(source: str) -> str:
    """The Jinja text of a .jinja/.j2/.txt file, or the `chat_template` of a tokenizer_config.json-like file."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--template {source}: swiftops has no named templates (it uses the checkpoint's own "
            f"chat template); pass a .jinja file, or a JSON file with a chat_template key"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--template {source}: not valid JSON ({exc.msg})") from None
    template = data.get("chat_template") if isinstance(data, dict) else None
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"--template {source}: no chat_template string in this JSON file")
    return template
