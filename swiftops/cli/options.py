"""Click options generated from the settings models (swiftops/protocol/settings.py), the one source of truth.

    @click.command(cls=SettingsCommand)          # ms-swift style `--adapters a b c` needs this class
    @settings_options(ModelSettings, EngineSettings)
    def command(**values):
        model, engine = build_settings(values, ModelSettings, EngineSettings)

Every field becomes `--field_name` (ms-swift's spelling, the one --help shows) and `--field-name`; help comes from the
field's description. Bools take `--stream`, `--stream true` or `--stream false`; list fields take
several values after one flag or a repeated flag; dict fields take `name=value` items or JSON.
`--config FILE.yaml` reads a flat YAML of field names. Precedence: config file < SWIFTOPS_<FIELD>
environment variables < flags given on the command line (only flags actually given count).
A field's other names (its `validation_alias` choices: ms-swift's vllm_*/lmdeploy_* spellings and the like) work
as flags, variables and config keys too; ms-swift flags swiftops does not take are refused with their reason
(settings.REFUSED_SETTINGS) instead of click's "No such option".
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

import click
from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import BACKEND_VALUE_ALIASES, BEHAVIOUR_VALUES, REFUSED_SETTINGS, REFUSED_VALUES

ENV_PREFIX = "SWIFTOPS_"
CONFIG_PARAM = "config"

# How a field is spelled on the command line: the kind of value decides the click option.
FieldKind = Literal["bool", "list", "dict", "scalar"]


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_kind(field: FieldInfo) -> FieldKind:
    annotation = _unwrap_optional(field.annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool"
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return "list"
    if origin is dict or annotation is dict:
        return "dict"
    return "scalar"


class LiteralChoice(click.Choice):
    """A choice among a Literal's values that hands back the value itself (4, not "4").

    `passed_on` values (other names of a value, refused values) go to the settings model as text, which maps them
    or refuses them with a reason; --help lists only the real choices."""

    def __init__(self, values: tuple[Any, ...], passed_on: tuple[str, ...] = ()) -> None:
        self.values = {str(v): v for v in values}
        self.passed_on = set(passed_on)
        super().__init__(list(self.values))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if str(value) in self.passed_on:
            return str(value)
        return self.values[super().convert(str(value), param, ctx)]


# Field -> values it takes besides its Literal's own (mapped or refused by the settings model).
_VALUE_ALIASES: dict[str, tuple[str, ...]] = {
    "infer_backend": (*BACKEND_VALUE_ALIASES, *REFUSED_VALUES["infer_backend"]),
}


def _click_type(name: str, field: FieldInfo) -> click.ParamType:
    annotation = _unwrap_optional(field.annotation)
    if typing.get_origin(annotation) is Literal:
        return LiteralChoice(typing.get_args(annotation), _VALUE_ALIASES.get(name, ()))
    scalar_types: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT}
    return scalar_types.get(annotation, click.STRING)


def field_aliases(name: str, field: FieldInfo) -> list[str]:
    """The field's other names (ms-swift's spellings), from its validation_alias."""
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
    return [c for c in choices if isinstance(c, str) and c != name]


def _fields(models: tuple[type[BaseModel], ...]) -> dict[str, FieldInfo]:
    """Field name -> field over all models; a name in several models (result_path) is one option."""
    fields: dict[str, FieldInfo] = {}
    for model in models:
        for name, field in model.model_fields.items():
            fields.setdefault(name, field)
    return fields


class SettingsOption(click.Option):
    """An option whose --help line shows only ms-swift's underscore spelling (the dash one works too)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        all_opts = self.opts
        self.opts = all_opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = all_opts


def flag_name(name: str) -> str:
    return f"--{name}"


