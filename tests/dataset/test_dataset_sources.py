"""Dataset rows of every shape become conversations; bad files and rows are errors naming file and line."""
from __future__ import annotations

import json

import pytest

from swiftops.dataset.sources import load_datasets, to_conversation
from swiftops.protocol.errors import ConfigError


def test_messages_final_assistant_turn_becomes_the_label():
    messages, label = to_conversation({"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}], "system": "s"})
    assert messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert label == "a"


def test_sharegpt_conversations():
    messages, label = to_conversation({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert messages == [{"role": "user", "content": "q"}] and label == "a"


def test_query_with_history_and_instruction_shapes():
    messages, label = to_conversation({"query": "q2", "response": "r2", "history": [["q1", "r1"]]})
    assert [m["content"] for m in messages] == ["q1", "r1", "q2"] and label == "r2"
    messages, label = to_conversation({"instruction": "Do", "input": "this", "output": "done"})
    assert messages == [{"role": "user", "content": "Do\nthis"}] and label == "done"


@pytest.mark.parametrize("row, message", [
    ({"text": "x"}, "found keys: text"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
    ({"messages": [{"role": "system", "content": "x"}]}, "end with a user"),
    ({"query": "q", "history": [["only one"]]}, "[query, response] pairs"),
    ([1, 2], "JSON object"),
])
def test_bad_rows(row, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_conversation(row)


def test_keys_are_file_and_row_index_and_csv_cells_hold_json(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"query": "x"}\n\n{"query": "y", "images": "cat.png"}\n', encoding="utf-8")
    (tmp_path / "b.csv").write_text('query,history\nq,"[[""h"", ""r""]]"\n', encoding="utf-8")
    rows = load_datasets([str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv"), f"{tmp_path}/./a.jsonl"])
    assert [r.key for r in rows] == [f"{tmp_path}/a.jsonl#0", f"{tmp_path}/a.jsonl#1", f"{tmp_path}/b.csv#0"]
    assert [r.line for r in rows] == [1, 3, 2]
    assert rows[1].images == ["cat.png"]
    assert [m["content"] for m in rows[2].messages] == ["h", "r", "q"]
    request = rows[0].to_request(system="sys")
    assert request.messages[0] == {"role": "system", "content": "sys"}


@pytest.mark.parametrize("name, content, message", [
    ("rows.json", '{"query": "x"}', "must be a list"),
    ("rows.json", '[{"query": "x"},\n {"oops": 1}]', "rows.json row 2"),
    ("rows.json", '[{"query": "x"},\n {"query": ]', "rows.json line 2"),
    ("rows.csv", "instruction,output\n,only output\n", "rows.csv line 2"),
    ("rows.txt", "hello", "unknown format .txt"),
    ("rows.jsonl", "\n", "has no rows"),
])
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_datasets([str(tmp_path / name)])


def test_hub_dataset_ids_are_not_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a hub id goes to the hub (`datasets`), not to a missing local file; offline here, so one line says why
    with pytest.raises(ConfigError, match="--val_dataset AI-ModelScope/alpaca-gpt4-data-zh: (hub datasets need "
                                          "`pip install datasets`|cannot load it from the hub)"):
        load_datasets(["AI-ModelScope/alpaca-gpt4-data-zh"])


def test_demo_dataset_loads():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.jsonl"
    rows = load_datasets([str(demo)])
    assert len(rows) == 8
    assert sum(r.label is not None for r in rows) == 7
    assert json.loads(demo.read_text(encoding="utf-8").splitlines()[0])
