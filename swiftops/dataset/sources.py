"""Reading `--val_dataset` datasets into conversations, the way ms-swift names them: `NAME_OR_PATH[:subset][#N]`.

Sources: a local JSONL, JSON, CSV or parquet file (JSONL, CSV and parquet are read row by row, never whole), a
folder of such files, a `datasets` save_to_disk folder, or a hub dataset id: Hugging Face through `datasets`
(streamed), or ModelScope with --use_hf false (its repository's files through modelscope's
dataset_snapshot_download; a subset is the folder of that name).
`#N` keeps N rows picked at random with a seeded generator (--data_seed) in one pass that holds only the picked
rows, in file order, so a re-run picks the same rows and resumes. Shapes (ms-swift's): `messages` (OpenAI list; a
final assistant turn is the label), `conversations` (ShareGPT's from/value), `query`/`response` (+ `history`
[[q, r], ...]), `instruction`/`input`/`output`, each with an optional `system`, `images`/`videos`/`audios` and
`tools`. A bad file or row raises ConfigError naming the file and line, before any weights load.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftops.protocol.errors import ConfigError
from swiftops.protocol.request import InferRequest

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = {"system", "user", "assistant", "tool"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}


@dataclass
class DatasetRow:
    """One conversation to answer, and where it came from (its key makes resuming possible)."""

    source: str = field(metadata={"description": "The dataset file as given on the command line."})
    index: int = field(metadata={"description": "0-based index of the row within its file."})
    line: int = field(metadata={"description": "1-based line of the row (JSONL, CSV) or its array position (JSON)."})
    messages: list[dict[str, Any]] = field(metadata={"description": "The conversation sent to the model."})
    label: str | None = field(default=None, metadata={"description": "The removed final assistant turn."})
    images: list[Any] = field(default_factory=list, metadata={"description": "Media for <image> tags."})
    videos: list[Any] = field(default_factory=list, metadata={"description": "Media for <video> tags."})
    audios: list[Any] = field(default_factory=list, metadata={"description": "Media for <audio> tags."})
    tools: list[dict[str, Any]] | None = field(default=None, metadata={"description": "OpenAI tool definitions."})

    @property
    def key(self) -> str:
        """Stable id of the row in the result file: file + row index."""
        return f"{self.source}#{self.index}"

    def with_system(self, system: str | None) -> list[dict[str, Any]]:
        """The messages, with `system` prepended when the row has no system turn of its own."""
        if system and not any(m.get("role") == "system" for m in self.messages):
            return [{"role": "system", "content": system}, *self.messages]
        return list(self.messages)

    def whole_conversation(self, system: str | None = None) -> list[dict[str, Any]]:
        """The messages with the label put back as the final assistant turn: what a reward model scores."""
        messages = self.with_system(system)
        if self.label is not None:
            messages.append({"role": "assistant", "content": self.label})
        return messages

    def to_request(self, system: str | None = None, *, whole: bool = False) -> InferRequest:
        """The request to answer; `whole`: with the final assistant turn (reward and classifier models score it)."""
        messages = self.whole_conversation(system) if whole else self.with_system(system)
        return InferRequest(
            messages=messages, images=self.images, videos=self.videos, audios=self.audios, tools=self.tools
        )


# ---- row shapes -----------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _maybe_json(value: Any) -> Any:
    """CSV cells hold nested values (history, messages) as JSON text."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"message {i} needs a role of {sorted(ROLES)} (got {message!r:.80})")
        if message.get("content") is None and not message.get("tool_calls"):
            raise ValueError(f"message {i} ({message['role']}) has no content")
    return [dict(m) for m in messages]


def _from_sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise ValueError("`conversations` must be a list of {from, value} objects")
    messages = []
    for i, turn in enumerate(turns):
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        if role is None:
            raise ValueError(f"conversation turn {i} needs `from` of {sorted(SHAREGPT_ROLES)}")
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def _from_query(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    messages = []
    for pair in _as_list(_maybe_json(row.get("history"))):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError("`history` must be a list of [query, response] pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": str(row["query"])})
    return messages, _text_or_none(row.get("response"))


