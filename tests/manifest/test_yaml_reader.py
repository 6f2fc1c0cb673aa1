"""Loading: every problem names its field path and YAML line, all are reported at once, exit 2."""
from __future__ import annotations

import pytest

from swiftops.manifest.errors import ManifestError
from swiftops.manifest.yaml_reader import load_text

BROKEN = """\
apiVersion: swiftops/v1
kind: Deployment
metadata:
  name: Bad_Name
spec:
  model:
    id: foo
    dtpye: bfloat16
  server:
    prot: 8000
    max_queue: -1
  resources:
    memory: lots
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_text(text, "m.yaml")
    return [str(issue) for issue in info.value.issues]


def test_all_problems_are_reported_with_path_and_line():
    found = problems(BROKEN)
    assert found[0].startswith("m.yaml:4: metadata.name: must be a DNS-1123 label")
    assert "m.yaml:8: spec.model.dtpye: unknown key 'dtpye'; did you mean 'dtype'?" in found
    assert "m.yaml:10: spec.server.prot: unknown key 'prot'; did you mean 'port'?" in found
    assert any(p.startswith("m.yaml:11: spec.server.max_queue: Input should be greater than or equal to 0") for p in found)
    assert any(p.startswith("m.yaml:13: spec.resources.memory: must be a Kubernetes quantity") for p in found)
    assert len(found) == 5


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    found = problems(BROKEN.replace("dtpye", "zzzzzz"))
    assert any("unknown key 'zzzzzz'; known keys: " in p and "gguf_file" in p and "load_args" in p for p in found)


def test_a_plain_api_key_is_refused_with_the_secret_field_to_use():
    text = BROKEN.replace("    prot: 8000\n    max_queue: -1\n", "    api_key: sk-live-123\n")
    found = problems(text)
    assert any(p.startswith("m.yaml:10: spec.server.api_key: 'api_key' would put a secret in the manifest in plain text")
               and "spec.server.api_key_secret" in p for p in found)


def test_missing_required_fields_point_at_their_parent():
    found = problems("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  adapters: {}\n")
    assert found == ["m.yaml:4: spec.model: required field is missing"]


def test_wrong_api_version_and_kind():
    found = problems("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {model: {id: m}}\n")
    assert found[0].startswith("m.yaml:1: apiVersion: Input should be 'swiftops/v1'")
    assert found[1].startswith("m.yaml:2: kind: Input should be 'Deployment' or 'InferenceJob'")


def test_duplicate_keys_are_an_error_not_a_silent_override():
    found = problems("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
                     "  model: {id: m}\n  replicas: 1\n  replicas: 2\n")
    assert found == ["m.yaml:7: spec.replicas: key given twice; keep one"]


def test_invalid_yaml_names_the_line():
    found = problems("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x\nspec: {}\n")
    assert len(found) == 1 and found[0].startswith("m.yaml:4: <document>: not valid YAML")


def test_a_list_item_error_names_the_index_and_its_line():
    found = problems("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  model: {id: m}\n"
                     "  env:\n    - {name: A, value: b}\n    - {name: 1BAD, value: c}\n")
    assert found[0].startswith("m.yaml:8: spec.env.1.name: String should match pattern")


def test_validate_command_exits_2_and_prints_every_problem(run_cli, write_manifest):
    bad = write_manifest(BROKEN, "bad.yaml")
    good = write_manifest("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: ok}\nspec: {model: {id: m}}\n",
                          "good.yaml")
    result = run_cli("validate", "-f", str(good), "-f", str(bad))
    assert result.code == 2
    assert f"{good}: valid Deployment 'ok'" in result.out
    assert f"{bad}: 5 problems" in result.err
    assert f"{bad}:8: spec.model.dtpye: unknown key 'dtpye'; did you mean 'dtype'?" in result.err
    assert "Traceback" not in result.err
