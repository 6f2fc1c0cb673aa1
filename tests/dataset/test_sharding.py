"""Shards of dataset rows, their part files, and merging parts back in input order (no model needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from swiftops.dataset.merge import merge_parts
from swiftops.dataset.results import ResultWriter
from swiftops.dataset.sharding import Shard, job_shard, part_path, shard_file, write_shard_file
from swiftops.protocol.errors import ConfigError


def ids(n: int) -> list[str]:
    return [f"data.jsonl#{i}" for i in range(n)]


def write_shards(result: Path, total: int, count: int, *, reverse: bool = True) -> None:
    """Each shard's part written as a run would: rows in completion order (here: reversed), one per line."""
    for index in range(count):
        shard = Shard(index, count)
        mine = shard.select(ids(total))
        part = shard.part_path(str(result))
        write_shard_file(part, shard, mine, total)
        with ResultWriter(part) as writer:
            for key in reversed(mine) if reverse else mine:
                writer.write({"id": key, "response": f"answer to {key}"})


def test_shards_are_strided_disjoint_and_cover_every_row():
    rows = list(range(11))
    shards = [Shard(k, 3).select(rows) for k in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shards, [])) == rows
    assert Shard(4, 5).select([0, 1]) == []  # more shards than rows: some have nothing to do
    with pytest.raises(ConfigError, match="--shard_index must be 0..1"):
        Shard(2, 2)


def test_part_names_sort_by_index_and_name_the_count():
    assert part_path("out/r.jsonl", 3, 12) == "out/r.jsonl.part-00003-of-00012"
    assert str(shard_file("out/r.jsonl.part-00003-of-00012")) == "out/r.jsonl.part-00003-of-00012.shard.json"


def test_job_shard_defaults_from_the_indexed_job(monkeypatch):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert job_shard(None, None) == Shard(0, 1)
    assert job_shard(None, 4) == Shard(0, 4)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert job_shard(None, 4) == Shard(3, 4)
    assert job_shard(1, 4) == Shard(1, 4)  # an explicit flag wins over the pod's index
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX=3 but --num_shards is 1; set --num_shards"):
        job_shard(None, None)


def test_merge_puts_rows_back_in_input_order(tmp_path):
    result = tmp_path / "r.jsonl"
    write_shards(result, total=10, count=3)
    assert merge_parts(str(result), 3) == 10
    merged = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in merged] == ids(10)
    assert merged[4] == {"id": "data.jsonl#4", "response": "answer to data.jsonl#4"}


def test_merge_ignores_a_torn_last_line_and_a_duplicate(tmp_path):
    result = tmp_path / "r.jsonl"
    write_shards(result, total=4, count=2)
    part0 = Path(part_path(str(result), 0, 2))
    with part0.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "data.jsonl#0", "response": "again"}) + "\n")  # the first answer stays
        f.write('{"id": "data.jsonl#2", "resp')  # what a kill inside a write leaves
    assert merge_parts(str(result), 2) == 4
    assert "again" not in result.read_text(encoding="utf-8")


def test_merge_names_every_missing_or_incomplete_part_and_writes_nothing(tmp_path):
    result = tmp_path / "r.jsonl"
    write_shards(result, total=9, count=3)
    part1 = Path(part_path(str(result), 1, 3))
    part1.write_text(part1.read_text(encoding="utf-8").splitlines(keepends=True)[0], encoding="utf-8")
    shard_file(part_path(str(result), 2, 3)).unlink()
    with pytest.raises(ConfigError) as caught:
        merge_parts(str(result), 3)
    message = caught.value.message
    assert f"part 1 of 3 ({part1}) is incomplete: 1 of 3 rows (first missing: data.jsonl#" in message
    assert "part 2 of 3" in message and "is missing: shard 2 has not started" in message
    assert "part 0" not in message
    assert not result.exists()


def test_merge_refuses_parts_of_other_datasets_or_shard_counts(tmp_path):
    result = tmp_path / "r.jsonl"
    write_shards(result, total=6, count=2)
    with pytest.raises(ConfigError, match=r"part 0 of 3 .* is missing"):
        merge_parts(str(result), 3)  # the run was split in 2, not 3

    part0, part1 = part_path(str(result), 0, 2), part_path(str(result), 1, 2)
    write_shard_file(part1, Shard(1, 2), ids(7)[1::2], 7)  # same rows for shard 1, but from a 7-row dataset
    with pytest.raises(ConfigError, match=r"different datasets \(\[6, 7\] rows\)"):
        merge_parts(str(result), 2)

    write_shard_file(part0, Shard(0, 2), ids(4)[0::2], 4)  # shard 0 re-started over 4 rows; row 4 lingers
    with pytest.raises(ConfigError, match="part 0 of 2 .* holds 1 rows that are not in its shard .*data.jsonl#4"):
        merge_parts(str(result), 2)
    assert not result.exists()