def _from_instruction(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    extra = _text_or_none(row.get("input"))
    content = f"{row['instruction']}\n{extra}" if extra else str(row["instruction"])
    return [{"role": "user", "content": content}], _text_or_none(row.get("output"))


def _text_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def to_conversation(row: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A dataset row -> (messages ending in a user turn, label or None). ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, not {type(row).__name__}")
    label: str | None = None
    if row.get("messages") not in (None, ""):
        messages = _check_messages(_maybe_json(row["messages"]))
    elif row.get("conversations") not in (None, ""):
        messages = _check_messages(_from_sharegpt(_maybe_json(row["conversations"])))
    elif row.get("query") not in (None, ""):
        messages, label = _from_query(row)
    elif row.get("instruction") not in (None, ""):
        messages, label = _from_instruction(row)
    else:
        raise ValueError(
            f"a row needs `messages`, `conversations`, `query` or `instruction` "
            f"(found keys: {', '.join(map(str, row)) or 'none'})"
        )
    if messages[-1]["role"] == "assistant" and label is None:
        label = _text_or_none(messages.pop()["content"])
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise ValueError("the conversation must end with a user (or tool) turn to answer")
    system = _text_or_none(row.get("system"))
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, label


# ---- files ----------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) of a file; line is what error messages name."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_no, text in enumerate(f, 1):
                if text.strip():
                    try:
                        yield line_no, json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(
                            f"{path} line {line_no}: not valid JSON ({exc.msg}); "
                            f"each line of a .jsonl file must be one JSON object"
                        ) from None
                    except RecursionError:
                        raise ConfigError(
                            f"{path} line {line_no}: JSON nested too deeply; a row is an object "
                            f"of messages, not thousands of nested lists"
                        ) from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ConfigError(f"{path}: JSON nested too deeply; a dataset is a list of row objects") from None
        if not isinstance(data, list):
            raise ConfigError(
                f"{path}: a .json dataset must be a list of row objects (use .jsonl for one object per line)"
            )
        yield from enumerate(data, 1)
    elif suffix == ".parquet":  # hub dataset repos (ModelScope's, Hugging Face's) ship parquet: read batch by batch
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise ConfigError(f"{path}: parquet files need `pip install pyarrow` (it comes with `datasets`)") from None
        index = 0
        for batch in parquet.ParquetFile(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                index += 1
                yield index, record
    else:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    yield reader.line_num, {k: v for k, v in row.items() if k is not None}
            except csv.Error as exc:
                raise ConfigError(f"{path} line {reader.line_num}: bad CSV ({exc})") from None


def _safe(records: Iterator[tuple[int, Any]], source: str) -> Iterator[tuple[int, Any]]:
    """The records, with decoding failures said in one line."""
    while True:
        try:
            item = next(records)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"dataset file {source} is not UTF-8 text (byte {exc.start} of a line is not); "
                f"--val_dataset takes .jsonl, .json or .csv text files"
            ) from None
        yield item


def pick(records: Iterator[tuple[int, Any]], count: int, seed: int) -> list[tuple[int, int, Any]]:
    """(index, line, record) of `count` records chosen at random with a seeded generator, in input order: one pass
    holding only the chosen records (reservoir sampling), so `#N` on a large file or a streamed hub dataset never
    keeps the rest."""
    rng = random.Random(seed)
    chosen: list[tuple[int, int, Any]] = []
    for index, (line, record) in enumerate(records):
        if index < count:
            chosen.append((index, line, record))
        else:
            slot = rng.randint(0, index)
            if slot < count:
                chosen[slot] = (index, line, record)
    return sorted(chosen, key=lambda item: item[0])


def _rows(
    source: str, records: Iterator[tuple[int, Any]], where: str, *, count: int | None = None, seed: int = 42
) -> list[DatasetRow]:
    """Rows of `records` (all, or `count` picked at random); a bad row fails with its file and line."""
    records = _safe(records, source)
    indexed = (
        pick(records, count, seed)
        if count is not None
        else ((index, line, record) for index, (line, record) in enumerate(records))
    )
    rows: list[DatasetRow] = []
    for index, line, record in indexed:
        try:
            messages, label = to_conversation(record)
        except ValueError as exc:
            raise ConfigError(f"{source} {where} {line}: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{source} {where} {line}: nested too deeply") from None
        rows.append(
            DatasetRow(
                source=source,
                index=index,
                line=line,
                messages=messages,
                label=label,
                images=_as_list(_maybe_json(record.get("images"))),
                videos=_as_list(_maybe_json(record.get("videos"))),
                audios=_as_list(_maybe_json(record.get("audios"))),
                tools=_maybe_json(record.get("tools")) or None,
            )
        )
    if not rows:
        raise ConfigError(f"dataset {source} has no rows")
    return rows


def load_dataset(source: str, count: int | None = None, seed: int = 42) -> list[DatasetRow]:
    """The rows of one local file (`count`: that many, picked at random while the file streams by)."""
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"dataset file {source} {what}; --val_dataset takes local .jsonl, .json or .csv files")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(
            f"dataset file {source}: unknown format {path.suffix or '(no suffix)'}; use .jsonl, .json or .csv"
        )
    where = "row" if path.suffix.lower() in (".json", ".parquet") else "line"
    return _rows(os.path.normpath(source), _records(path), where, count=count, seed=seed)


# ---- ms-swift's dataset names ---------------------------------------------------------------------

_SPEC = re.compile(r"^(?P<name>.+?)(?::(?P<subset>[^:/#]+))?(?:#(?P<count>\d+))?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class DatasetSpec:
    """`NAME_OR_PATH[:subset][#N]` taken apart."""

    name: str
    subset: str | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        if Path(text).expanduser().exists():  # a local path is taken whole, even with ':' or '#' in it
            return cls(text)
        match = _SPEC.match(text)
        if match is None:
            return cls(text)
        count = match.group("count")
        name = match.group("name")
        if match.group("subset") and Path(f"{name}:{match.group('subset')}").expanduser().exists():
            return cls(f"{name}:{match.group('subset')}", None, int(count) if count else None)
        return cls(name, match.group("subset"), int(count) if count else None)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _streamed(data: Any, label: str) -> Iterator[tuple[int, Any]]:
    """A streamed hub dataset's rows; a network failure half-way is one line, not the library's trace."""
    try:
        yield from enumerate(data, 1)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--val_dataset {label}: reading it from the hub failed: {_one_line(exc)}") from None


def _hugging_face_rows(spec: DatasetSpec, label: str, seed: int) -> list[DatasetRow]:
    """A Hugging Face dataset's train split, streamed (`streaming=True`): rows are read as they come, and `#N`
    keeps only the N it picks."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"--val_dataset {label}: Hugging Face datasets need `pip install datasets`; or pass a "
            f"local .jsonl/.json/.csv file"
        ) from None
    try:
        data = datasets.load_dataset(spec.name, spec.subset, split="train", streaming=True)
    except Exception as exc:
        raise ConfigError(f"--val_dataset {label}: cannot load it from the hub: {_one_line(exc)}") from None
    return _rows(label, _streamed(data, label), "row", count=spec.count, seed=seed)


def _modelscope_rows(spec: DatasetSpec, label: str, seed: int) -> list[DatasetRow]:
    """A ModelScope dataset (`--use_hf false`): its repository's data files, downloaded with modelscope's
    dataset_snapshot_download and read like a local folder (a subset is the sub-folder of that name)."""
    try:
        from modelscope.hub.snapshot_download import dataset_snapshot_download
    except ImportError:
        raise ConfigError(
            f"--val_dataset {label}: --use_hf false (or USE_HF=0) loads datasets from ModelScope, "
            f"which needs `pip install modelscope`; or drop it to use Hugging Face"
        ) from None
    try:
        folder = Path(dataset_snapshot_download(spec.name))
    except Exception as exc:
        raise ConfigError(f"--val_dataset {label}: cannot load it from ModelScope: {_one_line(exc)}") from None
    if spec.subset:
        if not (folder / spec.subset).is_dir():
            found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise ConfigError(
                f"--val_dataset {label}: no subset {spec.subset!r} in the dataset (its folders: "
                f"{', '.join(found) or 'none'})"
            )
        folder = folder / spec.subset
    return _folder_rows(label, folder, spec.count, seed)


def _saved_rows(source: str, path: Path, count: int | None, seed: int) -> list[DatasetRow]:
    """A `datasets` save_to_disk folder (memory-mapped Arrow: rows are read one by one)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"--val_dataset {source} is a `datasets` save_to_disk folder, which needs `pip install datasets`"
        ) from None
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        data = (
            data["validation"]
            if "validation" in data
            else data["train"]
            if "train" in data
            else next(iter(data.values()))
        )
    return _rows(os.path.normpath(source), enumerate(data, 1), "row", count=count, seed=seed)


def _folder_rows(source: str, path: Path, count: int | None = None, seed: int = 42) -> list[DatasetRow]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _saved_rows(source, path, count, seed)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ConfigError(f"dataset folder {source} holds no .jsonl, .json, .csv or .parquet files")
    rows: list[DatasetRow] = []
    for file in files:
        rows += load_dataset(str(file))
    return sample_rows(rows, count, seed) if count is not None else rows


def sample_rows(rows: list[DatasetRow], count: int, seed: int) -> list[DatasetRow]:
    """`count` rows picked at random (a seeded generator: the same run picks the same rows), in input order."""
    if count >= len(rows):
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[i] for i in picked]


