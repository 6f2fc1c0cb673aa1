"""Rendering: the manifest the pod gets renders the same entrypoint as the original, and the
entrypoint target prints a command plus Kubernetes-shaped env."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from swiftops.manifest.render import render_entrypoint, render_helm_values
from swiftops.manifest.validation import load_and_validate

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_mounted_manifest_validates_and_renders_the_same_entrypoint(example, tmp_path):
    original = load_and_validate(example).manifest
    mounted = tmp_path / "manifest.yaml"  # what the chart's ConfigMap holds
    mounted.write_text(yaml.safe_dump(render_helm_values(original)["manifest"]))
    again = load_and_validate(mounted).manifest
    assert render_entrypoint(again) == render_entrypoint(original)
    assert again.gpu_count == original.gpu_count


def test_entrypoint_target_prints_the_command_and_env(run_cli):
    result = run_cli("render", "-f", str(REPO_ROOT / "manifests/examples/qwen2.5-vl-3b-multimodal.yaml"))
    assert result.code == 0, result.err
    first, rest = result.out.split("\n", 1)
    document = yaml.safe_load(rest)
    assert first == "# " + " ".join(document["command"][:4]) + " " + " ".join(document["command"][4:]).replace(
        '{"image":5,"video":2}', "'{\"image\":5,\"video\":2}'")
    assert document["command"][:2] == ["swiftops", "deploy"]
    assert {"name": "MAX_PIXELS", "value": "1003520"} in document["env"]


def test_render_of_an_invalid_manifest_exits_2_with_the_problems(run_cli, write_manifest):
    path = write_manifest("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
                          "  model: {id: m}\n  backend: {name: vllm}\n  adapters: {a: b}\n"
                          "  model_x: 1\n")
    result = run_cli("render", "-f", str(path), "--target", "docker")
    assert result.code == 2
    assert f"{path}:8: spec.model_x: unknown key 'model_x'; did you mean 'model'?" in result.err
    assert result.out == ""
