"""VllmEngine with vLLM replaced at its outer surface (fake_lib/vllm): what reaches vLLM, and what comes back.

The shared behaviour (shapes, streaming, n, stop, errors, cancel) is in tests/contract/test_engine_contract.py;
these check the vLLM-specific parts: prompt ids, SamplingParams, LoRA requests, aborts, media, errors.
"""
from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
from pathlib import Path

import pytest

from swiftops.protocol import (AdapterRequest, BadRequestError, EngineError, InferRequest, ModelNotFoundError,
                               RequestConfig, UnsupportedError)
from swiftops.protocol.errors import ConfigError

FAKE_LIB = Path(__file__).resolve().parent / "fake_lib"


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_LIB))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    yield vllm
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def engine(fake_vllm, tiny_model_dir, tmp_path):
    from swiftops.engines.vllm import VllmEngine

    built = VllmEngine(str(tiny_model_dir), adapters={"sql": str(tmp_path / "sql"), "chat": str(tmp_path / "chat")},
                       tensor_parallel_size=2, max_model_len=128, temperature=0)
    yield built
    built.close()


def _req(text: str = "hi") -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


def _llm(engine):
    return engine._llm


def test_engine_args_and_tokens_reach_vllm(engine, tiny_model_dir):
    llm = _llm(engine)
    assert llm.engine_args.kwargs["tensor_parallel_size"] == 2 and llm.engine_args.kwargs["enable_lora"] is True
    assert engine.max_model_len == 128 and engine.adapter_names == ["sql", "chat"]
    assert engine.models == [Path(tiny_model_dir).name, "sql", "chat"]
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2, seed=4, stop=["x"])))
    call = llm.calls[-1]
    text = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                tokenize=False)
    assert call["prompt"] == {"prompt_token_ids": engine.tokenizer(text, add_special_tokens=False)["input_ids"]}
    params = call["params"]
    assert (params.max_tokens, params.seed, params.stop, params.temperature) == (2, 4, ["x"], 0.0)


def test_each_request_picks_its_adapter_by_name(engine, tmp_path):
    llm = _llm(engine)
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=1), adapter_request=AdapterRequest(name="chat")))
    first = llm.calls[-1]["lora_request"]
    assert (first.lora_name, first.lora_int_id) == ("chat", 2)
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=1)))
    assert llm.calls[-1]["lora_request"] is None
    # an adapter named with a path is added on first use, with a fresh id
    new = AdapterRequest(name="math", path=str(tmp_path / "math"))
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=1), adapter_request=new))
    assert llm.calls[-1]["lora_request"].lora_int_id == 3 and "math" in engine.adapter_names
    with pytest.raises(ModelNotFoundError):
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=1), adapter_request=AdapterRequest(name="x")))


def test_adapters_need_lora_turned_on_at_start(fake_vllm, tiny_model_dir, tmp_path):
    from swiftops.engines.vllm import VllmEngine

    engine = VllmEngine(str(tiny_model_dir))
    with pytest.raises(UnsupportedError, match="--adapters"):
        asyncio.run(engine.infer_async(_req(), adapter_request=AdapterRequest(name="a", path=str(tmp_path))))


def test_cancel_and_early_close_abort_the_vllm_request(engine):
    llm = _llm(engine)

    async def scenario():
        task = asyncio.ensure_future(engine.infer_async(_req(), RequestConfig(max_tokens=100, ignore_eos=True)))
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream = await engine.infer_async(_req(), RequestConfig(max_tokens=100, ignore_eos=True, stream=True))
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(scenario())
    assert llm.aborted == [call["request_id"] for call in llm.calls[-2:]]
    assert engine.num_running == 0


def test_finished_requests_are_not_aborted(engine):
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=3)))
    assert _llm(engine).aborted == []


def test_library_failures_become_swiftops_errors(engine):
    llm = _llm(engine)
    llm.fail_with = ValueError("prompt too long for the KV cache")
    with pytest.raises(BadRequestError, match="KV cache"):
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))
    llm.fail_with = RuntimeError("EngineCore died")
    with pytest.raises(EngineError, match="EngineCore died") as info:
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))
    assert info.value.status == 500


# A multimodal chat template (as Qwen2-VL's): image parts become the model's placeholder tokens.
VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}"
    "{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def vl_engine(fake_vllm, tiny_model_dir, tmp_path):
    import shutil

    from swiftops.engines.vllm import VllmEngine

    model_dir = tmp_path / "tiny-vl"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(VL_TEMPLATE)
    built = VllmEngine(str(model_dir), limit_mm_per_prompt={"image": 2})
    yield built
    built.close()


def test_images_go_to_multi_modal_data(vl_engine):
    from PIL import Image

    engine = vl_engine
    assert _llm(engine).engine_args.kwargs["limit_mm_per_prompt"] == {"image": 2}
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    request = InferRequest(messages=[{"role": "user", "content": "<image>What is this?"}], images=[data_uri])
    asyncio.run(engine.infer_async(request, RequestConfig(max_tokens=1)))
    prompt = _llm(engine).calls[-1]["prompt"]
    assert _llm(engine).calls[-1]["kwargs"] == {"tokenization_kwargs": {"add_special_tokens": False}}
    (image,) = prompt["multi_modal_data"]["image"]
    assert image.size == (4, 3)
    assert "<|vision_start|><|image_pad|><|vision_end|>What is this?" in prompt["prompt"]
    # OpenAI content parts work the same way
    parts = [{"type": "text", "text": "Compare "}, {"type": "image_url", "image_url": {"url": data_uri}}]
    asyncio.run(engine.infer_async(InferRequest(messages=[{"role": "user", "content": parts}]),
                                   RequestConfig(max_tokens=1)))
    prompt = _llm(engine).calls[-1]["prompt"]
    assert "Compare <|vision_start|>" in prompt["prompt"] and len(prompt["multi_modal_data"]["image"]) == 1
    with pytest.raises(BadRequestError, match="more <image> tags"):
        asyncio.run(engine.infer_async(InferRequest(messages=[{"role": "user", "content": "<image><image>"}],
                                                    images=[data_uri])))
    with pytest.raises(UnsupportedError, match="images only"):
        asyncio.run(engine.infer_async(InferRequest(messages=[{"role": "user", "content": "<video>"}],
                                                    videos=["/v.mp4"])))


