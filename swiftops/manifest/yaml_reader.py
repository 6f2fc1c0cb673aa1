"""Read a manifest YAML file into a `Manifest`, keeping the line of every field path so that every
error can say where it is. Unknown keys get a did-you-mean; all problems are reported at once."""

from __future__ import annotations

import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from swiftops.manifest.errors import ManifestError, ManifestIssue
from swiftops.manifest.schema import ENV_NESTED_DELIMITER, ENV_PREFIX, NAME_PATTERN, QUANTITY_PATTERN, Manifest

PathKey = tuple[str | int, ...]


@dataclass
class LoadedManifest:
    """A validated manifest plus where each of its fields was written."""

    file: str
    manifest: Manifest
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: str | PathKey) -> int | None:
        return line_of(self.lines, split_path(path) if isinstance(path, str) else path)

    def issue(self, path: str, message: str) -> ManifestIssue:
        return ManifestIssue(self.file, path, self.line_of(path), message, env_origin(split_path(path)))


def split_path(path: str) -> PathKey:
    return tuple(int(part) if part.isdigit() else part for part in path.split(".") if part)


def join_path(path: PathKey) -> str:
    return ".".join(str(part) for part in path)


def line_of(lines: dict[PathKey, int], path: PathKey) -> int | None:
    """Line of `path`, or of its nearest ancestor written in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def env_origin(path: PathKey) -> str | None:
    """The SWIFTOPS_* variable that set `path` (or a parent of it), if any."""
    names = {name.upper() for name in os.environ}
    for end in range(len(path), 0, -1):
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in path[:end]).upper()
        if name in names:
            return f"environment variable {name}"
    prefix = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in path).upper() + ENV_NESTED_DELIMITER
    below = sorted(name for name in names if name.startswith(prefix))
    return f"environment variable {below[0]}" if below else None


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        self.key, self.line = key, line


def collect_lines(node: yaml.Node, path: PathKey = (), lines: dict[PathKey, int] | None = None) -> dict[PathKey, int]:
    """path -> 1-based line of the key (mappings) or the item (sequences); duplicate keys raise."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise _DuplicateKey(join_path(path + (key,)), key_node.start_mark.line + 1)
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            collect_lines(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            collect_lines(item, path + (index,), lines)
    return lines


# A manifest is small and shallow. These bounds refuse a YAML bomb before it is expanded: a 1.3 KB file of
# nested aliases (`a1: [*a0, *a0, ...]`, ...) grew to 5 GB, and 3,000 nested brackets overflowed the stack.
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000  # counted with every alias expanded, as the validators would walk them


def _check_yaml_bounds(file: str, text: str) -> None:
    """Depth from the parser's event stream (iterative, so any depth is safe to measure)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else None
                raise ManifestError(
                    [
                        ManifestIssue(
                            file,
                            "",
                            line,
                            f"nested more than {MAX_YAML_DEPTH} levels deep; a manifest is a shallow mapping",
                        )
                    ]
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expanded_size(file: str, root: yaml.Node) -> None:
    """Nodes counted with aliases expanded, stopping at the budget (so the count itself stays cheap)."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ManifestError(
                [
                    ManifestIssue(
                        file,
                        "",
                        None,
                        f"more than {MAX_YAML_NODES} values once its "
                        f"aliases (*name) are expanded; write the values out "
                        f"or use fewer aliases",
                    )
                ]
            )
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def read_yaml(file: str, text: str) -> tuple[Any, dict[PathKey, int]]:
    try:
        _check_yaml_bounds(file, text)
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        if documents and documents[0] is not None:
            _check_expanded_size(file, documents[0])
        if len(documents) != 1:
            raise ManifestError(
                [
                    ManifestIssue(
                        file, "", None, f"expected one YAML document, found {len(documents)}; put one manifest per file"
                    )
                ]
            )
        lines = collect_lines(documents[0]) if documents[0] is not None else {}
        data = yaml.safe_load(text)
    except _DuplicateKey as exc:
        raise ManifestError([ManifestIssue(file, exc.key, exc.line, "key given twice; keep one")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([ManifestIssue(file, "", line, f"not valid YAML: {problem}")]) from None
    return data, lines


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def model_at(path: PathKey) -> type[BaseModel] | None:
    """The manifest model class that holds the fields at `path` (for did-you-mean suggestions)."""
    current: Any = Manifest
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            info = current.model_fields.get(part)
            if info is None:
                return None
            current = info.annotation
        elif typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


# Keys people write with a secret value in them, and the field that takes a Secret reference instead.
PLAIN_SECRET_KEYS = {
    "api_key": "spec.server.api_key_secret: {name: SECRET, key: KEY}",
    "hf_token": "spec.env: [{name: HF_TOKEN, secret: {name: SECRET, key: KEY}}]",
    "token": "spec.env: [{name: HF_TOKEN, secret: {name: SECRET, key: KEY}}]",
    "password": "spec.env with secret: {name: SECRET, key: KEY}",
}

PATTERN_MESSAGES = {
    NAME_PATTERN: "must be a DNS-1123 label of at most 53 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 8, 500m, 64Gi or 16G",
}


def _clean_loc(loc: tuple) -> PathKey:
    # pydantic adds validator names (`function-after[...]`, `literal[...]`) to locs in unions; drop them.
    return tuple(part for part in loc if isinstance(part, int) or (isinstance(part, str) and "[" not in part))


def explain(error: ErrorDetails) -> str:
    path = _clean_loc(error["loc"])
    if error["type"] == "extra_forbidden" and str(path[-1]).lower() in PLAIN_SECRET_KEYS:
        return (
            f"{path[-1]!r} would put a secret in the manifest in plain text; store it in a Kubernetes "
            f"Secret and name it instead ({PLAIN_SECRET_KEYS[str(path[-1]).lower()]})"
        )
    if error["type"] == "extra_forbidden":
        parent = model_at(path[:-1])
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known keys: {', '.join(known)}" if known else "")
        return f"unknown key {path[-1]!r}{hint}"
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "string_pattern_mismatch":
        friendly = PATTERN_MESSAGES.get(error.get("ctx", {}).get("pattern", ""))
        if friendly:
            return f"{friendly} (got {error.get('input')!r})"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)):
        message += f" (got {value!r})"
    return message


