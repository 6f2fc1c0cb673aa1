"""`swiftops validate` refuses what the API server refuses, before any cluster is touched: for each case the real
API server rejects the objects the chart makes when validation is bypassed, and `swiftops validate` names the
manifest field first."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import yaml

from swiftops.manifest.schema import Manifest
from swiftops.manifest.render import render_helm_values

BASE = {"apiVersion": "swiftops/v1", "kind": "Deployment", "metadata": {"name": "chat"},
        "spec": {"model": {"id": "m"}, "resources": {"gpu": {"count": 0}}}}

CASES = {
    "label-value-with-spaces": ({"metadata": {"name": "chat", "labels": {"team": "ml platform"}}},
                                "metadata.labels.team", "not a valid label value"),
    # Kubernetes 1.34+ may accept it (RelaxedServiceNameValidation); 1.33 refuses it: judged by the 1.33 server.
    "service-name-starts-with-a-digit": ({"metadata": {"name": "7b-chat"}}, "metadata.name", "DNS-1035"),
    "node-selector-key-with-spaces": ({"spec": {"model": {"id": "m"}, "resources": {"gpu": {"count": 0}},
                                                "placement": {"node_selector": {"gpu type": "a100"}}}},
                                      "spec.placement.node_selector", "not a valid key"),
    "toleration-exists-with-a-value": ({"spec": {"model": {"id": "m"}, "resources": {"gpu": {"count": 0}},
                                                 "placement": {"tolerations": [{"key": "dedicated",
                                                                                "operator": "Exists",
                                                                                "value": "llm"}]}}},
                                       "spec.placement.tolerations.0.value", "operator Exists"),
}


def manifest_of(change: dict) -> dict:
    document = yaml.safe_load(yaml.safe_dump(BASE))
    document.update({key: {**document[key], **value} for key, value in change.items()})
    return document


@pytest.mark.parametrize("case", CASES)
def test_validate_refuses_what_the_api_server_refuses(case, make_namespace, swiftops, kube_tools, tmp_path, request):
    change, path, message = CASES[case]
    document = manifest_of(change)
    manifest_file = swiftops.write(yaml.safe_dump(document))
    validated = swiftops("validate", "-f", str(manifest_file))
    assert validated.returncode == 2, validated.stdout
    assert path in validated.stderr and message in validated.stderr, validated.stderr
    applied = swiftops("apply", "-f", str(manifest_file), "--target", "kubernetes")
    assert applied.returncode == 2 and "helm" not in applied.stderr  # refused before helm or the cluster ran

    # Bypass swiftops' checks (the model's types only) and let the real API server judge the chart's objects.
    env = dict(os.environ)
    if case == "service-name-starts-with-a-digit":
        judge = request.getfixturevalue("emulated_cluster")
        namespace = f"names-{uuid.uuid4().hex[:8]}"
        judge.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": namespace}})
        env["KUBECONFIG"] = str(judge.kubeconfig)
    else:
        namespace = make_namespace("baseline").name
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(render_helm_values(Manifest.model_validate(document))))
    result = subprocess.run([kube_tools["helm"], "install", document["metadata"]["name"], "helm/swiftops",
                             "--namespace", namespace, "--values", str(values)], env=env,
                            capture_output=True, text=True, cwd=str(swiftops.repo_root), timeout=120)
    assert result.returncode != 0, "the API server accepted what swiftops validate refuses"
    assert "Invalid value" in result.stderr or "is invalid" in result.stderr, result.stderr
