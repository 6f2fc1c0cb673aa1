"""Manifest fields and `swiftops deploy|infer` flags map 1:1, checked both ways: every settings field is
reachable from a manifest path, every manifest field renders to a real flag (or env var, or is for the
cluster only), and a rendered argv parsed by the real CLI options gives back the manifest's values."""
from __future__ import annotations

import json
import typing

import click
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.manifest.yaml_reader import _unwrap, load_text, model_at, split_path
from swiftops.manifest.schema import Manifest
from swiftops.manifest.render import render_entrypoint, value_at
from swiftops.manifest.settings_map import (ALL_SETTINGS, CLUSTER_ONLY_PREFIXES, COMMAND_SETTINGS, ENV_MAPPINGS,
                                            FLAG_MAPPINGS, NOT_IN_MANIFEST, SECRET_SETTINGS, mappings_for,
                                            pending_flags)

def sample_value(info: FieldInfo):
    """A valid value of a field that differs from its default (so that it must render as a flag)."""
    annotation = _unwrap(info.annotation)
    default = info.get_default(call_default_factory=True) if not info.is_required() else None
    bounds = {type(m).__name__: m for m in info.metadata}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return next(a for a in args if a != default)
    if annotation is bool:
        return not default
    if annotation in (int, float):
        low = getattr(bounds.get("Ge"), "ge", getattr(bounds.get("Gt"), "gt", 0))
        high = getattr(bounds.get("Le"), "le", 1000)
        value = min(high, low + (2 if annotation is int else 0.5))
        return value if value != default else (low + 1 if annotation is int else (low + high) / 2)
    if annotation is str:
        return "sample"
    if origin is list:
        return ["first", "second"]
    if origin is dict:
        key = typing.get_args(args[0])[0] if typing.get_origin(args[0]) is typing.Literal else "key"
        return {key: {int: 2, str: "value"}.get(args[1], 1)}
    raise AssertionError(f"no sample for {annotation}")


# Fields whose settings validators check the value (against others, or a range the sample misses): one that passes.
REALISTIC = {"device_map": "auto", "max_memory": {"0": "20GiB", "cpu": "64GiB"}, "max_itl_ratio": 2.0}


def expected_settings(manifest, command: str) -> dict[type, BaseModel]:
    """Each settings model built straight from the manifest values (what the flags must parse back to)."""
    values: dict[type, dict] = {}
    for mapping in mappings_for(command):
        if mapping.settings is not None:
            values.setdefault(mapping.settings, {})[mapping.flag] = value_at(manifest, mapping.path)
    return {settings: settings(**fields) for settings, fields in values.items()}


def full_manifest(kind: str) -> dict:
    """A manifest whose every flag- and env-mapped field of `kind` holds a non-default value."""
    command = "deploy" if kind == "Deployment" else "infer"
    data: dict = {"apiVersion": "swiftops/v1", "kind": kind, "metadata": {"name": "full"},
                  "spec": {"model": {"quantization": {"method": "bnb"}}}}
    paths = [m.path for m in mappings_for(command)] + list(ENV_MAPPINGS)
    for path in paths:
        parts = split_path(path)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = REALISTIC.get(parts[-1], None) or sample_value(model_at(parts[:-1]).model_fields[parts[-1]])
    data["spec"]["model"]["quantization"]["method"] = "bnb"  # a method that renders (checkpoint ones don't)
    if kind == "Deployment":
        data["spec"]["server"]["api_key_secret"] = {"name": "key", "key": "value"}
    return data


FULL_DEPLOYMENT = yaml.safe_dump(full_manifest("Deployment"))
FULL_JOB = yaml.safe_dump(full_manifest("InferenceJob"))


def leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field path of the manifest (nested models are walked; lists and dicts are leaves)."""
    paths = []
    for name, info in model.model_fields.items():
        annotation = _unwrap(info.annotation)
        path = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += leaf_paths(annotation, path + ".")
        else:
            paths.append(path)
    return paths


def test_every_settings_field_is_reachable_from_a_manifest_path():
    mapped = {(m.settings, m.flag) for m in FLAG_MAPPINGS if m.settings is not None}
    unreachable = [f"{settings.__name__}.{name}" for settings in ALL_SETTINGS for name in settings.model_fields
                   if (settings, name) not in mapped and name not in SECRET_SETTINGS and name not in NOT_IN_MANIFEST]
    assert unreachable == []


def test_every_mapping_points_at_a_real_manifest_field():
    for mapping in [*FLAG_MAPPINGS, *({"path": p} for p in ENV_MAPPINGS)]:
        path = mapping.path if hasattr(mapping, "path") else mapping["path"]
        parts = split_path(path)
        holder = model_at(parts[:-1])
        assert holder is not None and parts[-1] in holder.model_fields, path


def test_every_manifest_field_is_a_flag_an_env_var_or_for_the_cluster():
    flagged = {m.path for m in FLAG_MAPPINGS} | set(ENV_MAPPINGS) | {p for p, _ in SECRET_SETTINGS.values()}
    orphans = [path for path in leaf_paths(Manifest)
               if path not in flagged and not path.startswith(CLUSTER_ONLY_PREFIXES)]
    assert orphans == []


def test_each_flag_is_fed_by_one_manifest_path_per_command():
    for command in ("deploy", "infer"):
        flags = [m.flag for m in mappings_for(command)]
        assert len(flags) == len(set(flags)), command


def test_pending_flags_are_exactly_the_mappings_without_a_settings_field():
    settings_fields = {name for settings in ALL_SETTINGS for name in settings.model_fields}
    assert pending_flags() == sorted({m.flag for m in FLAG_MAPPINGS if m.flag not in settings_fields})


def split_flags(argv: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    current = None
    for token in argv:
        if token.startswith("--"):
            current = token[2:]
            assert current not in flags, f"{token} rendered twice"
            flags[current] = []
        else:
            flags[current].append(token)
    return flags


def parse_with_cli_options(command: str, argv: list[str]) -> tuple:
    """Parse argv with the options `swiftops deploy|infer` are built from (swiftops/cli/options.py)."""
    models = COMMAND_SETTINGS[command]
    parsed: dict = {}

    @click.command(cls=SettingsCommand)
    @settings_options(*models)
    def fake(**values):
        parsed.update(values)

    fake.main(args=argv, standalone_mode=False)
    return build_settings(parsed, *models)


@pytest.mark.parametrize("text, command", [(FULL_DEPLOYMENT, "deploy"), (FULL_JOB, "infer")])
def test_rendered_argv_parses_back_to_the_manifest_values(text, command, monkeypatch):
    for name in ("SWIFTOPS_API_KEY", "SWIFTOPS_PORT"):
        monkeypatch.delenv(name, raising=False)
    manifest = load_text(text).manifest
    entry = render_entrypoint(manifest)
    assert entry.argv[:2] == ["swiftops", command]
    flags = split_flags(entry.argv[2:])
    pending = set(pending_flags())
    known = {name for settings in COMMAND_SETTINGS[command] for name in settings.model_fields}
    assert set(flags) <= known | pending, set(flags) - known - pending
    # every non-default manifest field of this command became a flag
    assert {m.flag for m in mappings_for(command)} - set(flags) == set()
    literal_ints = int_literal_flags(command)
    real_argv = [token for flag, values in flags.items() if flag not in pending | literal_ints
                 for token in [f"--{flag}", *values]]
    instances = {type(i): i for i in parse_with_cli_options(command, real_argv)}
    expected_models = expected_settings(manifest, command)
    for mapping in mappings_for(command):
        if mapping.settings is None or mapping.flag in literal_ints:
            continue
        got = getattr(instances[mapping.settings], mapping.flag)
        # the settings' own validators normalise (a max_memory mapping becomes JSON text)
        expected = getattr(expected_models[mapping.settings], mapping.flag)
        if isinstance(got, str) and got.startswith("{"):
            got, expected = json.loads(got), json.loads(expected)
        assert got == expected, mapping.path
    # the API key comes from the Secret as an env var, never as a flag
    if command == "deploy":
        assert "api_key" not in flags and entry.secret_env["SWIFTOPS_API_KEY"].name == "key"


def int_literal_flags(command: str) -> set[str]:
    """Flags whose settings type is a Literal of ints (quant_bits, quant_policy)."""
    return {name for settings in COMMAND_SETTINGS[command] for name, info in settings.model_fields.items()
            if typing.get_origin(_unwrap(info.annotation)) is typing.Literal
            and all(isinstance(a, int) for a in typing.get_args(_unwrap(info.annotation)))}


@pytest.mark.parametrize("command", ["deploy", "infer"])
def test_int_literal_flags_parse_back(command):
    manifest = load_text(FULL_DEPLOYMENT if command == "deploy" else FULL_JOB).manifest
    flags = split_flags(render_entrypoint(manifest).argv[2:])
    literal_ints = int_literal_flags(command)
    assert literal_ints and literal_ints <= set(flags)
    argv = [token for flag in literal_ints for token in [f"--{flag}", *flags[flag]]]
    instances = {type(i): i for i in parse_with_cli_options(command, argv)}
    for mapping in mappings_for(command):
        if mapping.flag in literal_ints:
            expected = getattr(expected_settings(manifest, command)[mapping.settings], mapping.flag)
            assert getattr(instances[mapping.settings], mapping.flag) == expected


def test_media_limits_become_ms_swift_environment_variables():
    text = """
