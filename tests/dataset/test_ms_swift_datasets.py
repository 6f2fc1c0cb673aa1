"""Datasets named the ms-swift way: `NAME_OR_PATH[:subset][#N]`, folders, --val_dataset_sample, --dataset with
--split_dataset_ratio; a hub id that cannot load fails in one line (no hub here: its code path still runs)."""
from __future__ import annotations

import json

import pytest

from swiftops.dataset.sources import DatasetSpec, held_out_rows, load_datasets
from swiftops.protocol.errors import ConfigError


def write_jsonl(path, count: int, start: int = 0) -> str:
    path.write_text("".join(json.dumps({"query": f"q{i}", "response": f"r{i}"}) + "\n"
                            for i in range(start, start + count)), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("text, spec", [
    ("AI-ModelScope/alpaca-gpt4-data-zh#1000", DatasetSpec("AI-ModelScope/alpaca-gpt4-data-zh", None, 1000)),
    ("org/name:subset#5", DatasetSpec("org/name", "subset", 5)),
    ("org/name:subset", DatasetSpec("org/name", "subset", None)),
    ("data.jsonl#3", DatasetSpec("data.jsonl", None, 3)),
])
def test_spec_parsing(text, spec):
    assert DatasetSpec.parse(text) == spec


def test_hash_n_picks_n_rows_seeded_in_file_order(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", 50)
    rows = load_datasets([f"{source}#10"], seed=42)
    again = load_datasets([f"{source}#10"], seed=42)
    other = load_datasets([f"{source}#10"], seed=7)
    assert len(rows) == 10 and [r.key for r in rows] == [r.key for r in again]
    assert [r.key for r in rows] != [r.key for r in other]
    assert [r.index for r in rows] == sorted(r.index for r in rows)
    assert rows[0].key.startswith(f"{source}#")  # keys name the file's own row index: re-runs resume
    assert len(load_datasets([f"{source}#500"])) == 50


def test_val_dataset_sample_over_all_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", 20)
    b = write_jsonl(tmp_path / "b.jsonl", 20, start=20)
    rows = load_datasets([a, b], sample=7, seed=1)
    assert len(rows) == 7 and len({r.key for r in rows}) == 7
    assert [r.key for r in rows] == [r.key for r in load_datasets([a, b], sample=7, seed=1)]
    everything = [r.key for r in load_datasets([a, b])]
    assert [everything.index(r.key) for r in rows] == sorted(everything.index(r.key) for r in rows)


def test_a_folder_of_data_files(tmp_path):
    folder = tmp_path / "my_dataset"
    (folder / "part").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", 3)
    write_jsonl(folder / "part" / "b.jsonl", 2)
    (folder / "README.md").write_text("not data")
    rows = load_datasets([str(folder)])
    assert [r.messages[-1]["content"] for r in rows] == ["q0", "q1", "q2", "q0", "q1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .jsonl"):
        load_datasets([str(tmp_path / "empty")])


def test_dataset_with_split_ratio_answers_the_held_out_share(tmp_path):
    source = write_jsonl(tmp_path / "train.jsonl", 200)
    rows = held_out_rows([source], 0.05, seed=42)
    assert len(rows) == 10
    assert [r.key for r in rows] == [r.key for r in held_out_rows([source], 0.05, seed=42)]


def test_unloadable_hub_dataset_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_datasets(["no-such-org/no-such-dataset#10"])
    assert error.value.message.startswith("--val_dataset no-such-org/no-such-dataset: ")
    assert "\n" not in error.value.message
