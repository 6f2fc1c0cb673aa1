"""Mistakes a user can make with `swiftops infer`: one `error: ...` line, exit code 2, no traceback."""
from __future__ import annotations

import pytest


def assert_one_line_error(done, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_path(run_swiftops):
    assert_one_line_error(run_swiftops("infer", "--model", "/no/such/model"),
                          "model path /no/such/model does not exist")


def test_no_model_at_all(run_swiftops):
    assert_one_line_error(run_swiftops("infer"), "no model given", "--model")


def test_unknown_flag_suggests_the_right_one(run_swiftops):
    assert_one_line_error(run_swiftops("infer", "--max_new_token", "5"), "--max_new_token", "--max_new_tokens")


@pytest.mark.parametrize("args, fragments", [
    (("--max_batch_size", "0"), ("--max_batch_size", "greater than or equal to 1")),
    (("--max_batch_size", "many"), ("--max_batch_size", "many")),
    (("--infer_backend", "tgi"), ("--infer_backend", "tgi")),
    (("--top_p", "1.5"), ("--top_p",)),
])
def test_bad_flag_value(run_swiftops, tiny_model_dir, args, fragments):
    assert_one_line_error(run_swiftops("infer", "--model", tiny_model_dir, *args), *fragments)


def test_missing_dataset_file(run_swiftops, tiny_model_dir):
    assert_one_line_error(run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", "nope.jsonl"),
                          "dataset file nope.jsonl does not exist")


def test_bad_dataset_row_names_file_and_line(run_swiftops, tiny_model_dir, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "fine"}\n\n{"query": "broken"\n', encoding="utf-8")
    assert_one_line_error(run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", "bad.jsonl"),
                          "bad.jsonl line 3", "not valid JSON")


def test_row_of_unknown_shape(run_swiftops, tiny_model_dir, tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"question": "what?"}\n', encoding="utf-8")
    assert_one_line_error(run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", "odd.jsonl"),
                          "odd.jsonl line 1", "`messages`", "found keys: question")


def test_debug_shows_the_traceback(run_swiftops):
    done = run_swiftops("--debug", "infer", "--model", "/no/such/model")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_missing_backend_library_says_what_to_install(run_swiftops, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert_one_line_error(run_swiftops("infer", "--model", tiny_model_dir, "--infer_backend", "vllm"),
                          "pip install 'swiftops[vllm]'")
