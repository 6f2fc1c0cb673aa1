"""Declarative manifests: pydantic models, YAML loading with line numbers, validation, and rendering to
an entrypoint, a `docker run` line and Helm values. Imports no torch and no engine."""

from swiftops.manifest.errors import ManifestError, ManifestIssue
from swiftops.manifest.render import Entrypoint, render_docker, render_entrypoint, render_helm_values
from swiftops.manifest.schema import API_VERSION, Manifest, manifest_json_schema
from swiftops.manifest.validation import load_and_validate, validate
from swiftops.manifest.yaml_reader import LoadedManifest, load_manifest, load_text

__all__ = [
    "API_VERSION",
    "Entrypoint",
    "LoadedManifest",
    "Manifest",
    "ManifestError",
    "ManifestIssue",
    "load_and_validate",
    "load_manifest",
    "load_text",
    "manifest_json_schema",
    "render_docker",
    "render_entrypoint",
    "render_helm_values",
    "validate",
]
