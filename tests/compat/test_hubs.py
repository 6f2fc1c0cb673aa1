"""ms-swift's hubs (issue 18, items 6 and 7): Hugging Face and ModelScope for models, adapters and datasets,
revisions, `--adapters HUB_ID` alone (its args.json), `datasets` save_to_disk folders, `#N` with --data_seed.

There is no hub here: each test runs swiftops' real hub code path and replaces only the outermost third-party
download call (huggingface_hub.snapshot_download, modelscope's snapshot_download and dataset_snapshot_download,
datasets.load_dataset) with one that returns local files; a contract test checks that each replaced function
really takes the arguments swiftops passes."""
from __future__ import annotations

import inspect
import json
import shutil

import pytest

QUERIES = ["who are you?", "tell me a story", "count to five", "hello", "what is 2+2", "name a colour"]


def write_rows(path, count=len(QUERIES)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"query": q, "response": f"r{i}"}) + "\n"
                            for i, q in enumerate(QUERIES[:count])))
    return path


def results(path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


# ---- contracts: the replaced library calls take what swiftops passes ----------------------------------------

def test_contract_of_the_replaced_hub_calls():
    import datasets
    import huggingface_hub
    import modelscope
    from modelscope.hub.snapshot_download import dataset_snapshot_download

    assert {"path", "name", "split", "streaming"} <= set(inspect.signature(datasets.load_dataset).parameters)
    assert {"repo_id", "revision"} <= set(inspect.signature(huggingface_hub.snapshot_download).parameters)
    assert list(inspect.signature(modelscope.snapshot_download).parameters)[:2] == ["model_id", "revision"]
    assert list(inspect.signature(dataset_snapshot_download).parameters)[0] == "dataset_id"
    # What the fake load_dataset below returns is the real library's streamed type.
    streamed = datasets.Dataset.from_list([{"query": "a"}, {"query": "b"}]).to_iterable_dataset()
    assert isinstance(streamed, datasets.IterableDataset) and [r["query"] for r in streamed] == ["a", "b"]


# ---- datasets --------------------------------------------------------------------------------------------

def test_hugging_face_dataset_id_streams_and_samples_with_data_seed(tiny_model_dir, tmp_path, monkeypatch,
                                                                    swiftops_cli):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        rows = [{"query": q, "response": f"r{i}"} for i, q in enumerate(QUERIES)]
        return datasets.Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    picked = {}
    for seed in ("7", "7", "4"):  # 7 and 4 pick different rows of the six
        out = tmp_path / f"out-{len(picked)}.jsonl"
        code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--val_dataset", "some-org/some-data:zh#3",
                                    "--data_seed", seed, "--max_new_tokens", "2", "--result_path", out)
        assert code == 0, err
        picked[len(picked)] = sorted(results(out))
    assert calls[0] == ("some-org/some-data", "zh", "train", True)  # streamed, the subset passed on
    assert len(picked[0]) == 3 and all(key.startswith("some-org/some-data:zh#") for key in picked[0])
    assert picked[0] == picked[1] != picked[2]  # --data_seed picks the rows


def test_modelscope_dataset_id_with_use_hf_false(tiny_model_dir, tmp_path, monkeypatch, swiftops_cli):
    """`--use_hf false`: modelscope's dataset_snapshot_download fetches the repository; its subset folder is read
    (jsonl and parquet here) like a local one."""
    import pyarrow
    import pyarrow.parquet
    import importlib

    modelscope_snapshots = importlib.import_module("modelscope.hub.snapshot_download")  # the module, not the function

    repo = tmp_path / "ms-cache" / "AI-ModelScope" / "data"
    write_rows(repo / "default" / "train.jsonl", 2)
    write_rows(repo / "small" / "a.jsonl", 3)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist([{"query": "from parquet", "response": "p"}]),
                                repo / "small" / "b.parquet")
    asked = []
    monkeypatch.setattr(modelscope_snapshots, "dataset_snapshot_download",
                        lambda dataset_id, *a, **k: asked.append(dataset_id) or str(repo))
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--use_hf", "false", "--val_dataset",
                                "AI-ModelScope/data:small", "--max_new_tokens", "2", "--result_path", "out.jsonl")
    assert code == 0, err
    rows = results(tmp_path / "out.jsonl")
    assert asked == ["AI-ModelScope/data"] and len(rows) == 4
    assert "from parquet" in {r["messages"][-1]["content"] for r in rows.values()}
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--use_hf", "false", "--val_dataset",
                                "AI-ModelScope/data:large")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: --val_dataset AI-ModelScope/data:large: no subset 'large' in the dataset (its folders: default, "
        "small)")


