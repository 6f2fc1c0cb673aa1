"""What ms-swift users wrote and got a wrong answer from (issue 18, items 1-4): each now gives ms-swift's answer."""
from __future__ import annotations

import json

import pytest
import torch

from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt.classifier import PtClassifierEngine

GREEDY = RequestConfig(max_tokens=8, temperature=0)
PROMPTS = ["who are you?", "tell me a story", "count to five"]


def answers(engine, adapter_request=None) -> list[str]:
    requests = [InferRequest(messages=[{"role": "user", "content": p}]) for p in PROMPTS]
    return [r.choices[0].message.content for r in engine.infer(requests, GREEDY, adapter_request=adapter_request)]


@pytest.fixture(scope="module")
def named_engine(tiny_model_dir, lora_dir):
    """The reference: the adapter selected by name on every request."""
    with PtEngine(str(tiny_model_dir), adapters={"my_lora": lora_dir}) as engine:
        yield engine


# ---- 1. a bare adapter path is applied -------------------------------------------------------------------

def test_list_of_adapter_paths_is_applied_to_every_request(tiny_model_dir, lora_dir, named_engine):
    with_adapter = answers(named_engine, AdapterRequest("my_lora"))
    base = answers(named_engine)
    assert with_adapter != base  # the adapter really changes the answers
    with PtEngine(str(tiny_model_dir), adapters=[lora_dir]) as engine:  # ms-swift's list form
        assert engine.default_adapter == "my_lora"
        assert answers(engine) == with_adapter
        # the served name selects the same (adapted) model, as ms-swift's deploy does
        assert answers(engine, AdapterRequest(engine.model_name)) == with_adapter
        assert engine.infer([InferRequest(messages=[{"role": "user", "content": "hi"}])])[0].model == \
            engine.model_name


def test_a_single_bare_path_string_is_applied(tiny_model_dir, lora_dir, named_engine):
    with PtEngine(str(tiny_model_dir), adapters=lora_dir) as engine:
        assert answers(engine) == answers(named_engine, AdapterRequest("my_lora"))


def test_several_bare_paths_are_refused_with_a_reason(tiny_model_dir, lora_dir, tmp_path):
    from swiftops.protocol import ConfigError

    with pytest.raises(ConfigError, match="several adapters without a name"):
        PtEngine(str(tiny_model_dir), adapters=[lora_dir, str(tmp_path)])


def test_cli_bare_adapters_path_answers_like_the_adapter(tiny_model_dir, lora_dir, named_engine, tmp_path,
                                                         swiftops_cli):
    rows = [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--adapters", lora_dir, "--val_dataset",
                                "data.jsonl", "--max_new_tokens", "8", "--temperature", "0", "--result_path", "out.jsonl")
    assert code == 0, err
    got = {r["id"]: r["response"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert [got[f"data.jsonl#{i}"] for i in range(3)] == answers(named_engine, AdapterRequest("my_lora"))


def test_deploy_applies_a_bare_adapter_to_the_served_name(tiny_model_dir, lora_dir, named_engine):
    import httpx

    from tests.server_process import ServerProcess

    want = answers(named_engine, AdapterRequest("my_lora"))[0]
    with ServerProcess(["--model", str(tiny_model_dir), "--adapters", lora_dir, "--served_model_name", "m"]) as server:
        for model in ("m", "my_lora"):
            reply = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
                "model": model, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 8,
                "temperature": 0})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == want


# ---- 2. reward models --------------------------------------------------------------------------------------

CONVERSATION = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]


def test_pt_engine_on_a_reward_checkpoint_is_a_reward_engine(tiny_reward_dir):
    engine = PtEngine(str(tiny_reward_dir), max_batch_size=2)
    with engine:
        assert isinstance(engine, PtClassifierEngine) and engine.task_type == "reward"
        score = float(engine.infer([InferRequest(messages=CONVERSATION)])[0].choices[0].message.content)
        with PtClassifierEngine(str(tiny_reward_dir), task_type="reward") as direct:
            want = float(direct.infer([InferRequest(messages=CONVERSATION)])[0].choices[0].message.content)
        assert score == pytest.approx(want)


