"""Data-parallel `swiftops infer` on CPU with gloo: torchrun ranks, a killed rank and resume, Indexed-Job shards
plus `swiftops merge-results`; every merged file must equal one process's answers, in input order."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROWS = 20
GENERATION = ["--max_new_tokens", "32", "--temperature", "0", "--max_batch_size", "1"]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dp-data") / "questions.jsonl"
    path.write_text("".join(json.dumps({"query": f"question {i}: " + "tell me more " * (i % 5)}) + "\n"
                            for i in range(ROWS)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process_rows(tiny_model_dir, dataset, tmp_path_factory) -> list[dict]:
    """What one process writes for the dataset (the same code path as `swiftops infer`), in input order."""
    from swiftops.cli.infer import request_config
    from swiftops.dataset.sources import load_datasets
    from swiftops.dataset.sharded_run import run_dataset_mode
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

    result = tmp_path_factory.mktemp("dp-reference") / "one.jsonl"
    generation = GenerationSettings(max_new_tokens=32, temperature=0)
    failed = run_dataset_mode(load_datasets([str(dataset)]), ModelSettings(model=str(tiny_model_dir)),
                              EngineSettings(max_batch_size=4), generation, MediaSettings(), None, str(result),
                              config=request_config(generation, stream=False))
    assert failed == 0
    rows = read_rows(result)
    assert len(rows) == ROWS
    return sorted(rows, key=lambda row: row["index"])  # one process writes rows as they finish


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (torchrun's ranks run in sessions of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_torchrun_ranks_match_one_process_and_resume_after_a_killed_rank(
        tiny_model_dir, dataset, one_process_rows, tmp_path, swiftops_process):
    prefix, env = swiftops_process
    result = tmp_path / "out.jsonl"
    part1 = tmp_path / "out.jsonl.part-00001-of-00002"
    argv = [*prefix, "infer", "--model", str(tiny_model_dir), "--val_dataset", str(dataset), *GENERATION,
            "--result_path", str(result), "--nproc_per_node", "2"]  # re-launches itself under torchrun

    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and first.poll() is None and line_count(part1) < 2:
            time.sleep(0.01)
        ranks = {rank_of(pid): pid for pid in children_of(first.pid)}
        assert 1 in ranks, "rank 1 is not running"
        os.kill(ranks[1], signal.SIGKILL)  # a rank dies mid-run; torchrun stops the other one
        assert first.wait(timeout=60) != 0
    finally:
        for pid in children_of(first.pid):
            os.kill(pid, signal.SIGKILL)
        if first.poll() is None:
            first.kill()
    killed_at = line_count(part1)
    assert 2 <= killed_at < ROWS // 2  # rank 1 owed 10 rows and had written some of them
    assert not result.exists()  # nothing merged from a broken run

    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"rank 1/2 (cpu): 10 rows: {killed_at} already in the result file, {10 - killed_at} to run" \
        in second.stdout
    assert "merged 20 rows from 2 ranks in input order" in second.stdout

    merged = read_rows(result)
    assert [row["id"] for row in merged] == [f"{dataset}#{i}" for i in range(ROWS)]  # input order, no duplicates
    assert merged == one_process_rows  # same greedy answers, usage and messages as one process
    assert [row["index"] % 2 for row in read_rows(part1)] == [1] * 10  # rank 1 answered rows i % 2 == 1


def test_indexed_job_shards_then_merge_results(tiny_model_dir, dataset, one_process_rows, tmp_path,
                                               swiftops_process, run_swiftops):
    prefix, env = swiftops_process
    result = tmp_path / "job.jsonl"
    argv = [*prefix, "infer", "--model", str(tiny_model_dir), "--val_dataset", str(dataset), *GENERATION,
            "--result_path", str(result)]
    # Pod 0 is given its shard by flags; pod 1 by what Kubernetes and the chart set in an Indexed Job.
    pod0 = subprocess.Popen([*argv, "--shard_index", "0", "--num_shards", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pod1 = subprocess.Popen(argv, cwd=tmp_path, env={**env, "JOB_COMPLETION_INDEX": "1", "SWIFTOPS_NUM_SHARDS": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [pod.communicate(timeout=150) for pod in (pod0, pod1)]
    assert [pod0.returncode, pod1.returncode] == [0, 0], [err[-2000:] for _, err in outputs]
    assert f"swiftops merge-results --result_path {result} --num_shards 2" in outputs[1][0]
    assert not result.exists()  # pods write only their parts

    done = run_swiftops("merge-results", "--result_path", result, "--num_shards", "2")
    assert done.returncode == 0, done.stderr
    assert "merged 20 rows from 2 shards in input order" in done.stdout
    assert read_rows(result) == one_process_rows
    merged_text = result.read_text(encoding="utf-8")

    part1 = Path(f"{result}.part-00001-of-00002")
    part1.write_bytes(b"".join(part1.read_bytes().splitlines(keepends=True)[:-3]))  # a pod killed 3 rows short
    short = run_swiftops("merge-results", "--result_path", result, "--num_shards", "2")
    assert short.returncode == 2
    assert short.stderr.startswith(f"error: cannot merge: part 1 of 2 ({part1}) is incomplete: 7 of 10 rows")
    assert "Traceback" not in short.stderr

    part1.unlink()
    Path(f"{part1}.shard.json").unlink()
    missing = run_swiftops("merge-results", "--result_path", result, "--num_shards", "2")
    assert missing.returncode == 2
    assert f"part 1 of 2 ({part1}) is missing: shard 1 has not started" in missing.stderr
    assert result.read_text(encoding="utf-8") == merged_text  # a failed merge leaves the old result alone


def test_bad_shard_settings_fail_before_loading(tiny_model_dir, dataset, run_swiftops):
    out_of_range = run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", dataset,
                                "--shard_index", "2", "--num_shards", "2")
    assert out_of_range.returncode == 2
    assert out_of_range.stderr.strip() == ("error: shard index 2 is out of range for 2 shards; "
                                           "--shard_index must be 0..1")
    no_result_path = run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", dataset, "--num_shards", "2")
    assert no_result_path.returncode == 2
    assert no_result_path.stderr.startswith("error: a sharded run needs --result_path")
    interactive = run_swiftops("infer", "--model", tiny_model_dir, "--nproc_per_node", "2")
    assert interactive.returncode == 2 and "pass --val_dataset" in interactive.stderr
    no_count = run_swiftops("merge-results", "--result_path", "x.jsonl")
    assert no_count.returncode == 2 and "--num_shards" in no_count.stderr
