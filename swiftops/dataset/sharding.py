"""Splitting dataset rows into shards: one per torchrun rank, one per Kubernetes Indexed Job pod, or both.

Shard k of N takes rows i with i % N == k (strided, so a dataset sorted by length or source still
spreads evenly). It writes `<result_path>.part-0000k-of-0000N` plus a small `<part>.shard.json`
naming the rows it owes in input order; `swiftops merge-results` (swiftops/dataset/merge.py) uses
that file to put rows back in input order and to tell a finished part from a missing or partial one.
Shards nest: a pod's part is the result path that its torchrun ranks shard again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from swiftops.protocol.errors import ConfigError

T = TypeVar("T")

SHARD_FILE_SUFFIX = ".shard.json"
SHARD_FILE_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index {self.index} is out of range for {self.count} shards; "
                f"--shard_index must be 0..{max(self.count - 1, 0)}"
            )

    def select(self, items: Sequence[T]) -> list[T]:
        """The items this shard answers: every count-th one, starting at index."""
        return list(items[self.index :: self.count])

    def part_path(self, result_path: str) -> str:
        return part_path(result_path, self.index, self.count)


def part_path(result_path: str, index: int, count: int) -> str:
    """<result_path>.part-00001-of-00004: sorts by index and names the shard count, so parts of runs with
    different shard counts never mix."""
    return f"{result_path}.part-{index:05d}-of-{count:05d}"


def shard_file(part: str) -> Path:
    return Path(part + SHARD_FILE_SUFFIX)


def write_shard_file(part: str, shard: Shard, ids: list[str], total_rows: int) -> None:
    """Record which row ids this part owes, in input order (written atomically: a reader never sees half)."""
    path = shard_file(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "version": SHARD_FILE_VERSION,
        "shard_index": shard.index,
        "num_shards": shard.count,
        "total_rows": total_rows,
        "ids": ids,
    }
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def job_shard(shard_index: int | None, num_shards: int | None) -> Shard:
    """This pod's shard: --shard_index / --num_shards (or SWIFTOPS_SHARD_INDEX / SWIFTOPS_NUM_SHARDS, read with
    the other settings), else JOB_COMPLETION_INDEX, which Kubernetes sets in each pod of an Indexed Job."""
    count = num_shards or 1
    if shard_index is not None:
        return Shard(shard_index, count)
    completion_index = os.environ.get("JOB_COMPLETION_INDEX")
    if completion_index is None:
        return Shard(0, count)
    if not completion_index.isdigit():
        raise ConfigError(
            f"JOB_COMPLETION_INDEX={completion_index!r} is not a shard number; pass --shard_index explicitly"
        )
    index = int(completion_index)
    if index >= count:
        raise ConfigError(
            f"JOB_COMPLETION_INDEX={index} but --num_shards is {count}; set --num_shards "
            f"(or SWIFTOPS_NUM_SHARDS) to the Job's completions"
        )
    return Shard(index, count)
