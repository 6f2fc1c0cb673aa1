"""The result file: whole lines only, a torn last line repaired on open, ids remembered for resuming."""
from __future__ import annotations

import json
import re

import pytest

from swiftops.dataset.results import ResultWriter, default_result_path
from swiftops.protocol.errors import ConfigError


def test_rows_are_written_as_whole_lines_and_ids_remembered(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    with ResultWriter(str(path)) as writer:
        writer.write({"id": "a#0", "response": "x"})
        assert path.read_text(encoding="utf-8") == '{"id": "a#0", "response": "x"}\n'  # flushed at once
        writer.write({"id": "a#1", "response": "y"})
    assert ResultWriter(str(path)).done_ids == {"a#0", "a#1"}


@pytest.mark.parametrize("torn", ['{"id": "a#2", "resp', '{"id": "a#2"}'])
def test_a_torn_last_line_is_dropped(tmp_path, torn):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a#0"}\n{"id": "a#1"}\n' + torn, encoding="utf-8")
    writer = ResultWriter(str(path))
    assert writer.done_ids == {"a#0", "a#1"}  # even a parseable last line without its newline is unfinished
    writer.write({"id": "a#2"})
    writer.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a#0", "a#1", "a#2"]


def test_a_file_with_only_a_torn_line_starts_empty(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a#0", "re', encoding="utf-8")
    assert ResultWriter(str(path)).done_ids == set()
    assert path.read_text() == ""


def test_a_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a#0"}\nnot json\n{"id": "a#1"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        ResultWriter(str(path))


def test_default_result_path_names_model_and_time():
    assert re.fullmatch(r"results/tiny-\d{8}-\d{6}\.jsonl", default_result_path("/models/tiny/"))
