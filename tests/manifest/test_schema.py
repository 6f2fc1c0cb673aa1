"""Manifest models: the stored JSON schemas are current, every field is documented, env overrides work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from swiftops.manifest.chart_values import values_json_schema
from swiftops.manifest.yaml_reader import load_text
from swiftops.manifest.schema import manifest_json_schema
REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
apiVersion: swiftops/v1
kind: Deployment
metadata: {name: demo}
spec:
  model: {id: ./tiny-model}
  server: {port: 8000, max_queue: 7}
"""


def test_manifest_schema_file_is_current():
    stored = json.loads((REPO_ROOT / "manifests" / "schema.json").read_text())
    assert stored == manifest_json_schema(), \
        "manifests/schema.json is stale: run `swiftops schema -o manifests/schema.json`"


def test_chart_values_schema_file_is_current():
    stored = json.loads((REPO_ROOT / "helm" / "swiftops" / "values.schema.json").read_text())
    assert stored == values_json_schema(), \
        "helm/swiftops/values.schema.json is stale: run `swiftops schema --chart-values -o helm/swiftops/values.schema.json`"


def test_schema_command_prints_the_stored_schema(run_cli):
    result = run_cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == json.loads((REPO_ROOT / "manifests" / "schema.json").read_text())


def _properties(schema: dict):
    yield "", schema.get("properties", {})
    for name, definition in schema.get("$defs", {}).items():
        yield name, definition.get("properties", {})


def test_every_field_has_a_description_and_forbids_unknown_keys():
    schema = manifest_json_schema()
    missing = [f"{owner}.{field}" for owner, props in _properties(schema) for field, prop in props.items()
               if not prop.get("description")]
    assert missing == []
    objects = [schema, *schema["$defs"].values()]
    assert all(obj.get("additionalProperties") is False for obj in objects if obj.get("properties"))


def test_environment_overrides_a_nested_field_and_keeps_its_siblings(monkeypatch):
    monkeypatch.setenv("SWIFTOPS_SPEC__SERVER__PORT", "9123")
    monkeypatch.setenv("SWIFTOPS_SPEC__BACKEND__OPTIONS__MAX_BATCH_SIZE", "3")
    manifest = load_text(MINIMAL).manifest
    assert manifest.spec.server.port == 9123  # environment beats the manifest
    assert manifest.spec.server.max_queue == 7  # the rest of the section stays
    assert manifest.spec.backend.options.max_batch_size == 3


def test_a_bad_environment_override_names_the_variable(monkeypatch):
    from swiftops.manifest.errors import ManifestError

    monkeypatch.setenv("SWIFTOPS_SPEC__SERVER__PORT", "not-a-port")
    with pytest.raises(ManifestError) as info:
        load_text(MINIMAL, "m.yaml")
    assert "spec.server.port (from environment variable SWIFTOPS_SPEC__SERVER__PORT)" in str(info.value)


def test_unrelated_swiftops_variables_are_not_manifest_fields(monkeypatch):
    # SWIFTOPS_API_KEY and SWIFTOPS_DEBUG belong to the CLI and the server, not to the manifest.
    monkeypatch.setenv("SWIFTOPS_API_KEY", "k")
    monkeypatch.setenv("SWIFTOPS_DEBUG", "1")
    assert load_text(MINIMAL).manifest.metadata.name == "demo"


def test_gpu_count_defaults_to_the_parallelism_product():
    text = MINIMAL.replace("model: {id: ./tiny-model}", "model: {id: m}\n  backend: {name: vllm}\n"
                                                         "  parallelism: {tensor: 2, pipeline: 2}")
    assert load_text(text).manifest.gpu_count == 4