def test_save_to_disk_folder_with_hash_n(tmp_path):
    """A `datasets` folder (save_to_disk), read through the real library: #N picks with the seed."""
    import datasets

    from swiftops.dataset.sources import load_datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"query": q} for q in QUERIES]).save_to_disk(str(folder))
    every = load_datasets([str(folder)])
    assert [r.messages[-1]["content"] for r in every] == QUERIES
    two = load_datasets([f"{folder}#2"], seed=1)
    assert len(two) == 2 and [r.key for r in two] == [r.key for r in load_datasets([f"{folder}#2"], seed=1)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"query": "t"}]),
                          "validation": datasets.Dataset.from_list([{"query": "v"}])}).save_to_disk(str(tmp_path / "dd"))
    assert [r.messages[-1]["content"] for r in load_datasets([str(tmp_path / "dd")])] == ["v"]


def test_offline_hub_dataset_is_one_line_through_the_cli(run_swiftops, tiny_model_dir):
    """No mock: the real `datasets` library, offline (HF_HUB_OFFLINE=1), fails; the user sees one line, exit 2."""
    done = run_swiftops("infer", "--model", tiny_model_dir, "--val_dataset", "no-such-org/no-such-data#5")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --val_dataset no-such-org/no-such-data: cannot load it "
                                                   "from the hub: ")


def test_hash_n_keeps_only_the_picked_rows_of_a_large_file(tmp_path):
    """`#N` on a large JSONL streams it: memory holds the N picked rows, not the file."""
    import tracemalloc

    from swiftops.dataset.sources import load_datasets

    big = tmp_path / "big.jsonl"
    filler = "x" * 2000
    with big.open("w") as f:
        for i in range(6000):
            f.write(json.dumps({"query": f"q{i} {filler}"}) + "\n")
    size = big.stat().st_size  # ~12 MB
    tracemalloc.start()
    rows = load_datasets([f"{big}#5"], seed=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(rows) == 5 and peak < size / 10, (peak, size)
    assert [r.key for r in rows] == [r.key for r in load_datasets([f"{big}#5"], seed=3)]


# ---- models and adapters ---------------------------------------------------------------------------------

def test_modelscope_model_with_revision(tiny_model_dir, tmp_path, monkeypatch, swiftops_cli):
    import modelscope

    asked = []

    def snapshot_download(model_id, revision=None, **kwargs):
        asked.append((model_id, revision))
        return str(tiny_model_dir)

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    monkeypatch.setenv("USE_HF", "0")  # ms-swift's variable, instead of --use_hf false
    write_rows(tmp_path / "q.jsonl", 2)
    code, _, err = swiftops_cli("infer", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--model_revision", "v1.0",
                                "--val_dataset", "q.jsonl", "--max_new_tokens", "2", "--result_path", "out.jsonl")
    assert code == 0, err
    assert asked == [("Qwen/Qwen2.5-0.5B-Instruct", "v1.0")] and len(results(tmp_path / "out.jsonl")) == 2


@pytest.mark.parametrize("hub", ["huggingface", "modelscope"])
def test_adapter_hub_id_alone_reads_its_args_json(hub, tiny_model_dir, swift_trained_loras, tmp_path, monkeypatch,
                                                   swiftops_cli):
    """`swiftops infer --adapters swift/test_lora` (no --model), as the reference's LoRA command: the adapter is
    fetched, its args.json names the base model and system prompt, and the answers are the adapter's."""
    import huggingface_hub
    import modelscope

    from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig

    snapshot = tmp_path / "snapshot"
    shutil.copytree(swift_trained_loras[0], snapshot)
    asked = []
    fake = lambda repo_id, revision=None, **kwargs: asked.append(repo_id) or str(snapshot)  # noqa: E731
    monkeypatch.setattr(huggingface_hub if hub == "huggingface" else modelscope, "snapshot_download", fake)
    write_rows(tmp_path / "q.jsonl", 2)
    flags = ["--use_hf", "false"] if hub == "modelscope" else []
    code, _, err = swiftops_cli("infer", "--adapters", "swift/test_lora", *flags, "--val_dataset", "q.jsonl",
                                "--max_new_tokens", "8", "--temperature", "0", "--result_path", "out.jsonl")
    assert code == 0, err
    assert asked and set(asked) == {"swift/test_lora"}
    got = [results(tmp_path / "out.jsonl")[f"q.jsonl#{i}"]["response"] for i in range(2)]
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    with PtEngine(str(tiny_model_dir), adapters={"a": swift_trained_loras[0]}) as engine:
        expected = [engine.infer([InferRequest(messages=system + [{"role": "user", "content": q}])],
                                 RequestConfig(max_tokens=8, temperature=0), adapter_request=AdapterRequest("a"))[0]
                    .choices[0].message.content for q in QUERIES[:2]]
    assert got == expected