def issues_from(exc: ValidationError, file: str, lines: dict[PathKey, int]) -> list[ManifestIssue]:
    issues = []
    for error in exc.errors():
        path = _clean_loc(error["loc"])
        origin = env_origin(path)
        line = None if origin and path not in lines else line_of(lines, path)
        issues.append(ManifestIssue(file, join_path(path), line, explain(error), origin))
    return sorted(issues, key=lambda issue: (issue.line or 0, issue.path))


def load_text(text: str, file: str = "<manifest>") -> LoadedManifest:
    data, lines = read_yaml(file, text)
    if not isinstance(data, dict):
        raise ManifestError(
            [ManifestIssue(file, "", 1, "a manifest is a mapping with apiVersion, kind, metadata and spec")]
        )
    try:
        manifest = Manifest(**data)
    except ValidationError as exc:
        raise ManifestError(issues_from(exc, file, lines)) from None
    return LoadedManifest(file, manifest, lines)


def load_manifest(path: str | Path) -> LoadedManifest:
    """Parse and type-check a manifest file (schema-level problems); see validation.validate for the rest."""
    file = Path(path)
    if not file.is_file():
        raise ManifestError([ManifestIssue(str(path), "", None, "no such file; pass a manifest YAML with -f")])
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            [
                ManifestIssue(
                    str(path),
                    "",
                    None,
                    f"not UTF-8 text (byte {exc.start} is not); is it the right file? A manifest is a YAML text file",
                )
            ]
        ) from None
    return load_text(text, str(path))