def _option_for(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    spellings = []
    for spelling in [name, *field_aliases(name, field)]:
        spellings.append(flag_name(spelling))
        if "_" in spelling:
            spellings.append(flag_name(spelling.replace("_", "-")))
    help_text = field.description or ""
    if field_aliases(name, field):
        help_text += " Also: " + ", ".join(flag_name(a) for a in field_aliases(name, field)) + "."
    kind = field_kind(field)
    if kind == "bool":
        # `--stream` alone means true; `--stream true|false` as ms-swift writes it.
        return click.option(
            *spellings,
            name,
            cls=SettingsOption,
            type=click.BOOL,
            is_flag=False,
            flag_value="true",
            default=None,
            metavar="[true|false]",
            help=help_text,
        )
    if kind in ("list", "dict"):
        metavar = "NAME=VALUE..." if kind == "dict" else "VALUE..."
        return click.option(
            *spellings,
            name,
            cls=SettingsOption,
            multiple=True,
            default=None,
            metavar=metavar,
            help=help_text + (" JSON accepted." if kind == "dict" else ""),
        )
    return click.option(
        *spellings, name, cls=SettingsOption, type=_click_type(name, field), default=None, help=help_text
    )


def settings_options(*models: type[BaseModel]) -> Callable[[Any], Any]:
    """Decorator adding one option per field of `models`, plus `--config FILE.yaml`."""
    fields = _fields(models)

    def decorate(f: Any) -> Any:
        for name in reversed(list(fields)):  # click prepends options: reverse keeps the fields' order in --help
            f = _option_for(name, fields[name])(f)
        f = click.option(
            f"--{CONFIG_PARAM}",
            CONFIG_PARAM,
            type=click.Path(dir_okay=False),
            default=None,
            help="YAML file of settings (field names, dash or underscore); flags override it.",
        )(f)
        return f

    return decorate


class SettingsCommand(click.Command):
    """A click command whose multi-value options take several values after one flag, as ms-swift's do.

    `--adapters a b --stream` becomes `--adapters a --adapters b --stream` before click parses it.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = self.drop_behaviour_values(args)
        self.refuse_unsupported(args)
        return super().parse_args(ctx, self.spread_multi_values(args))

    @staticmethod
    def drop_behaviour_values(args: list[str]) -> list[str]:
        """`--truncation_strategy delete` (or `=delete`) asks for what swiftops does: taken, and dropped here."""
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                return out + args[i:]
            flag, eq, inline = arg.partition("=")
            wanted = BEHAVIOUR_VALUES.get(flag.lstrip("-").replace("-", "_")) if flag.startswith("--") else None
            if wanted is not None and eq and inline == wanted:
                i += 1
                continue
            if wanted is not None and not eq and i + 1 < len(args) and args[i + 1] == wanted:
                i += 2
                continue
            out.append(arg)
            i += 1
        return out

    def refuse_unsupported(self, args: list[str]) -> None:
        """An ms-swift flag swiftops does not take fails with its reason, not click's "No such option"."""
        known = {opt for p in self.params if isinstance(p, click.Option) for opt in p.opts}
        for arg in args:
            if arg == "--":
                return
            flag = arg.partition("=")[0]
            name = flag.lstrip("-").replace("-", "_")
            if arg.startswith("--") and flag not in known and name in REFUSED_SETTINGS:
                raise ConfigError(f"{flag_name(name)} is not supported: {REFUSED_SETTINGS[name]}")

    def spread_multi_values(self, args: list[str]) -> list[str]:
        multi_flags = {opt for p in self.params if isinstance(p, click.Option) and p.multiple for opt in p.opts}
        out: list[str] = []
        current: str | None = None  # the multi-value flag whose values are being read
        taken = 0  # values read after it so far
        for arg in args:
            if arg == "--" or (arg.startswith("-") and len(arg) > 1):
                flag, eq, _ = arg.partition("=")
                current = flag if flag in multi_flags and not eq and arg != "--" else None
                taken = 0
                out.append(arg)
            elif current is not None and taken > 0:
                out.extend([current, arg])  # a further value of the same multi-value flag
            else:
                taken += 1
                out.append(arg)
        return out


# ---- building the settings ---------------------------------------------------------------------


def _known_field_names() -> set[str]:
    """Every field of every settings model: a config key among them that this command lacks is not a typo."""
    from swiftops.protocol import settings

    names: set[str] = set()
    for value in vars(settings).values():
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
            for name, field in value.model_fields.items():
                names.update([name, *field_aliases(name, field)])
    return names


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_config_file(path: str, fields: dict[str, FieldInfo]) -> dict[str, Any]:
    """A flat YAML mapping of field names (dash or underscore spelling) -> values."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML file to --config")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of setting names to values, not a {type(data).__name__}"
        )
    known = _known_field_names()
    other_names = {alias: name for name, field in fields.items() for alias in field_aliases(name, field)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = other_names.get(name, name)
        if name in fields:
            values[name] = value
        elif BEHAVIOUR_VALUES.get(name) == value:
            continue  # what swiftops does anyway (ms-swift's default, written out)
        elif name in REFUSED_SETTINGS:
            raise ConfigError(f"config file {path}: {key!r} is not supported: {REFUSED_SETTINGS[name]}")
        elif name not in known:
            raise ConfigError(f"config file {path}: unknown setting {key!r}{_suggest(name, sorted(fields))}")
    return values


def _split_env_value(raw: str, kind: FieldKind) -> Any:
    """An environment variable's text as the field wants it: JSON, or shell-like words for list fields."""
    stripped = raw.strip()
    if kind in ("list", "dict") and stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    if kind in ("list", "dict"):
        return shlex.split(raw)
    return raw


def read_environment(fields: dict[str, FieldInfo]) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for name, field in fields.items():
        for spelling in [*reversed(field_aliases(name, field)), name]:  # the field's own name wins
            env_name = ENV_PREFIX + spelling.upper()
            if env_name in os.environ:
                values[name] = (_split_env_value(os.environ[env_name], field_kind(field)), env_name)
    return values


def _cli_value(name: str, value: Any, kind: FieldKind) -> Any:
    """A value click parsed -> what the settings model accepts; dict fields take JSON objects or name=value."""
    if kind != "dict":
        return list(value) if kind == "list" else value
    items: list[str] = []
    mapping: dict[str, Any] = {}
    for item in value:
        if item.lstrip().startswith("{"):
            try:
                parsed = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{flag_name(name)}: {item!r} is not valid JSON ({exc.msg}); give name=value items or a JSON object"
                ) from None
            mapping.update(parsed)
        else:
            items.append(item)
    if not items:
        return mapping
    return items + [f"{k}={v}" for k, v in mapping.items()]