apiVersion: swiftops/v1
kind: Deployment
metadata: {name: mm}
spec:
  model: {id: m}
  backend: {name: vllm}
  parallelism: {tensor: 2, pipeline: 2}
  multimodal: {max_pixels: 100, min_pixels: 10, video_max_pixels: 50, video_min_pixels: 5, fps: 1.5,
               fps_max_frames: 8, limit_per_prompt: {image: 2, video: 1}}
"""
    entry = render_entrypoint(load_text(text).manifest)
    assert entry.env == {"MAX_PIXELS": "100", "MIN_PIXELS": "10", "VIDEO_MAX_PIXELS": "50", "VIDEO_MIN_PIXELS": "5",
                         "FPS": "1.5", "FPS_MAX_FRAMES": "8"}
    flags = split_flags(entry.argv[2:])
    assert flags["limit_mm_per_prompt"] == ['{"image":2,"video":1}']
    assert flags["tensor_parallel_size"] == ["2"] and flags["pipeline_parallel_size"] == ["2"]


def test_checkpoint_quantization_is_declared_but_not_passed_as_a_flag():
    text = "apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: q}\nspec:\n  model: {id: m, quantization: {method: awq, bits: 4}}\n"
    assert render_entrypoint(load_text(text).manifest).argv == ["swiftops", "deploy", "--model", "m"]
    bnb = text.replace("awq", "bnb")
    assert render_entrypoint(load_text(bnb).manifest).argv[-4:] == ["--quant_method", "bnb", "--quant_bits", "4"]


def test_defaults_render_no_flag():
    entry = render_entrypoint(load_text("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\n"
                                        "spec: {model: {id: m}}\n").manifest)
    assert entry.argv == ["swiftops", "deploy", "--model", "m"]
    assert entry.env == {} and entry.secret_env == {}


def test_sharded_job_takes_its_shard_from_the_completion_index():
    manifest = load_text(FULL_JOB).manifest
    assert "--shard_index" not in render_entrypoint(manifest).argv
    argv = render_entrypoint(manifest, shard_index=2).argv
    assert argv[argv.index("--num_shards") + 1] == "3" and argv[argv.index("--shard_index") + 1] == "2"


def test_list_typing_of_mapped_fields_matches_the_settings():
    # A list/dict settings field must stay a list/dict in the manifest, or the flag could not take it.
    for mapping in FLAG_MAPPINGS:
        if mapping.settings is None:
            continue
        parts = split_path(mapping.path)
        manifest_type = _unwrap(model_at(parts[:-1]).model_fields[parts[-1]].annotation)
        settings_type = _unwrap(mapping.settings.model_fields[mapping.flag].annotation)
        if typing.get_origin(settings_type) in (list, dict):
            assert typing.get_origin(manifest_type) == typing.get_origin(settings_type), mapping.path
