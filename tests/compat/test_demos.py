"""The reference's linked demos (ms-swift's examples/infer and examples/deploy), ported into examples/ with only
their import lines changed, run against tiny local models: model ids become local paths, hub datasets local
files, the fixed port the test server's, and max_tokens=512 a count that fits the tiny models' 512-token context."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(relative: str, replacements: dict[str, str], cwd: Path, media: Optional[dict[str, str]] = None) -> str:
    """Run an example with `replacements` (each must occur) and `media` (URLs -> local stand-ins, where they occur)."""
    code = (EXAMPLES / relative).read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in code, f"{relative} no longer says {old!r}"
        code = code.replace(old, new)
    for old, new in (media or {}).items():
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_demo_py_batch_and_stream(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"写一句话 {i}", "output": "好"} for i in range(8)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = run_example("infer/demo.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir),
                                        "AI-ModelScope/alpaca-gpt4-data-zh#1000": "alpaca.jsonl#5",
                                        "max_tokens=512": "max_tokens=16"}, tmp_path)
    assert "query0: " in out and "response0: " in out
    assert out.count("metric: {") == 2 and "'num_samples': 5" in out
    assert "query: who are you?\nresponse: " in out


def test_openai_chat_client_with_run_deploy(tiny_model_dir, tmp_path):
    out = run_example("deploy/client/llm/chat/openai_client.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir),
                                                                  "max_tokens=512": "max_tokens=16"}, tmp_path)
    assert f"model: {tiny_model_dir.name}" in out
    assert "query: Where is the capital of Zhejiang?\nresponse: " in out
    assert "What delicious food is there?" in out


def test_reward_model_client(tiny_reward_dir, tmp_path):
    from tests.server_process import ServerProcess

    with ServerProcess(["--model", str(tiny_reward_dir)]) as server:
        out = run_example("deploy/reward_model/client.py", {"port=8000": f"port={server.port}"}, tmp_path)
    response = out.split("response: ", 1)[1].strip()
    assert float(response) == float(response)  # a score, as ms-swift's reward deployments answer
    assert f"models: ['{tiny_reward_dir.name}']" in out


def greedy_answer(engine, messages, max_tokens=16, **request):
    from swiftops import InferRequest, RequestConfig

    config = RequestConfig(max_tokens=max_tokens, temperature=0)
    return engine.infer([InferRequest(messages=messages, **request)], config)[0].choices[0].message.content


def printed(out: str, label: str) -> str:
    """The text a demo printed after `label: ` (up to the next demo line)."""
    return out.split(f"{label}: ", 1)[1].split("\n", 1)[0]


def test_demo_lora_py_dynamic_adapters_and_template(tiny_model_dir, swift_trained_loras, tmp_path):
    """demo_lora.py: an engine started without adapters takes AdapterRequest(name, path) per call; get_template's
    default system (from args.json) goes with the adapter calls; the call without one answers as the base model."""
    from swiftops import PtEngine

    lora1, lora2 = swift_trained_loras
    out = run_example("infer/demo_lora.py", {"swift/test_lora2": lora2, "'swift/test_lora'": repr(lora1),
                                             "max_tokens=512": "max_tokens=16"}, tmp_path)
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    user = [{"role": "user", "content": "who are you?"}]
    with PtEngine(str(tiny_model_dir), adapters={"a": lora1, "b": lora2}) as engine:
        from swiftops import AdapterRequest, InferRequest, RequestConfig
        config = RequestConfig(max_tokens=16, temperature=0)

        def answer(messages, adapter=None):
            return engine.infer([InferRequest(messages=messages)], config,
                                adapter_request=AdapterRequest(adapter) if adapter else None)[0].choices[0].message.content
        expected = {"lora1-response": answer(system + user, "a"), "response": answer(user),
                    "lora2-response": answer(system + user, "b")}
    # A reply may hold newlines: compare everything between the labels.
    got = {"lora1-response": out.split("lora1-response: ", 1)[1].split("\nresponse: ", 1)[0],
           "response": out.split("\nresponse: ", 1)[1].split("\nlora2-response: ", 1)[0],
           "lora2-response": out.split("lora2-response: ", 1)[1].rstrip("\n")}
    assert got == expected
    assert len(set(expected.values())) == 3  # the adapters really change the answers


def test_demo_agent_py_tools_and_stop_word(tiny_long_context_dir, tmp_path):
    """demo_agent.py: tools reach the chat template, the agent template's observation keyword is the stop word,
    and the tool turn goes back to the model."""
    from swiftops import PtEngine

    out = run_example("infer/demo_agent.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_long_context_dir),
                                              "max_tokens=512": "max_tokens=24"}, tmp_path)
    assert "query: How's the weather in Beijing today?\nresponse: " in out
    assert out.count("tool_calls: ") == 2 and out.count("tool_response: ") == 2 and out.count("response2: ") == 2
    tools = [{"name": "get_current_weather", "description": "Get the current weather in a given location",
              "parameters": {"type": "object", "properties": {
                  "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}]
    user = [{"role": "user", "content": "How's the weather in Beijing today?"}]
    with PtEngine(str(tiny_long_context_dir)) as engine:
        from swiftops import InferRequest, RequestConfig
        config = RequestConfig(max_tokens=24, temperature=0, stop=["Observation:"])
        with_tools = engine.infer([InferRequest(messages=user, tools=tools)], config)[0].choices[0].message.content
        without = engine.infer([InferRequest(messages=user)], config)[0].choices[0].message.content
    first = out.split("\nresponse: ", 1)[1].split("\ntool_calls: ", 1)[0]
    assert first == with_tools != without  # the tool definitions were in the prompt
    assert "Observation:" not in out.split("tool_response: ")[0]


# ---- the deploy clients (examples/deploy/): a real server on loopback ------------------------------------------

def served_answers(model_dir, adapters: dict, messages, max_tokens=16) -> dict:
    """What each served name answers, from an in-process engine (the reference the clients' output must match)."""
    from swiftops import AdapterRequest, InferRequest, PtEngine, RequestConfig

    config = RequestConfig(max_tokens=max_tokens, temperature=0)
    with PtEngine(str(model_dir), adapters=adapters or None) as engine:
        return {name: engine.infer([InferRequest(messages=messages)], config,
                                   adapter_request=AdapterRequest(name) if name else None)[0].choices[0].message.content
                for name in [None, *adapters]}


def test_lora_client_against_a_multi_lora_deployment(swift_trained_loras, tiny_model_dir, tmp_path):
    """examples/deploy/lora: server.sh's flags (--adapters lora1=A lora2=B, no --model: args.json names it; pt on
    CPU) and client.py's `engine.infer(..., model=models[i])`."""
    from tests.server_process import ServerProcess

    lora1, lora2 = swift_trained_loras
    with ServerProcess(["--adapters", f"lora1={lora1}", f"lora2={lora2}", "--infer_backend", "pt"]) as server:
        out = run_example("deploy/lora/client.py", {"port=8000": f"port={server.port}",
                                                    "max_tokens=512": "max_tokens=16"}, tmp_path)
    assert f"models: ['{tiny_model_dir.name}', 'lora1', 'lora2']" in out
    messages = [{"role": "system", "content": "You are a helpful assistant."},  # args.json's system
                {"role": "user", "content": "who are you?"}]
    expected = served_answers(tiny_model_dir, {"lora1": lora1, "lora2": lora2}, messages)
    got = {"lora1": out.split("lora1-response: ", 1)[1].split("\nresponse: ", 1)[0],
           None: out.split("\nresponse: ", 1)[1].split("\nlora2-response: ", 1)[0],
           "lora2": out.split("lora2-response: ", 1)[1].rstrip("\n")}
    assert got == expected and len(set(got.values())) == 3


def test_bert_client_against_a_classifier_deployment(tiny_bert_dir, tmp_path):
    """examples/deploy/bert/client.py: a sequence-classification deployment answers each text's class index."""
    from swiftops import InferRequest, PtEngine
    from tests.server_process import ServerProcess

    with ServerProcess(["--model", str(tiny_bert_dir), "--served_model_name", "bert-base-chinese",
                        "--infer_backend", "pt", "--max_length", "512"]) as server:
        out = run_example("deploy/bert/client.py", {"port=8000": f"port={server.port}"}, tmp_path)
    assert "models: ['bert-base-chinese']" in out
    with PtEngine(str(tiny_bert_dir)) as engine:
        expected = [r.choices[0].message.content for r in engine.infer(
            [InferRequest(messages=[{"role": "user", "content": text}]) for text in ("今天天气真好呀", "真倒霉")])]
    assert expected[0] in ("0", "1")
    assert f"query0: 今天天气真好呀\nresponse0: {expected[0]}\nquery1: 真倒霉\nresponse1: {expected[1]}" in out


def test_base_model_clients_with_use_chat_template_false(tiny_model_dir, tmp_path):
    """examples/deploy/client/llm/base: run_deploy(DeployArguments(..., use_chat_template=False)); completions and
    chat completions then answer the same text (the demo's "the two calling methods are equivalent")."""
    ids = {"Qwen/Qwen2.5-1.5B": str(tiny_model_dir)}
    out = run_example("deploy/client/llm/base/openai_client.py", ids, tmp_path)
    query = "浙江 -> 杭州\n安徽 -> 合肥\n四川 ->"
    assert f"model: {tiny_model_dir.name}" in out and f"query: {query}" in out
    _, completion, chat = out.split("\nresponse: ")
    chat = chat.removesuffix("\n")
    assert completion and completion == chat
    out = run_example("deploy/client/llm/base/swift_client.py", ids, tmp_path)
    assert f"query0: {query}\nresponse0: {chat}\n" in out


def test_chat_swift_client_on_vllm(tiny_model_dir, tmp_path, vllm_env):
    """examples/deploy/client/llm/chat/swift_client.py as written (infer_backend='vllm'): on CPU the vllm package is
    the contract fake, so the demo runs through VllmEngine, the server and InferClient (batch with metrics,
    streaming); under the gpu marker, the real vLLM."""
    rows = [{"instruction": f"写一句话 {i}", "output": "好"} for i in range(6)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = run_example("deploy/client/llm/chat/swift_client.py", {
        "Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir), "AI-ModelScope/alpaca-gpt4-data-zh#1000": "alpaca.jsonl#4",
        "max_tokens=512": "max_tokens=8"}, tmp_path)
    assert f"models: ['{tiny_model_dir.name}']" in out
    assert "query0: 写一句话" in out and "'num_samples': 4" in out and "query: who are you?\nresponse: " in out
    if vllm_env == "fake":
        assert "response0: Hello there" in out and "query: who are you?\nresponse: Hello there" in out


# ---- multimodal demos ------------------------------------------------------------------------------------------

def latex_ocr_rows(tmp_path, media_files) -> str:
    """A local stand-in for AI-ModelScope/LaTeX_OCR:small (an image and its LaTeX per row)."""
    from tests.compat.conftest import ANIMAL, CAT

    rows = [{"messages": [{"role": "user", "content": "<image>Using LaTeX to perform OCR on the image."},
                          {"role": "assistant", "content": "x^2"}], "images": [media_files[url]]}
            for url in (CAT, ANIMAL, CAT)]
    (tmp_path / "latex.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "latex.jsonl#2"


def test_demo_mllm_py(tiny_vlm_dir, media_files, tmp_path):
    """demo_mllm.py on the pt backend: a dataset of image rows (batch, metrics), then OpenAI-style content parts
    and ms-swift's <image> tags with images= (the demo says the two are equivalent: the same answer)."""
    out = run_example("infer/demo_mllm.py", {
        "Qwen/Qwen2.5-Omni-7B": str(tiny_vlm_dir), "mm_type = 'audio'": "mm_type = 'image'",  # no audio tower
        "AI-ModelScope/LaTeX_OCR:small#1000": latex_ocr_rows(tmp_path, media_files),
        "max_tokens=512": "max_tokens=8"}, tmp_path, media_files)
    assert "query0: <image>Using LaTeX" in out and "'num_samples': 2" in out
    streams = out.split("query: ")[1:]
    assert len(streams) == 2
    # content parts and the <image> form build the same prompt: the same greedy answer
    first, second = (s.split("\nresponse: ", 1)[1].split("\nmetric: ", 1)[0] for s in streams)
    assert first == second


def test_mllm_openai_client(tiny_vlm_dir, media_urls, tmp_path, monkeypatch):
    """examples/deploy/client/mllm/openai_client.py: text, then a video URL in OpenAI content parts, streamed."""
    monkeypatch.setenv("SWIFTOPS_ALLOWED_MEDIA_DOMAINS", "127.0.0.1")  # the local stand-in for the OSS bucket
    out = run_example("deploy/client/mllm/openai_client.py", {
        "Qwen/Qwen2.5-VL-3B-Instruct": str(tiny_vlm_dir), "max_tokens=512": "max_tokens=8",
        "stream=True, temperature=0)": "stream=True, temperature=0, max_tokens=8)"}, tmp_path, media_urls)
    assert f"model: {tiny_vlm_dir.name}" in out and "query: who are you?\nresponse: " in out
    assert "'type': 'video'" in out and out.rstrip("\n").rsplit("response: ", 1)[1].strip()


def test_mllm_swift_client_on_vllm(tiny_vlm_dir, media_files, media_urls, tmp_path, monkeypatch, vllm_env):
    """examples/deploy/client/mllm/swift_client.py as written (infer_backend='vllm'), on CPU against the vllm
    contract fake, as far as it reaches: the image batch runs; its video request then gets the capability table's
    400 (swiftops' vllm backend takes images only; videos run on pt), which the client raises as ms-swift's does.
    Under the gpu marker, the real vLLM gets as far."""
    monkeypatch.setenv("SWIFTOPS_ALLOWED_MEDIA_DOMAINS", "127.0.0.1")
    code = (EXAMPLES / "deploy/client/mllm/swift_client.py").read_text(encoding="utf-8")
    for old, new in {"Qwen/Qwen2.5-VL-3B-Instruct": str(tiny_vlm_dir), "max_tokens=512": "max_tokens=8",
                     "AI-ModelScope/LaTeX_OCR:small#1000": latex_ocr_rows(tmp_path, media_files), **media_urls}.items():
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "response0: " in done.stdout and "'num_samples': 2" in done.stdout
    assert vllm_env == "real" or "response0: Hello there" in done.stdout
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("InferClientError: 400: vllm cannot do video_input: the vllm backend takes "
                                         "images only in this version; run videos on the pt backend")


def test_demo_grounding_py(tiny_vlm_dir, grounding_lora_dir, media_files, tmp_path):
    """demo_grounding.py: the adapter's args.json names the base VLM and norm_bbox; return_details gives the size
    the model saw the image at; the answer is the adapter's; bbox.png is written at that size."""
    from PIL import Image

    from swiftops import InferRequest, PtEngine, RequestConfig, load_image
    from tests.compat.conftest import ANIMAL

    out = run_example("infer/demo_grounding.py", {"swift/test_grounding": str(grounding_lora_dir),
                                                  "max_tokens=512": "max_tokens=16"}, tmp_path, media_files)
    request = InferRequest(messages=[{"role": "user", "content": "Task: Object Detection"}],
                           images=[load_image(media_files[ANIMAL])])
    config = RequestConfig(max_tokens=16, temperature=0, return_details=True)
    with PtEngine(str(tiny_vlm_dir), adapters={"g": str(grounding_lora_dir)}, default_adapter="g") as engine:
        expected = engine.infer([request], config)[0]
    with PtEngine(str(tiny_vlm_dir)) as engine:
        base = engine.infer([request], config)[0].choices[0].message.content
    response = out.split("lora-response: ", 1)[1].split("\noutput_path: ", 1)[0]
    assert response == expected.choices[0].message.content != base
    width, height = expected.images_size[0]
    assert width % 28 == 0 and height % 28 == 0  # Qwen-VL's processor resizes to multiples of 28
    assert "output_path: bbox.png" in out and Image.open(tmp_path / "bbox.png").size == (width, height)


def test_draw_bbox_on_the_norm1000_grid():
    """ms-swift's draw_bbox (demo_grounding.py): [x1, y1, x2, y2] strings on a 0-1000 grid, drawn in place."""
    from PIL import Image

    from swiftops import draw_bbox

    image = Image.new("RGB", (200, 100), "white")
    draw_bbox(image, ["sheep"], [["100", "200", "500", "900"]], norm_bbox="norm1000")
    assert image.getpixel((20, 60)) != (255, 255, 255)  # the left edge: x = 100/1000 * 200
    assert image.getpixel((60, 60)) == (255, 255, 255)  # inside the box: untouched
    assert image.getpixel((150, 60)) == (255, 255, 255)  # right of it
    with pytest.raises(ValueError, match="norm_bbox"):
        draw_bbox(image, ["x"], [[0, 0, 1, 1]], norm_bbox="norm1")


@pytest.mark.parametrize("backend, lib", [
    ("vllm", "fake"), ("lmdeploy", "fake"),
    pytest.param("vllm", "real", marks=pytest.mark.gpu), pytest.param("lmdeploy", "real", marks=pytest.mark.gpu)])
def test_demo_py_engine_selection(backend, lib, tiny_model_dir, tmp_path, monkeypatch):
    """demo.py with `infer_backend = 'vllm'` / `'lmdeploy'`: VllmEngine(model, max_model_len=8192) and
    LmdeployEngine(model) run the same batch and stream; on CPU the libraries are the contract fakes."""
    if lib == "fake":
        fake = Path(__file__).resolve().parents[1] / "engines" / backend / "fake_lib"
        monkeypatch.setenv("PYTHONPATH", f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rows = [{"instruction": f"写一句话 {i}", "output": "好"} for i in range(4)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = run_example("infer/demo.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir),
                                        "infer_backend = 'transformers'": f"infer_backend = {backend!r}",
                                        "AI-ModelScope/alpaca-gpt4-data-zh#1000": "alpaca.jsonl#3",
                                        "max_tokens=512": "max_tokens=8"}, tmp_path)
    assert out.count("metric: {") == 2 and "'num_samples': 3" in out
    assert "query: who are you?\nresponse: " in out
    if lib == "fake":
        assert "response0: Hello" in out  # the fake engines' script
