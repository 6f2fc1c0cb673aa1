"""Merging shard part files (swiftops/dataset/sharding.py) into one result file, in input order.

Every part must be complete: its shard file lists the row ids it owes, and each must be in the part.
A missing or partial part fails the whole merge with a ConfigError (exit 2) that names the shard to re-run,
so a merged file is never silently short. Rows are copied byte for byte, never re-serialised.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from swiftops.dataset.sharding import SHARD_FILE_VERSION, Shard, part_path, shard_file
from swiftops.protocol.errors import ConfigError


@dataclass
class Part:
    """One finished part: its row ids in input order and where each row's line lies in the file."""

    path: Path
    ids: list[str]
    total_rows: int  # rows of the whole (unsharded) input
    spans: dict[str, tuple[int, int]]  # id -> (byte offset, length) of its line


def _index_lines(path: Path) -> dict[str, tuple[int, int]]:
    """id -> span of the first whole line holding it; a torn last line (a killed writer) is ignored."""
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    with path.open("rb") as f:
        for line in f:
            if line.endswith(b"\n") and line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(
                        f"{path}: the line at byte {offset} is not JSON; remove the part and re-run its shard"
                    ) from None
                key = str(row.get("id")) if isinstance(row, dict) else None
                if key is not None and key not in spans:
                    spans[key] = (offset, len(line))
            offset += len(line)
    return spans


def _read_shard_file(part: str, shard: Shard) -> dict:
    path = shard_file(part)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); re-run shard {shard.index}") from None
    if body.get("version") != SHARD_FILE_VERSION or not isinstance(body.get("ids"), list):
        raise ConfigError(f"{path} is not a swiftops shard file; remove it and re-run shard {shard.index}")
    if body.get("num_shards") != shard.count or body.get("shard_index") != shard.index:
        raise ConfigError(
            f"{path} belongs to shard {body.get('shard_index')} of {body.get('num_shards')}, "
            f"not {shard.index} of {shard.count}"
        )
    return body


def load_part(result_path: str, shard: Shard) -> tuple[Part | None, str | None]:
    """(the part, None) when it is complete, else (None, what is wrong with it)."""
    part = part_path(result_path, shard.index, shard.count)
    label = f"part {shard.index} of {shard.count} ({part})"
    if not shard_file(part).exists():
        return None, f"{label} is missing: shard {shard.index} has not started"
    body = _read_shard_file(part, shard)
    ids = [str(i) for i in body["ids"]]
    spans = _index_lines(Path(part)) if Path(part).exists() else {}
    missing = [key for key in ids if key not in spans]
    if missing:
        return None, (
            f"{label} is incomplete: {len(ids) - len(missing)} of {len(ids)} rows "
            f"(first missing: {missing[0]}); shard {shard.index} was stopped or some rows failed"
        )
    strays = spans.keys() - set(ids)
    if strays:
        return None, (
            f"{label} holds {len(strays)} rows that are not in its shard (e.g. {sorted(strays)[0]}): "
            f"it comes from a run over other datasets; remove it and its {shard_file(part).name}"
        )
    return Part(Path(part), ids, int(body["total_rows"]), spans), None


def _check_sizes(parts: list[Part]) -> None:
    """Strided shards of the same rows: shard k holds ceil((total - k) / count) of them."""
    totals = {part.total_rows for part in parts}
    if len(totals) != 1:
        raise ConfigError(
            f"the parts come from runs over different datasets ({sorted(totals)} rows); "
            f"remove the stale parts and re-run their shards"
        )
    total, count = totals.pop(), len(parts)
    for index, part in enumerate(parts):
        if len(part.ids) != len(range(index, total, count)):
            raise ConfigError(
                f"{part.path} lists {len(part.ids)} rows but shard {index} of {count} over "
                f"{total} rows has {len(range(index, total, count))}; re-run that shard"
            )


def merge_parts(result_path: str, num_shards: int) -> int:
    """Write the parts of `result_path` into it, in input order; returns the number of rows.

    Raises ConfigError naming every missing or incomplete part (and writes nothing) if any is not finished.
    """
    parts: list[Part] = []
    problems: list[str] = []
    for index in range(num_shards):
        shard = Shard(index, num_shards)
        part, problem = load_part(result_path, shard)
        if part is None:
            problems.append(problem or "")
            continue
        parts.append(part)
    if problems:
        raise ConfigError(
            "cannot merge: "
            + "; ".join(problems)
            + ". Re-run those shards with the same --num_shards (they resume), then merge again"
        )
    _check_sizes(parts)
    return _write_interleaved(Path(result_path), parts)


def _write_interleaved(target: Path, parts: list[Part]) -> int:
    """Row j of shard k is input row j * count + k: take one row from each part in turn."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.merging-{os.getpid()}")
    files = [part.path.open("rb") for part in parts]
    written = 0
    try:
        with tmp.open("wb") as out:
            for position in range(max(len(part.ids) for part in parts)):
                for part, source in zip(parts, files, strict=False):
                    if position < len(part.ids):
                        offset, length = part.spans[part.ids[position]]
                        source.seek(offset)
                        out.write(source.read(length))
                        written += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)  # readers see the old file or the whole new one
    finally:
        for source in files:
            source.close()
        tmp.unlink(missing_ok=True)
    return written