def test_a_served_engine_loads_images_under_the_servers_media_policy(fake_vllm, tiny_model_dir, tmp_path,
                                                                      media_server):
    """Images reach vLLM through swiftops' loader: behind `swiftops deploy` a client cannot make the server read
    its files or fetch from private addresses; the Python API still reads the user's own files."""
    import shutil

    from PIL import Image

    from swiftops.engines.vllm import VllmEngine
    from swiftops.protocol.settings import EngineSettings, MediaSettings, ModelSettings

    model_dir = tmp_path / "tiny-vl"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").write_text(VL_TEMPLATE)
    picture = tmp_path / "secret.png"
    Image.new("RGB", (4, 3), "red").save(picture)
    buffer = io.BytesIO()
    Image.new("RGB", (5, 2), "blue").save(buffer, format="PNG")
    media_server.routes["/pic.png"] = (200, {"Content-Type": "image/png"}, buffer.getvalue())

    def ask(engine, image):
        request = InferRequest(messages=[{"role": "user", "content": "<image>What is this?"}], images=[image])
        asyncio.run(engine.infer_async(request, RequestConfig(max_tokens=1)))
        return _llm(engine).calls[-1]["prompt"]["multi_modal_data"]["image"][0].size

    served = VllmEngine.from_settings(ModelSettings(model=str(model_dir)), EngineSettings(infer_backend="vllm"),
                                      media=MediaSettings(), serving=True)
    local = VllmEngine(str(model_dir))
    try:
        calls = len(_llm(served).calls)
        with pytest.raises(BadRequestError, match="local"):
            ask(served, str(picture))
        with pytest.raises(BadRequestError, match="private|loopback|not allowed"):
            ask(served, media_server.url("/pic.png"))
        assert len(_llm(served).calls) == calls  # refused before anything reached vLLM
        assert ask(local, str(picture)) == (4, 3)
        assert ask(local, media_server.url("/pic.png")) == (5, 2)
    finally:
        served.close()
        local.close()


def test_unknown_python_options_say_where_library_options_go(fake_vllm, tiny_model_dir):
    from swiftops.engines.vllm import VllmEngine

    with pytest.raises(ConfigError, match="engine_kwargs"):
        VllmEngine(str(tiny_model_dir), swap_space=4)


def test_without_vllm_building_says_how_to_install(tiny_model_dir):
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    with pytest.raises(ConfigError, match=r"pip install 'swiftops\[vllm\]'"):
        build_engine(ModelSettings(model=str(tiny_model_dir)), EngineSettings(infer_backend="vllm"),
                     GenerationSettings())
    from swiftops.engines.vllm import VllmEngine

    with pytest.raises(ConfigError, match=r"pip install 'swiftops\[vllm\]'"):
        VllmEngine(str(tiny_model_dir))


def test_cli_exits_2_with_the_install_hint(tiny_model_dir, tmp_path):
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = subprocess.run([sys.executable, "-m", "swiftops.cli.main", "infer", "--model", str(tiny_model_dir),
                             "--infer_backend", "vllm", "--val_dataset", str(dataset),
                             "--result_path", str(tmp_path / "out.jsonl")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'swiftops[vllm]'" in result.stderr


def test_an_installed_vllm_that_does_not_load_is_a_config_error(fake_vllm, tiny_model_dir, monkeypatch):
    from swiftops.engines.vllm import VllmEngine

    monkeypatch.setitem(sys.modules, "vllm.lora.request", None)  # as a CUDA-only extension failing to import
    with pytest.raises(ConfigError, match="installed but does not load"):
        VllmEngine(str(tiny_model_dir))


def test_ms_swift_style_arguments(fake_vllm, tiny_model_dir, tmp_path):
    from swiftops.engines.vllm import VllmEngine

    (tmp_path / "sql-lora").mkdir()
    engine = VllmEngine(str(tiny_model_dir), adapters=[str(tmp_path / "sql-lora")], max_num_seqs=4,
                        gpu_memory_utilization=0.5)
    kwargs = engine._llm.engine_args.kwargs
    assert (kwargs["max_num_seqs"], kwargs["gpu_memory_utilization"]) == (4, 0.5)
    assert engine.adapter_names == ["sql-lora"]


def test_a_gguf_file_reaches_vllm_with_the_base_models_tokenizer(fake_vllm, tiny_model_dir, tmp_path):
    from swiftops.engines.vllm import VllmEngine

    (tmp_path / "tiny.Q4_K_M.gguf").write_bytes(b"GGUF")  # vLLM (faked) would read it; we only pass its path
    built = VllmEngine(str(tmp_path), gguf_file="tiny.Q4_K_M.gguf", tokenizer=str(tiny_model_dir))
    try:
        kwargs = _llm(built).engine_args.kwargs
        assert kwargs["model"] == str(tmp_path / "tiny.Q4_K_M.gguf") and kwargs["tokenizer"] == str(tiny_model_dir)
        assert built.tokenizer.name_or_path == str(tiny_model_dir)  # our chat template comes from --tokenizer
        assert built.model_name == "tiny.Q4_K_M.gguf"  # as the pt engine names it
    finally:
        built.close()
