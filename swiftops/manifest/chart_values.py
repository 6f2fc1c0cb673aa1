"""JSON Schema of the Helm chart's values (helm/swiftops/values.schema.json): the chart's own
operations knobs plus the whole manifest schema under `manifest`, so `helm install` rejects a bad
manifest with the same rules as `swiftops validate` (minus the checks that need Python).

Regenerate with `swiftops schema --chart-values -o helm/swiftops/values.schema.json`; a test fails when stale.
"""

from __future__ import annotations

from typing import Any

from swiftops.manifest.schema import manifest_json_schema


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "additionalProperties": False, "properties": properties}


def _integer(description: str, minimum: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "description": description}


FREE_OBJECT = {"type": "object"}

CHART_PROPERTIES: dict[str, Any] = {
    "image": _object(
        {"pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"], "description": "Image pull policy."}},
        "Pulling the container image (which image: resolved.image, from the manifest's spec.image or backend).",
    ),
    "imagePullSecrets": {"type": "array", "items": FREE_OBJECT, "description": "Secrets for a private registry."},
    "service": _object(
        {
            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"], "description": "Service type."},
            "port": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 65535,
                "description": "Service port (default: the server's port).",
            },
            "annotations": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Annotations of the Service.",
            },
        },
        "The server's Service.",
    ),
    "probes": _object(
        {
            name: _object({key: _integer(key, 1) for key in keys}, f"{name} probe")
            for name, keys in (
                ("startup", ("periodSeconds", "failureThreshold")),
                ("readiness", ("periodSeconds", "failureThreshold")),
                ("liveness", ("periodSeconds", "failureThreshold", "timeoutSeconds")),
            )
        },
        "Startup (/health, long enough for a model load), readiness (/ready) and liveness (/health) probes.",
    ),
    "preStopSleepSeconds": _integer("Seconds slept in preStop before SIGTERM."),
    "terminationGraceExtraSeconds": _integer("Seconds added to preStop sleep + shutdown_timeout for the grace period."),
    "strategy": {"type": "object", "description": "Deployment strategy (empty: derived from the cache's access mode)."},
    "podSecurityContext": {"type": "object", "description": "Pod security context."},
    "securityContext": {"type": "object", "description": "Container security context."},
    "podAnnotations": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Extra annotations of the pods.",
    },
    "job": _object(
        {
            "ttlSecondsAfterFinished": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Seconds a finished Job is kept.",
            },
        },
        "Job settings beyond the manifest.",
    ),
    "serviceMonitor": _object(
        {
            "enabled": {"type": "boolean", "description": "Create a Prometheus Operator ServiceMonitor."},
            "interval": {"type": "string", "description": "Scrape interval."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra labels."},
        },
        "Prometheus scraping of /metrics.",
    ),
    "autoscaling": _object(
        {
            "enabled": {"type": "boolean", "description": "Create a HorizontalPodAutoscaler."},
            "minReplicas": _integer("Fewest server pods (0 only with KEDA).", 0),
            "maxReplicas": _integer("Most server pods.", 1),
            "metrics": {"type": "array", "items": FREE_OBJECT, "description": "autoscaling/v2 metrics."},
            "keda": _object(
                {
                    "serverAddress": {"type": "string", "description": "Prometheus server KEDA queries."},
                    "threshold": {"type": "string", "description": "Waiting requests per pod."},
                },
                "Scale on the queue with a KEDA ScaledObject (where keda.sh/v1alpha1 is served) instead of an HPA.",
            ),
        },
        "Horizontal autoscaling of the server.",
    ),
    "podDisruptionBudget": _object(
        {
            "enabled": {"type": "boolean", "description": "Create a PodDisruptionBudget."},
            "maxUnavailable": {"type": ["integer", "string"], "description": "Pods that may be down at once."},
        },
        "Voluntary-disruption budget of the server.",
    ),
}


# The values swiftops derives from a manifest (swiftops.manifest.render.resolved_values); the chart reads them
# and computes none of them itself.
RESOLVED = _object(
    {
        "gpuCount": _integer(
            "GPUs per pod: spec.resources.gpu.count, else tensor x pipeline x data (x nproc_per_node)."
        ),
        "shmSize": {
            "type": ["string", "null"],
            "description": "Size of /dev/shm: spec.resources.shm, else 8Gi when more than one process of the pod "
            "talks over NCCL, else null (the runtime's).",
        },
        "image": {
            "type": "string",
            "description": "Container image: spec.image, else <repository>:<version>-<backend>.",
        },
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "The server's port."},
        "cachePath": {"type": "string", "description": "Where the model cache is mounted."},
        "shutdownTimeoutSeconds": _integer("The server's drain timeout on SIGTERM (spec.server.shutdown_timeout)."),
    },
    "Derived from the manifest by swiftops (swiftops render --target helm-values writes them with it).",
)
RESOLVED["required"] = list(RESOLVED["properties"])


def values_json_schema() -> dict[str, Any]:
    manifest = manifest_json_schema()
    definitions = manifest.pop("$defs", {})
    for key in ("$schema", "$id"):
        manifest.pop(key, None)
    definitions["Manifest"] = manifest
    definitions["Resolved"] = RESOLVED
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Values of the swiftops Helm chart",
        "type": "object",
        "properties": {
            "manifest": {
                "anyOf": [{"$ref": "#/$defs/Manifest"}, {"type": "object", "maxProperties": 0}],
                "description": "The swiftops manifest to run (swiftops render --target helm-values); "
                "empty: defaultManifest.",
            },
            "defaultManifest": {
                "$ref": "#/$defs/Manifest",
                "description": "What runs when manifest is empty (a plain helm install).",
            },
            "resolved": {
                "anyOf": [{"$ref": "#/$defs/Resolved"}, {"type": "object", "maxProperties": 0}],
                "description": "Values swiftops derives from `manifest` (swiftops render --target helm-values); "
                "required with a manifest, empty with none.",
            },
            "defaultResolved": {
                "$ref": "#/$defs/Resolved",
                "description": "The resolved values of defaultManifest.",
            },
            **CHART_PROPERTIES,
        },
        "additionalProperties": False,
        "$defs": definitions,
    }