def _explain(exc: ValidationError, sources: dict[str, str]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    source = sources.get(name, flag_name(name))
    value = error.get("input")
    shown = "" if isinstance(value, (dict, BaseModel)) else f" (got {value!r})"
    message = error["msg"].removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{source}: {message}{shown}{more}"


def build_settings(values: dict[str, Any], *models: type[BaseModel]) -> tuple:
    """One instance per model from click's values, the --config file and SWIFTOPS_* variables.

    Precedence: config file < environment < CLI flags. A bad value raises ConfigError naming its flag.
    """
    fields = _fields(models)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_path = values.get(CONFIG_PARAM)
    if config_path:
        for name, value in read_config_file(config_path, fields).items():
            merged[name], sources[name] = value, f"{flag_name(name)} (from {config_path})"
    for name, (value, env_name) in read_environment(fields).items():
        merged[name], sources[name] = value, f"{flag_name(name)} (from {env_name})"
    for name, field in fields.items():
        value = values.get(name)
        if value is None or (isinstance(value, tuple) and not value):
            continue  # not given on the command line
        merged[name], sources[name] = _cli_value(name, value, field_kind(field)), flag_name(name)
    instances = []
    for model in models:
        data = {name: merged[name] for name in model.model_fields if name in merged}
        try:
            instances.append(model(**data))
        except ValidationError as exc:
            raise ConfigError(_explain(exc, sources)) from None
    return tuple(instances)
