"""A GGUF checkpoint in a manifest: both spellings validate and render to the flags the CLI reads back."""
from __future__ import annotations

import pytest

from swiftops.engines.gguf_source import GgufSource, gguf_source
from swiftops.manifest.render import local_mounts, render_entrypoint
from swiftops.manifest.validation import load_and_validate


@pytest.mark.parametrize("model_yaml, flags", [
    ("{id: ./models/smol.Q4_1.gguf}", ["--model", "./models/smol.Q4_1.gguf"]),
    ("{id: ./models, gguf_file: smol.Q4_1.gguf}", ["--model", "./models", "--gguf_file", "smol.Q4_1.gguf"]),
])
def test_gguf_model_renders_and_names_the_file(tmp_path, model_yaml, flags):
    path = tmp_path / "smol.yaml"
    path.write_text(f"apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {{name: smol}}\n"
                    f"spec:\n  model: {model_yaml}\n", encoding="utf-8")
    manifest = load_and_validate(path).manifest
    argv = render_entrypoint(manifest).argv
    assert argv[:2] == ["swiftops", "deploy"] and argv[2:2 + len(flags)] == flags
    model = argv[argv.index("--model") + 1]
    gguf_file = argv[argv.index("--gguf_file") + 1] if "--gguf_file" in argv else None
    assert gguf_source(model, gguf_file) == GgufSource("./models", "smol.Q4_1.gguf")
    # `--target docker` mounts the local model (the file, or the folder holding it) read-only
    assert [container for _, container, read_only in local_mounts(manifest) if read_only] == \
        [f"/workspace/{manifest.spec.model.id.removeprefix('./')}"]