def load_spec(text: str, *, seed: int = 42, use_hf: bool = True) -> list[DatasetRow]:
    """The rows one `--val_dataset` item names (`#N`: N of them, picked with `seed`)."""
    spec = DatasetSpec.parse(text)
    path = Path(spec.name).expanduser()
    if path.is_dir():
        return _folder_rows(spec.name, path, spec.count, seed)
    if path.exists() or not _HUB_ID.match(spec.name):
        return load_dataset(spec.name, spec.count, seed)
    label = spec.name + (f":{spec.subset}" if spec.subset else "")
    return _hugging_face_rows(spec, label, seed) if use_hf else _modelscope_rows(spec, label, seed)


def load_datasets(
    sources: list[str], *, seed: int = 42, sample: int | None = None, use_hf: bool = True
) -> list[DatasetRow]:
    """All rows of all datasets, in order; the same dataset given twice (however spelled) is read once.
    `sample`: keep that many of them at random (--val_dataset_sample)."""
    rows: list[DatasetRow] = []
    for source in dict.fromkeys(os.path.normpath(s) for s in sources):
        rows += load_spec(source, seed=seed, use_hf=use_hf)
    return sample_rows(rows, sample, seed) if sample is not None else rows


def held_out_rows(sources: list[str], ratio: float, *, seed: int = 42, use_hf: bool = True) -> list[DatasetRow]:
    """`--dataset` with `--split_dataset_ratio`: the held-out share of the rows (at least one), as swift infer
    answers when no --val_dataset is given."""
    rows = load_datasets(sources, seed=seed, use_hf=use_hf)
    return sample_rows(rows, max(1, round(len(rows) * ratio)), seed)
