"""`swiftops validate | render | apply | schema | chart`: the manifest controller. Thin: parse, call swiftops.manifest.

Imports no torch and no engine: `apply` execs `swiftops deploy|infer` (a fresh process) to run a manifest.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import click
import yaml

from swiftops.manifest.chart import (
    chart_dir,
    deployed_revision,
    helm_template,
    helm_undo,
    helm_upgrade_install,
    run_helm,
    upgrade_install_command,
)
from swiftops.manifest.chart_values import values_json_schema
from swiftops.manifest.errors import ManifestError
from swiftops.manifest.render import entrypoint_document, render_docker, render_entrypoint, render_helm_values
from swiftops.manifest.rollout import Release, RolloutError, parse_duration, wait_for
from swiftops.manifest.schema import manifest_json_schema
from swiftops.manifest.validation import load_and_validate
from swiftops.manifest.yaml_reader import LoadedManifest
from swiftops.protocol.errors import ConfigError

TARGETS = ("entrypoint", "docker", "kubernetes", "helm-values")
FILE_OPTION = click.option(
    "-f", "--file", "file", required=True, type=click.Path(dir_okay=False), help="Manifest YAML file."
)
CHART_OPTION = click.option(
    "--chart",
    default=None,
    help="Path of the swiftops Helm chart (default: $SWIFTOPS_CHART, else the chart shipped with swiftops).",
)


def _version() -> str:
    from swiftops import __version__

    return __version__


@click.command("validate")
@click.option(
    "-f",
    "--file",
    "files",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Manifest YAML file; repeat for several.",
)
def validate_command(files: tuple[str, ...]) -> None:
    """Check manifests before anything starts; every problem is reported with its field path and YAML line."""
    issues = []
    for file in files:
        try:
            loaded = load_and_validate(file)
        except ManifestError as exc:
            issues += exc.issues
            continue
        click.echo(f"{file}: valid {loaded.manifest.kind} {loaded.manifest.metadata.name!r}")
    if issues:
        raise ManifestError(issues)


@click.command("render")
@FILE_OPTION
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="entrypoint",
    show_default=True,
    help="entrypoint: the container's command and env; docker: a `docker run` line; kubernetes: the "
    "objects the Helm chart renders; helm-values: values for helm/swiftops.",
)
@CHART_OPTION
@click.option(
    "--api-versions",
    "api_versions",
    multiple=True,
    metavar="GROUP/VERSION/KIND",
    help="kubernetes target: render as for a cluster serving this optional API, e.g. "
    "monitoring.coreos.com/v1/ServiceMonitor (as `helm template --api-versions`); repeat for several.",
)
def render_command(file: str, target: str, chart: str | None, api_versions: tuple[str, ...]) -> None:
    """Print what a manifest runs. Secrets appear only as references, never as values."""
    manifest = load_and_validate(file).manifest
    if target == "entrypoint":
        entry = render_entrypoint(manifest)
        click.echo(f"# {entry.shell}")
        click.echo(yaml.safe_dump(entrypoint_document(entry), sort_keys=False), nl=False)
    elif target == "docker":
        argv = render_docker(manifest, file, _version())
        secrets = render_entrypoint(manifest).secret_env
        for name, ref in secrets.items():
            click.echo(f"# export {name} first (the value of key {ref.key!r} of Secret {ref.name!r})")
        click.echo(shlex.join(argv))
    elif target == "helm-values":
        click.echo(yaml.safe_dump(render_helm_values(manifest), sort_keys=False), nl=False)
    else:
        click.echo(helm_template(manifest, render_helm_values(manifest), chart, api_versions), nl=False)


@click.command("apply")
@FILE_OPTION
@click.option(
    "--target",
    type=click.Choice(("local", "kubernetes")),
    default="local",
    show_default=True,
    help="local: run it here in the foreground (a server, or a job to completion); kubernetes: "
    "helm upgrade --install the release.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would run (the command, or the helm command and values) and exit."
)
@CHART_OPTION
@click.option(
    "--wait",
    is_flag=True,
    help="kubernetes: wait until the Deployment is available or the Job's pods run "
    "(or are done); otherwise exit non-zero with the cluster's reasons "
    "(scheduling, admission, claims, image pulls).",
)
@click.option(
    "--timeout", default="10m", show_default=True, help="kubernetes --wait: how long to wait, e.g. 90s, 10m, 1h30m."
)
@click.option(
    "--rollback-on-failure",
    is_flag=True,
    help="kubernetes --wait: when the release does not become "
    "ready, roll it back to its last deployed revision (or "
    "uninstall a failed first install). Implies --wait.",
)
def apply_command(
    file: str, target: str, dry_run: bool, chart: str | None, wait: bool, timeout: str, rollback_on_failure: bool
) -> None:
    """Run a manifest: here (the same code path as inside the container) or on Kubernetes with Helm."""
    loaded = load_and_validate(file)
    if target == "kubernetes":
        apply_kubernetes(
            loaded,
            dry_run,
            chart,
            wait=wait or rollback_on_failure,
            timeout_s=parse_duration(timeout),
            rollback_on_failure=rollback_on_failure,
        )
    else:
        if wait or rollback_on_failure:
            raise click.UsageError("--wait and --rollback-on-failure apply to --target kubernetes")
        apply_local(loaded, dry_run)


def apply_kubernetes(
    loaded: LoadedManifest,
    dry_run: bool,
    chart: str | None,
    *,
    wait: bool = False,
    timeout_s: float = 600,
    rollback_on_failure: bool = False,
) -> None:
    manifest = loaded.manifest
    values = render_helm_values(manifest)
    if dry_run:
        command = upgrade_install_command(manifest, chart_dir(chart), "VALUES.yaml")
        click.echo(f"# would run: {shlex.join(command)}")
        click.echo("# with VALUES.yaml:")
        click.echo(yaml.safe_dump(values, sort_keys=False), nl=False)
        return
    good_revision = deployed_revision(manifest) if rollback_on_failure else None
    try:
        click.echo(helm_upgrade_install(manifest, values, chart), nl=False)
    except ConfigError as exc:
        if rollback_on_failure:  # e.g. the API server refused an object: helm left the release "failed"
            raise ConfigError(f"{exc.message}\nswiftops apply: {helm_undo(manifest, good_revision)}") from exc
        raise
    name = manifest.metadata.name
    if not wait:
        click.echo(
            f"swiftops apply: release {name!r} submitted; nothing was waited for: its pods may still fail to "
            f"schedule or start (add --wait --timeout 10m to wait and hear why)",
            err=True,
        )
        return
    click.echo(f"swiftops apply: waiting up to {timeout_s:g}s for release {name!r} to run", err=True)
    try:
        wait_for(Release(manifest), timeout_s)
    except RolloutError as exc:
        if rollback_on_failure:
            raise RolloutError(f"{exc.message}\nswiftops apply: {helm_undo(manifest, good_revision)}") from exc
        raise
    what = "available" if manifest.kind == "Deployment" else "running"
    click.echo(f"swiftops apply: release {name!r} is {what}", err=True)


def _shard_index() -> int | None:
    raw = os.environ.get("JOB_COMPLETION_INDEX")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ConfigError(f"JOB_COMPLETION_INDEX={raw!r} is not a shard number")
    return int(raw)


def _executable(argv: list[str]) -> list[str]:
    """`swiftops ...` with this interpreter's swiftops: the console script beside it, else `python -m`."""
    script = Path(sys.executable).parent / argv[0]
    if script.is_file():
        return [str(script), *argv[1:]]
    return [sys.executable, "-m", "swiftops.cli.main", *argv[1:]]