def test_reward_dataset_scores_the_whole_conversation(tiny_reward_dir, tmp_path, swiftops_cli):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    code, _, err = swiftops_cli("infer", "--model", tiny_reward_dir, "--val_dataset", "pairs.jsonl",
                                "--result_path", "scores.jsonl")
    assert code == 0, err
    [row] = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    with PtClassifierEngine(str(tiny_reward_dir)) as engine:
        whole = engine.infer([InferRequest(messages=CONVERSATION)])[0].choices[0].message.content
        without_answer = engine.infer([InferRequest(messages=CONVERSATION[:1])])[0].choices[0].message.content
    assert whole != without_answer
    assert row["response"] == whole
    assert row["messages"][-1] == CONVERSATION[-1]


# ---- 3. ms-swift's Python types ----------------------------------------------------------------------------

def test_torch_dtype_as_a_torch_dtype(tiny_model_dir):
    with PtEngine(str(tiny_model_dir), torch_dtype=torch.bfloat16, max_batch_size=2) as engine:
        assert next(engine.model.parameters()).dtype == torch.bfloat16
        assert engine.infer([InferRequest(messages=[{"role": "user", "content": "hi"}])], GREEDY)[0].choices


def test_adapter_request_takes_positional_name_and_path(tiny_model_dir, lora_dir, named_engine):
    request = AdapterRequest("lora1", lora_dir)
    assert (request.name, request.path) == ("lora1", lora_dir)
    # loaded on first use by its path, under the new name
    assert answers(named_engine, request) == answers(named_engine, AdapterRequest("my_lora"))
    assert "lora1" in named_engine.adapter_names


# ---- 4. an unfetchable hub id ---------------------------------------------------------------------------

def test_unfetchable_hub_id_is_one_line_and_exit_2(run_swiftops, tmp_path):
    """A real child process: what a user sees, traceback or not, is its whole stderr."""
    (tmp_path / "q.jsonl").write_text(json.dumps({"query": "hi"}) + "\n")
    done = run_swiftops("infer", "--model", "no-such-org/no-such-model", "--val_dataset", "q.jsonl",
                        "--result_path", "out.jsonl")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("error: cannot load no-such-org/no-such-model")
    assert "Traceback" not in done.stderr


# ---- 5. --template --------------------------------------------------------------------------------------

def test_template_file_replaces_the_chat_template(tiny_model_dir, tmp_path, swiftops_cli):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}")
    request = InferRequest(messages=[{"role": "user", "content": "hello there"}])
    with PtEngine(str(tiny_model_dir), template=str(template), max_batch_size=1) as engine:
        assert engine.tokenizer.decode(engine.encode(request)) == "<<hello there>>"
    code, _, err = swiftops_cli("infer", "--model", tiny_model_dir, "--template", "qwen2_5", "--val_dataset", "x.jsonl")
    assert code == 2
    assert err.startswith("error: --template qwen2_5: swiftops has no named templates")


# ---- 7. adapters' args.json and the hubs ------------------------------------------------------------------

def test_adapters_dir_alone_finds_its_base_model_in_args_json(tiny_model_dir, lora_dir, named_engine, tmp_path,
                                                              swiftops_cli):
    import shutil

    adapter = tmp_path / "checkpoint-100"
    shutil.copytree(lora_dir, adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {**json.loads((adapter / "adapter_config.json").read_text()), "base_model_name_or_path": "elsewhere/x"}))
    (adapter / "args.json").write_text(json.dumps({"model": str(tiny_model_dir), "system": None}))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"query": p}) + "\n" for p in PROMPTS))
    code, _, err = swiftops_cli("infer", "--adapters", adapter, "--val_dataset", "q.jsonl", "--max_new_tokens", "8",
                                "--temperature", "0", "--result_path", "out.jsonl")
    assert code == 0, err
    got = {r["id"]: r["response"] for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert [got[f"q.jsonl#{i}"] for i in range(3)] == answers(named_engine, AdapterRequest("my_lora"))
    # --load_args false: no model to run
    code, _, err = swiftops_cli("infer", "--adapters", adapter, "--load_args", "false", "--val_dataset", "q.jsonl")
    assert code == 2 and "no model given" in err


def test_modelscope_without_the_package_is_one_line(swiftops_cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modelscope", None)  # a machine without it: `import modelscope` fails
    (tmp_path / "q.jsonl").write_text(json.dumps({"query": "hi"}) + "\n")
    code, _, err = swiftops_cli("infer", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--use_hf", "false",
                                "--val_dataset", "q.jsonl", "--result_path", "out.jsonl")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: --use_hf false (or USE_HF=0) downloads from "
                                                           "ModelScope, which needs `pip install modelscope`")
