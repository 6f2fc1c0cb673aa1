"""Values derived from a manifest (GPU count, /dev/shm, image, port, cache path, grace period) are defined once, in
Python, and the Helm chart only reads them: every example, and every way of needing shared memory, rendered both
ways (`docker run` from the Python renderer, `helm template` through the chart with the values the manifest layer
produces) must agree."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from swiftops import __version__
from swiftops.manifest.render import render_docker, render_helm_values, resolved_values
from swiftops.manifest.schema import Manifest
from swiftops.manifest.validation import load_and_validate

from tests.manifest.test_helm import CHART, EXAMPLES, helm, template

CHART_VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def helm_pod(helm_bin: str, manifest: Manifest, tmp_path: Path) -> dict:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(render_helm_values(manifest)))
    documents = template(helm_bin, manifest.metadata.name, values)
    workload = next(doc for doc in documents if doc["kind"] in ("Deployment", "Job"))
    return workload["spec"]["template"]["spec"]


def from_chart(pod: dict, manifest: Manifest) -> dict:
    """The derived values as the chart's pod spec carries them."""
    container = pod["containers"][0]
    dshm = next((v for v in pod["volumes"] if v["name"] == "dshm"), None)
    env = {e["name"]: e.get("value") for e in container["env"]}
    values = {
        "gpus": container["resources"].get("limits", {}).get(manifest.spec.resources.gpu.resource, 0),
        "shm": dshm["emptyDir"]["sizeLimit"] if dshm else None,
        "image": container["image"],
        "cache": next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "cache"),
        "hf_home": env["HF_HOME"],
    }
    if manifest.kind == "Deployment":
        values["port"] = container["ports"][0]["containerPort"]
        values["grace"] = pod["terminationGracePeriodSeconds"]
    return values


def from_docker(argv: list[str], manifest: Manifest) -> dict:
    """The same values as the Python renderer's `docker run` line carries them (docker's units: 8g, not 8Gi)."""
    def after(flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv else None

    hf_home = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("HF_HOME="))
    values = {"gpus": int(after("--gpus") or 0), "shm": after("--shm-size"), "image": argv[-1],
              "cache": hf_home.rsplit("/huggingface", 1)[0], "hf_home": hf_home}
    if manifest.kind == "Deployment":
        values["port"] = int(after("-p").split(":")[1])
    return values


def docker_units(quantity: str | None) -> str | None:
    return quantity.replace("i", "").lower() if quantity else None


def expected(manifest: Manifest) -> dict:
    """What the manifest layer says, from its one definition of each value."""
    resolved = resolved_values(manifest)
    values = {"gpus": resolved["gpuCount"], "shm": resolved["shmSize"], "image": resolved["image"],
              "cache": resolved["cachePath"], "hf_home": f"{resolved['cachePath']}/huggingface"}
    if manifest.kind == "Deployment":
        values["port"] = resolved["port"]
        values["grace"] = (resolved["shutdownTimeoutSeconds"] + CHART_VALUES["preStopSleepSeconds"]
                           + CHART_VALUES["terminationGraceExtraSeconds"])
    return values


def check_both_ways(helm_bin: str, manifest: Manifest, manifest_file: Path, tmp_path: Path) -> dict:
    want = expected(manifest)
    assert from_chart(helm_pod(helm_bin, manifest, tmp_path), manifest) == want
    docker = from_docker(render_docker(manifest, str(manifest_file), __version__), manifest)
    assert docker == {**{k: v for k, v in want.items() if k != "grace"}, "shm": docker_units(want["shm"])}
    return want


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_the_same_values_through_docker_and_the_chart(example, helm_bin, tmp_path):
    manifest = load_and_validate(example).manifest
    check_both_ways(helm_bin, manifest, example, tmp_path)


def manifest_with(kind: str = "Deployment", **spec) -> Manifest:
    body = {"model": {"id": "Qwen/Qwen2.5-7B-Instruct"}, "backend": {"name": "vllm"}, **spec}
    if kind == "InferenceJob":
        body.setdefault("job", {"val_dataset": ["/cache/eval.jsonl"], "result_path": "/cache/out.jsonl"})
    return Manifest.model_validate({"apiVersion": "swiftops/v1", "kind": kind, "metadata": {"name": "m"},
                                    "spec": body})


# More than one process of the pod talking over NCCL needs /dev/shm; one process (even over several GPUs with a
# device_map) does not. The manifest layer, the chart and `docker run` used to disagree on pipeline/data parallel
# and on a job's torchrun processes.
SHM_CASES = {
    "tensor 2": (manifest_with(parallelism={"tensor": 2}), "8Gi"),
    "pipeline 2": (manifest_with(parallelism={"pipeline": 2}), "8Gi"),
    "data 2": (manifest_with(parallelism={"data": 2}), "8Gi"),
    "job, 2 torchrun processes": (manifest_with("InferenceJob", backend={"name": "pt"}, job={
        "val_dataset": ["/cache/eval.jsonl"], "result_path": "/cache/out.jsonl", "nproc_per_node": 2}), "8Gi"),
    "one process over 2 GPUs": (manifest_with(backend={"name": "pt"}, parallelism={"device_map": "auto"},
                                              resources={"gpu": {"count": 2}}), None),
    "one GPU": (manifest_with(), None),
    "declared": (manifest_with(resources={"shm": "2Gi"}), "2Gi"),
}


@pytest.mark.parametrize("case", SHM_CASES, ids=str)
def test_shared_memory_when_several_processes_talk_over_nccl(case, helm_bin, tmp_path):
    manifest, shm = SHM_CASES[case]
    assert manifest.shm_size == shm
    file = tmp_path / "manifest.yaml"
    file.write_text(yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True)))
    assert check_both_ways(helm_bin, manifest, file, tmp_path)["shm"] == shm


def test_the_field_description_states_the_same_rule():
    description = Manifest.model_json_schema()["$defs"]["Resources"]["properties"]["shm"]["description"]
    assert all(word in description for word in ("tensor", "pipeline", "data", "nproc_per_node"))


def test_the_charts_default_resolved_values_are_swiftops_own_for_its_default_manifest():
    default = Manifest.model_validate(CHART_VALUES["defaultManifest"])
    assert CHART_VALUES["defaultResolved"] == resolved_values(default)
    assert CHART_VALUES["resolved"] == {}


def test_a_manifest_without_its_resolved_values_is_refused_with_what_to_run(helm_bin, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"manifest": render_helm_values(manifest_with())["manifest"]}))
    result = helm(helm_bin, "template", "m", str(CHART), "--values", str(values), check=False)
    assert result.returncode != 0
    assert "swiftops render --target helm-values" in result.stderr


def test_the_chart_computes_none_of_the_derived_values():
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    for gone in ('"tensor"', '"shutdown_timeout"', '"mount_path"', '"port" 8000', ".Values.image.repository", "8Gi"):
        assert gone not in helpers