def apply_local(loaded: LoadedManifest, dry_run: bool) -> None:
    entry = render_entrypoint(loaded.manifest, shard_index=_shard_index())
    missing = [name for name in entry.secret_env if name not in os.environ]
    if dry_run:
        for name, value in entry.env.items():
            click.echo(f"{name}={shlex.quote(value)}")
        for name, ref in entry.secret_env.items():
            state = "set" if name in os.environ else "NOT SET"
            click.echo(f"# {name}: from Secret {ref.name!r} key {ref.key!r} ({state} here)")
        click.echo(entry.shell)
        return
    if missing:
        raise ConfigError(
            f"{loaded.file}: the manifest takes {', '.join(missing)} from Kubernetes Secrets; to run "
            f"it here, export {' and '.join(missing)} first"
        )
    job = loaded.manifest.spec.job
    if job is not None and job.shards > 1 and "JOB_COMPLETION_INDEX" not in os.environ:
        click.echo(
            f"swiftops apply: a sharded job runs one shard per process; this runs shard 0 of {job.shards}. "
            f"Run the others with JOB_COMPLETION_INDEX=1..{job.shards - 1}, then `swiftops merge-results "
            f"--result_path {job.result_path or 'RESULT_PATH'} --num_shards {job.shards}`.",
            err=True,
        )
    env = {**os.environ, **entry.env}
    argv = _executable(entry.argv)
    click.echo(f"swiftops apply: {entry.shell}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


@click.command("schema")
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the schema to this file instead of printing it.",
)
@click.option(
    "--chart-values",
    is_flag=True,
    help="The schema of the Helm chart's values (the manifest schema "
    "under `manifest`) instead: helm/swiftops/values.schema.json.",
)
def schema_command(output: str | None, chart_values: bool) -> None:
    """Print the JSON Schema of a manifest (manifests/schema.json) for editors and CI checks."""
    schema = values_json_schema() if chart_values else manifest_json_schema()
    text = json.dumps(schema, indent=2, sort_keys=False) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@click.command("chart")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the chart into (it gets a `swiftops` subfolder): `helm install NAME DIR/swiftops`.",
)
@click.option("--package", "package", is_flag=True, help="Also `helm package` it into DIR/swiftops-VERSION.tgz.")
def chart_command(output: str, package: bool) -> None:
    """Write the Helm chart shipped with swiftops, for plain `helm install` or a chart repository."""
    target = Path(output) / "swiftops"
    if target.exists():
        raise ConfigError(f"{target} exists; remove it or choose another --output")
    shutil.copytree(chart_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    click.echo(str(target))
    if package:
        click.echo(run_helm(["package", str(target), "--destination", output]).strip())
