"""`swiftops apply --target kubernetes --wait`: wait until a release's pods really run, and otherwise say why
not in the cluster's own words (FailedScheduling "Insufficient nvidia.com/gpu", FailedCreate from admission,
unbound claims, image pull errors), read with kubectl.

Helm's own --wait only reports a timeout; this reads the Deployment's or Job's status, the release's pods and
the Warning events of its objects, and can roll the release back to its last good revision.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swiftops.manifest.schema import Manifest
from swiftops.protocol.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# Container states that will not fix themselves while we wait.
STUCK_CONTAINER_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
)


class RolloutError(ConfigError):
    """The release was installed but its pods did not become ready: the message names the cluster's reasons."""


def parse_duration(text: str) -> float:
    """Seconds of a Helm/Go-style duration: 90, 90s, 10m, 1h30m."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    match = DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise ConfigError(f"--timeout {text!r} is not a duration; write e.g. 90s, 10m or 1h30m")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def kubectl_binary() -> str:
    candidates = [
        os.environ.get("SWIFTOPS_KUBECTL"),
        shutil.which("kubectl"),
        str(REPO_ROOT / ".tools" / "bin" / "kubectl"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "--wait needs kubectl; install it (or run `python scripts/fetch_helm.py`, which puts it in "
        ".tools/bin) or set SWIFTOPS_KUBECTL to its path"
    )


@dataclass
class Release:
    """The objects `swiftops apply` made of a manifest, read through kubectl."""

    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.metadata.name

    def kubectl(self, *args: str) -> dict[str, Any]:
        namespace = ["--namespace", self.manifest.metadata.namespace] if self.manifest.metadata.namespace else []
        result = subprocess.run(
            [kubectl_binary(), *namespace, *args, "-o", "json"], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return {}
            raise ConfigError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return json.loads(result.stdout or "{}")

    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"

    def pods(self) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.kubectl("get", "pods", "--selector", self.selector()).get("items", [])
            if not pod["metadata"].get("deletionTimestamp")
        ]

    def state(self) -> tuple[bool, str | None]:
        """(ready, terminal failure or None)."""
        if self.manifest.kind == "Deployment":
            return self._deployment_state()
        return self._job_state()

    def _deployment_state(self) -> tuple[bool, str | None]:
        deployment = self.kubectl("get", "deployment", self.name)
        if not deployment:
            return False, None
        spec, status = deployment["spec"], deployment.get("status", {})
        for condition in status.get("conditions", []):
            if condition["type"] == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
                return False, f"deployment {self.name}: {condition.get('message', 'progress deadline exceeded')}"
        wanted = spec.get("replicas", 1)
        ready = (
            status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
            and status.get("updatedReplicas", 0) >= wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) == wanted
        )
        return ready, None

    def jobs(self) -> list[dict[str, Any]]:
        return [
            job
            for job in self.kubectl("get", "jobs", "--selector", self.selector()).get("items", [])
            if not job["metadata"].get("deletionTimestamp")
        ]

    def _job_state(self) -> tuple[bool, str | None]:
        jobs = self.jobs()
        if not jobs:
            return False, None
        job = max(jobs, key=lambda j: j["metadata"]["creationTimestamp"])
        status = job.get("status", {})
        for condition in status.get("conditions", []):
            if condition["type"] == "Complete" and condition["status"] == "True":
                return True, None
            if condition["type"] == "Failed" and condition["status"] == "True":
                return False, f"job {job['metadata']['name']} failed: {condition.get('message') or condition['reason']}"
        completions = job["spec"].get("completions", 1)
        wanted = min(job["spec"].get("parallelism", 1), completions - status.get("succeeded", 0))
        return status.get("ready", 0) + status.get("succeeded", 0) >= max(wanted, 1), None

    def reasons(self) -> list[str]:
        """Why the pods are not running: Warning events of the release's objects and stuck containers."""
        pods = self.pods()
        claims = {
            volume["persistentVolumeClaim"]["claimName"]
            for pod in pods
            for volume in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in volume
        }
        if self.manifest.spec.cache is not None and not self.manifest.spec.cache.existing_claim:
            claims.add(f"{self.name}-cache")  # the chart's claim, even before any pod mounts it
        # The release's own objects only (its label), so another release's events never show up here.
        owners = [
            item["metadata"]["name"]
            for kind in ("replicasets", "jobs")
            for item in self.kubectl("get", kind, "--selector", self.selector()).get("items", [])
        ]
        involved_names = {self.name, *owners, *claims, *(pod["metadata"]["name"] for pod in pods)}
        lines: list[str] = []
        events = sorted(
            self.kubectl("get", "events").get("items", []),
            key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "",
        )
        for event in events:
            involved = event.get("involvedObject", {})
            name = involved.get("name", "")
            if event.get("type") != "Warning" or name not in involved_names:
                continue
            kind = involved.get("kind", "").lower()
            line = f"{event.get('reason')} ({kind}/{name}): {event.get('message', '').strip()}"
            if line not in lines:
                lines.append(line)
        for pod in pods:
            for status in pod.get("status", {}).get("containerStatuses", []):
                waiting = status.get("state", {}).get("waiting") or {}
                if waiting.get("reason") in STUCK_CONTAINER_REASONS:
                    lines.append(f"{waiting['reason']} (pod/{pod['metadata']['name']}): {waiting.get('message', '')}")
        for claim in sorted(claims):
            pvc = self.kubectl("get", "persistentvolumeclaim", claim)
            if not pvc:
                lines.append(f"claim {claim!r} does not exist in the namespace")
            elif pvc.get("status", {}).get("phase") != "Bound":
                lines.append(
                    f"claim {claim!r} is {pvc.get('status', {}).get('phase', 'Pending')} (not bound to a "
                    f"volume): check its storage class and the cluster's provisioner"
                )
        if not lines and not pods:
            lines.append("no pods were created yet")
        elif not lines:
            phases = ", ".join(f"{p['metadata']['name']} {p.get('status', {}).get('phase', '?')}" for p in pods)
            lines.append(f"pods not ready yet: {phases}")
        return lines


def wait_for(
    release: Release, timeout_s: float, *, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
) -> None:
    """Return once the release runs; raise RolloutError naming the cluster's reasons when it does not in time."""
    deadline = clock() + timeout_s
    while True:
        ready, failure = release.state()
        if ready:
            return
        if failure or clock() >= deadline:
            what = failure or f"not ready after {timeout_s:g}s"
            reasons = "\n  ".join(release.reasons())
            raise RolloutError(f"release {release.name!r}: {what}. The cluster says:\n  {reasons}")
        time.sleep(interval_s)
