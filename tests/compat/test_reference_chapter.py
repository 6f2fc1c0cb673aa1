"""The reference chapter (ms-swift's inference and deployment docs): its Python snippets and commands, run with
`swift` -> `swiftops` and the import lines as the only edits; model ids become local tiny models and URLs local
files or a local HTTP server. Where swiftops differs (the pre-3.2 streaming loop), docs/from-ms-swift.md shows
the rewrite and the test runs that form."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.compat.conftest import ANIMAL, BABY, CAT

TEXT_SNIPPET = '''
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'

from swiftops import PtEngine, RequestConfig, InferRequest
model = 'Qwen/Qwen2.5-0.5B-Instruct'

# 加载推理引擎
engine = PtEngine(model, max_batch_size=2)
request_config = RequestConfig(max_tokens=512, temperature=0)

# 这里使用了2个infer_request来展示batch推理
infer_requests = [
    InferRequest(messages=[{'role': 'user', 'content': 'who are you?'}]),
    InferRequest(messages=[{'role': 'user', 'content': '浙江的省会在哪？'},
                           {'role': 'assistant', 'content': '浙江的省会在哪？'},
                           {'role': 'user', 'content': '这里有什么好玩的地方'},]),
]
resp_list = engine.infer(infer_requests, request_config)
query0 = infer_requests[0].messages[0]['content']
print(f'response0: {resp_list[0].choices[0].message.content}')
print(f'response1: {resp_list[1].choices[0].message.content}')
'''

MLLM_SNIPPET = '''
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'
os.environ['MAX_PIXELS'] = '1003520'
os.environ['VIDEO_MAX_PIXELS'] = '50176'
os.environ['FPS_MAX_FRAMES'] = '12'

from swiftops import PtEngine, RequestConfig, InferRequest
model = 'Qwen/Qwen2.5-VL-3B-Instruct'

# 加载推理引擎
engine = PtEngine(model, max_batch_size=2)
request_config = RequestConfig(max_tokens=512, temperature=0)

# 这里使用了3个infer_request来展示batch推理
infer_requests = [
    InferRequest(messages=[{'role': 'user', 'content': 'who are you?'}]),
    InferRequest(messages=[{'role': 'user', 'content': '<image><image>两张图的区别是什么？'}],
                 images=['http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/cat.png',
                         'http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png']),
    InferRequest(messages=[{'role': 'user', 'content': '<video>describe the video'}],
                 videos=['https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4']),
]
resp_list = engine.infer(infer_requests, request_config)
query0 = infer_requests[0].messages[0]['content']
print(f'response0: {resp_list[0].choices[0].message.content}')
print(f'response1: {resp_list[1].choices[0].message.content}')
print(f'response2: {resp_list[2].choices[0].message.content}')
'''


def run_snippet(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_text_model_snippet(tiny_model_dir):
    out = run_snippet(TEXT_SNIPPET, {"Qwen/Qwen2.5-0.5B-Instruct": str(tiny_model_dir)})
    lines = out.splitlines()
    assert lines[0].startswith("response0: ") and len(lines[0]) > len("response0: ")
    assert any(line.startswith("response1: ") for line in lines)


@pytest.mark.slow  # a minute or more on 2 CPU cores: `pytest -m slow tests/compat`
def test_multimodal_model_snippet(tiny_vlm_dir, media_files):
    out = run_snippet(MLLM_SNIPPET, {"Qwen/Qwen2.5-VL-3B-Instruct": str(tiny_vlm_dir), **media_files})
    for i in range(3):
        assert f"response{i}: " in out


# ---- the CLI commands -------------------------------------------------------------------------------------

def test_infer_commands_full_model_lora_and_dataset(tiny_model_dir, lora_dir, tmp_path, swiftops_cli):
    # 全参数模型 (stdin from a pipe instead of a terminal)
    code, out, err = swiftops_cli("infer", "--model", tiny_model_dir, "--stream", "true", "--infer_backend", "pt",
                                  "--max_new_tokens", "2048", input="who are you?\nquit\n")
    assert code == 0, err
    assert "-" * 50 in out
    # LoRA模型
    code, out, err = swiftops_cli("infer", "--model", tiny_model_dir, "--adapters", lora_dir, "--stream", "true",
                                  "--infer_backend", "pt", "--temperature", "0", "--max_new_tokens", "2048",
                                  input="who are you?\nquit\n")
    assert code == 0, err
    assert "-" * 50 in out
    # 数据集推理 (a local file for the hub dataset)
    (tmp_path / "alpaca.jsonl").write_text(json.dumps({"instruction": "你好", "output": "你好！"}) + "\n")
    code, out, err = swiftops_cli("infer", "--model", tiny_model_dir, "--stream", "true", "--infer_backend", "pt",
                                  "--val_dataset", "alpaca.jsonl", "--max_new_tokens", "16")
    assert code == 0, err
    assert "[QUERY] 你好\n[LABELS] 你好！\n[RESPONSE] " in out


def test_multimodal_infer_command(tiny_vlm_dir, media_files, monkeypatch, swiftops_cli):
    for name, value in (("MAX_PIXELS", "1003520"), ("VIDEO_MAX_PIXELS", "50176"), ("FPS_MAX_FRAMES", "12")):
        monkeypatch.setenv(name, value)
    code, out, err = swiftops_cli("infer", "--model", tiny_vlm_dir, "--stream", "true", "--infer_backend", "pt",
                                  "--max_new_tokens", "8",
                                  input=f"<image><image>这两张图有什么区别\n{media_files[CAT]}\n{media_files[ANIMAL]}\n"
                                        f"clear\n<video>描述这段视频\n{media_files[BABY]}\nquit\n")
    assert code == 0, err
    assert out.count("-" * 50) >= 2
