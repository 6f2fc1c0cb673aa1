"""The reference chapter (ms-swift's inference and deployment docs): its Python snippets and commands, run with
`swift` -> `swiftops` and the import lines as the only edits; model ids become local tiny models and URLs local
files or a local HTTP server. Where swiftops differs (the pre-3.2 streaming loop), docs/from-ms-swift.md shows
the rewrite and the test runs that form."""
from __future__ import annotations

import json
import shlex
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


# ---- 部署: the deploy commands, curl and the three clients ---------------------------------------------------

TEXT_DEPLOY = '''swiftops deploy \\
    --model Qwen/Qwen2.5-7B-Instruct \\
    --infer_backend vllm \\
    --max_new_tokens 2048 \\
    --served_model_name Qwen2.5-7B-Instruct'''

TEXT_CURL = '''curl http://localhost:8000/v1/chat/completions \\
-H "Content-Type: application/json" \\
-d '{
"model": "Qwen2.5-7B-Instruct",
"messages": [{"role": "user", "content": "晚上睡不着觉怎么办？"}],
"max_tokens": 256,
"temperature": 0
}\''''

MLLM_DEPLOY_ENV = {"MAX_PIXELS": "1003520", "VIDEO_MAX_PIXELS": "50176", "FPS_MAX_FRAMES": "12"}
MLLM_DEPLOY = '''swiftops deploy \\
    --model Qwen/Qwen2.5-VL-3B-Instruct \\
    --infer_backend vllm \\
    --gpu_memory_utilization 0.9 \\
    --max_model_len 8192 \\
    --max_new_tokens 2048 \\
    --limit_mm_per_prompt '{"image": 5, "video": 2}' \\
    --served_model_name Qwen2.5-VL-3B-Instruct'''

MLLM_CURL = '''curl http://localhost:8000/v1/chat/completions \\
-H "Content-Type: application/json" \\
-d '{
"model": "Qwen2.5-VL-3B-Instruct",
"messages": [{"role": "user", "content": [
    {"type": "image", "image": "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/cat.png"},
    {"type": "image", "image": "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png"},
    {"type": "text", "text": "两张图的区别是什么？"}
]}],
"max_tokens": 256,
"temperature": 0
}\''''

OPENAI_SNIPPET = '''
from openai import OpenAI

client = OpenAI(
    api_key='EMPTY',
    base_url=f'http://127.0.0.1:8000/v1',
)
model = client.models.list().data[0].id
print(f'model: {model}')

messages = [{'role': 'user', 'content': [
    {'type': 'video', 'video': 'https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4'},
    {'type': 'text', 'text': 'describe the video'}
]}]

resp = client.chat.completions.create(model=model, messages=messages, max_tokens=512, temperature=0)
query = messages[0]['content']
response = resp.choices[0].message.content
print(f'query: {query}')
print(f'response: {response}')

# base64
import base64
import requests
resp = requests.get('https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4')
base64_encoded = base64.b64encode(resp.content).decode('utf-8')
messages = [{'role': 'user', 'content': [
    {'type': 'video', 'video': f'data:video/mp4;base64,{base64_encoded}'},
    {'type': 'text', 'text': 'describe the video'}
]}]

gen = client.chat.completions.create(model=model, messages=messages, stream=True, temperature=0)
print(f'query: {query}\\nresponse: ', end='')
for chunk in gen:
    if chunk is None:
        continue
    print(chunk.choices[0].delta.content, end='', flush=True)
print()
'''

# The chapter's swift client, imports edited; its last loop is the pre-3.2 form (`for chunk_list in gen:
# chunk = chunk_list[0]`), which ms-swift >= 3.2 and swiftops answer with one iterator per request:
# docs/from-ms-swift.md ("Streaming") shows the rewrite run here, `for chunk in gen[0]:`.
SWIFT_CLIENT_SNIPPET = '''
from swiftops import InferRequest, InferClient, RequestConfig
from swiftops import InferStats


engine = InferClient(host='127.0.0.1', port=8000)
print(f'models: {engine.models}')
metric = InferStats()
request_config = RequestConfig(max_tokens=512, temperature=0)

# 这里使用了3个infer_request来展示batch推理
# 支持传入本地路径、base64和url
infer_requests = [
    InferRequest(messages=[{'role': 'user', 'content': 'who are you?'}]),
    InferRequest(messages=[{'role': 'user', 'content': '<image><image>两张图的区别是什么？'}],
                 images=['http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/cat.png',
                         'http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png']),
    InferRequest(messages=[{'role': 'user', 'content': '<video>describe the video'}],
                 videos=['https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4']),
]

resp_list = engine.infer(infer_requests, request_config, metrics=[metric])
print(f'response0: {resp_list[0].choices[0].message.content}')
print(f'response1: {resp_list[1].choices[0].message.content}')
print(f'response2: {resp_list[2].choices[0].message.content}')
print(metric.compute())
metric.reset()

# base64
import base64
import requests
resp = requests.get('https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4')
base64_encoded = base64.b64encode(resp.content).decode('utf-8')
messages = [{'role': 'user', 'content': [
    {'type': 'video', 'video': f'data:video/mp4;base64,{base64_encoded}'},
    {'type': 'text', 'text': 'describe the video'}
]}]
infer_request = InferRequest(messages=messages)
request_config = RequestConfig(max_tokens=512, temperature=0, stream=True)
gen = engine.infer([infer_request], request_config, metrics=[metric])
print(f'response0: ', end='')
for chunk in gen[0]:
    if chunk is None:
        continue
    print(chunk.choices[0].delta.content, end='', flush=True)
print()
print(metric.compute())
'''


