"""`swiftops infer --val_dataset`: every file shape, result rows, failures, and resume after a killed run."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import time

GENERATION = ("--max_new_tokens", "6", "--temperature", "0")


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_every_file_shape_in_one_run(tiny_model_dir, tmp_path, run_swiftops):
    write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "Own system."}, {"role": "user", "content": "q2"}]},
    ])
    (tmp_path / "qa.json").write_text(json.dumps([
        {"query": "and then?", "response": "the end", "history": [["first?", "first!"]], "system": "Row system."},
        {"query": "no label"},
    ]), encoding="utf-8")
    with (tmp_path / "alpaca.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerow({"instruction": "Translate", "input": "Good morning", "output": "Guten Morgen"})
        writer.writerow({"instruction": "Count to three", "input": "", "output": "1 2 3"})

    done = run_swiftops("infer", "--model", tiny_model_dir, *GENERATION, "--val_dataset", "chat.jsonl", "qa.json",
                        "alpaca.csv", "--result_path", "out.jsonl", "--logprobs", "--top_logprobs", "2",
                        "--system", "Default system.", "--stream", "true", "--max_batch_size", "2")
    assert done.returncode == 0, done.stderr
    # --stream true: each sample's query, labels and response as it finishes, as ms-swift prints them
    assert "[QUERY] Translate\nGood morning\n[LABELS] Guten Morgen\n[RESPONSE] " in done.stdout
    assert done.stdout.count("[QUERY] ") == 6
    assert "result_path: out.jsonl" in done.stdout and '"num_samples": 6' in done.stdout

    rows = {r["id"]: r for r in read_rows(tmp_path / "out.jsonl")}
    assert set(rows) == {"chat.jsonl#0", "chat.jsonl#1", "qa.json#0", "qa.json#1", "alpaca.csv#0", "alpaca.csv#1"}
    default_system = {"role": "system", "content": "Default system."}
    assert rows["chat.jsonl#0"]["messages"] == [default_system, {"role": "user", "content": "hi"}]
    assert rows["chat.jsonl#0"]["labels"] == "hello"
    assert rows["chat.jsonl#1"]["messages"][0] == {"role": "system", "content": "Own system."}
    assert rows["chat.jsonl#1"]["labels"] is None
    assert rows["qa.json#0"]["messages"] == [
        {"role": "system", "content": "Row system."}, {"role": "user", "content": "first?"},
        {"role": "assistant", "content": "first!"}, {"role": "user", "content": "and then?"}]
    assert rows["qa.json#0"]["labels"] == "the end"
    assert rows["alpaca.csv#0"]["messages"][-1] == {"role": "user", "content": "Translate\nGood morning"}
    assert rows["alpaca.csv#0"]["labels"] == "Guten Morgen"
    assert rows["alpaca.csv#1"]["messages"][-1] == {"role": "user", "content": "Count to three"}
    for row in rows.values():
        assert isinstance(row["response"], str) and row["response"]
        assert "label" not in row  # ms-swift's field name only
        assert len(row["logprobs"]) == row["usage"]["completion_tokens"] == 6
        assert all(len(item["top_logprobs"]) == 2 and item["logprob"] <= 0 for item in row["logprobs"])


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tiny_model_dir, tmp_path, swiftops_process):
    write_jsonl(tmp_path / "forty.jsonl",
                [{"messages": [{"role": "user", "content": f"question {i}: tell me a story"}]} for i in range(40)])
    result = tmp_path / "results.jsonl"
    prefix, env = swiftops_process
    argv = [*prefix, "infer", "--model", str(tiny_model_dir), "--val_dataset", "forty.jsonl", "--max_batch_size", "2",
            "--max_new_tokens", "64", "--temperature", "0", "--result_path", str(result)]

    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if result.exists() and result.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
    written = result.read_bytes().count(b"\n")
    assert 3 <= written < 40
    with result.open("a", encoding="utf-8") as f:
        f.write('{"id": "forty.jsonl#39", "response": "torn wri')  # what a kill inside a write leaves

    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"40 rows: {written} already in the result file, {40 - written} to run" in second.stdout

    text = result.read_text(encoding="utf-8")
    assert text.endswith("\n")
    ids = [json.loads(line)["id"] for line in text.splitlines()]  # every line is whole JSON
    assert sorted(ids) == sorted(f"forty.jsonl#{i}" for i in range(40))  # each row exactly once

    third = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "0 to run" in third.stdout
    assert result.read_text(encoding="utf-8") == text


def test_a_failing_row_is_reported_and_skipped(tiny_model_dir, tmp_path, run_swiftops):
    write_jsonl(tmp_path / "data.jsonl", [
        {"query": "short one"},
        {"query": "long " * 400},
        {"query": "short two"},
    ])
    done = run_swiftops("infer", "--model", tiny_model_dir, *GENERATION, "--max_model_len", "96",
                        "--val_dataset", "data.jsonl")
    assert done.returncode == 1
    assert "data.jsonl line 2 failed" in done.stderr and "Traceback" not in done.stderr
    (result,) = (tmp_path / "results").glob(f"{tiny_model_dir.name}-*.jsonl")  # the default result path
    assert f"result_path: results/{result.name}" in done.stdout
    assert sorted(r["id"] for r in read_rows(result)) == ["data.jsonl#0", "data.jsonl#2"]


def test_a_result_file_with_the_old_label_field_resumes(tiny_model_dir, tmp_path, swiftops_cli):
    write_jsonl(tmp_path / "data.jsonl", [{"query": "one", "response": "1"}, {"query": "two", "response": "2"}])
    # written by a release that named the field `label`: row 0 is done
    write_jsonl(tmp_path / "out.jsonl", [{"id": "data.jsonl#0", "messages": [{"role": "user", "content": "one"}],
                                         "response": "x", "label": "1", "finish_reason": "length"}])
    code, out, err = swiftops_cli("infer", "--model", tiny_model_dir, *GENERATION, "--val_dataset", "data.jsonl",
                                  "--result_path", "out.jsonl")
    assert code == 0, err
    assert "1 already in the result file, 1 to run" in out
    rows = read_rows(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == ["data.jsonl#0", "data.jsonl#1"]
    assert rows[1]["labels"] == "2"


def test_result_rows_keep_the_input_rows_media(tiny_vlm_dir, tmp_path, swiftops_cli):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    write_jsonl(tmp_path / "vqa.jsonl", [{"messages": [{"role": "user", "content": "<image>what colour?"},
                                                       {"role": "assistant", "content": "red"}],
                                          "images": ["red.png"]}])
    code, _, err = swiftops_cli("infer", "--model", tiny_vlm_dir, *GENERATION, "--val_dataset", "vqa.jsonl",
                                "--result_path", "out.jsonl")
    assert code == 0, err
    [row] = read_rows(tmp_path / "out.jsonl")
    assert (row["images"], row["labels"]) == (["red.png"], "red")


def test_cli_takes_hash_n_and_dataset_split(tiny_model_dir, tmp_path, swiftops_cli):
    write_jsonl(tmp_path / "d.jsonl", [{"query": f"q{i}"} for i in range(30)])
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--val_dataset", "d.jsonl#4", "--max_new_tokens",
                                "2", "--result_path", "a.jsonl", "--data_seed", "3")
    assert code == 0, err
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 4
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--dataset", "d.jsonl", "--split_dataset_ratio",
                                "0.1", "--max_new_tokens", "2", "--result_path", "b.jsonl")
    assert code == 0, err
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 3