def deploy_args(command: str, model_id: str, model_dir) -> list[str]:
    """The chapter's `swiftops deploy ...` as argv for ServerProcess (which adds --host/--port)."""
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["swiftops", "deploy"]
    return [str(model_dir) if a == model_id else a for a in argv[2:]]


def run_curl(command: str, port: int) -> dict:
    """The chapter's curl, on the test server's port and with max_tokens that fit the tiny models' contexts."""
    command = command.replace("localhost:8000", f"127.0.0.1:{port}").replace('"max_tokens": 256', '"max_tokens": 16')
    done = subprocess.run(["bash", "-c", command],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_text_deploy_and_curl(tiny_model_dir, vllm_env):
    from tests.server_process import ServerProcess

    with ServerProcess(deploy_args(TEXT_DEPLOY, "Qwen/Qwen2.5-7B-Instruct", tiny_model_dir)) as server:
        answer = run_curl(TEXT_CURL, server.port)
    assert answer.get("model") == "Qwen2.5-7B-Instruct" and answer["object"] == "chat.completion", answer
    assert answer["choices"][0]["message"]["content"]
    if vllm_env == "fake":
        assert answer["choices"][0]["message"]["content"].startswith("Hello there")  # the fake engine's script


def test_multimodal_deploy_and_curl(tiny_vlm_dir, media_urls, vllm_env, monkeypatch):
    """The chapter's multimodal deploy command (vllm, its flags and environment) and its curl with two images
    (served from loopback, so the server is told that domain is allowed)."""
    from tests.server_process import ServerProcess

    env = {**MLLM_DEPLOY_ENV, "SWIFTOPS_ALLOWED_MEDIA_DOMAINS": "127.0.0.1"}
    with ServerProcess(deploy_args(MLLM_DEPLOY, "Qwen/Qwen2.5-VL-3B-Instruct", tiny_vlm_dir), env=env) as server:
        curl = MLLM_CURL
        for url, local in media_urls.items():
            curl = curl.replace(url, local)
        answer = run_curl(curl, server.port)
    assert answer["model"] == "Qwen2.5-VL-3B-Instruct", answer
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 40  # the two images' tokens reached the prompt


@pytest.fixture(scope="module")
def mllm_pt_server(tiny_vlm_dir):
    """The multimodal deployment for the two Python clients, on the pt backend: they send a video, and swiftops'
    vllm backend takes images only (a 400 from the capability table); the flags are the chapter's otherwise."""
    from tests.server_process import ServerProcess

    args = deploy_args(MLLM_DEPLOY, "Qwen/Qwen2.5-VL-3B-Instruct", tiny_vlm_dir)
    args[args.index("vllm")] = "pt"
    args = [a for a in args if a not in ("--gpu_memory_utilization", "0.9")]  # vLLM's memory share
    env = {**MLLM_DEPLOY_ENV, "SWIFTOPS_ALLOWED_MEDIA_DOMAINS": "127.0.0.1"}
    with ServerProcess(args, env=env, ready_timeout=300) as server:
        yield server


def test_openai_client_snippet(mllm_pt_server, media_urls):
    out = run_snippet(OPENAI_SNIPPET, {"127.0.0.1:8000": f"127.0.0.1:{mllm_pt_server.port}",
                                       "max_tokens=512": "max_tokens=8",
                                       "stream=True, temperature=0)": "stream=True, temperature=0, max_tokens=8)",
                                       **media_urls})
    assert "model: Qwen2.5-VL-3B-Instruct" in out
    assert out.count("query: [{'type': 'video'") == 2
    assert out.split("response: ")[1].strip() and out.rstrip("\n").rsplit("response: ", 1)[1].strip()


def test_swift_client_snippet(mllm_pt_server, media_urls):
    out = run_snippet(SWIFT_CLIENT_SNIPPET, {"port=8000": f"port={mllm_pt_server.port}",
                                             "max_tokens=512": "max_tokens=8", **media_urls})
    assert "models: ['Qwen2.5-VL-3B-Instruct']" in out
    for i in range(3):
        assert f"response{i}: " in out
    assert out.count("'num_samples': 3") == 1 and out.count("'num_samples': 1") == 1  # metric.reset() in between


def test_infer_command_as_app(tiny_model_dir):
    """界面推理: `swift infer` -> `swift app` with the chapter's flags serves the chat page and the API."""
    import httpx

    from tests.server_process import ServerProcess

    server = ServerProcess(["--model", str(tiny_model_dir), "--stream", "true", "--infer_backend", "pt",
                            "--max_new_tokens", "2048"])
    server.args[server.args.index("deploy")] = "app"
    with server:
        page = httpx.get(server.url + "/", timeout=10)
        answer = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": tiny_model_dir.name, "messages": [{"role": "user", "content": "who are you?"}], "max_tokens": 4})
    assert page.status_code == 200 and "swiftops-api-base" in page.text
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
