"""LmdeployEngine with LMDeploy replaced at its outer surface (fake_lib/lmdeploy): what reaches LMDeploy, and
what comes back. Shared behaviour (shapes, streaming, n, stop, errors, cancel) is in tests/contract/."""
from __future__ import annotations

import asyncio
import base64
import io
import sys
import time
from pathlib import Path

import pytest

from swiftops.protocol import (AdapterRequest, BadRequestError, EngineError, InferRequest, ModelNotFoundError,
                               RequestConfig, UnsupportedError)
from swiftops.protocol.errors import ConfigError

FAKE_LIB = Path(__file__).resolve().parent / "fake_lib"


@pytest.fixture
def fake_lmdeploy(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_LIB))
    for name in [m for m in sys.modules if m == "lmdeploy" or m.startswith("lmdeploy.")]:
        monkeypatch.delitem(sys.modules, name)
    import lmdeploy

    yield lmdeploy
    for name in [m for m in sys.modules if m == "lmdeploy" or m.startswith("lmdeploy.")]:
        del sys.modules[name]


@pytest.fixture
def engine(fake_lmdeploy, tiny_model_dir, tmp_path):
    from swiftops.engines.lmdeploy import LmdeployEngine

    built = LmdeployEngine(str(tiny_model_dir), adapters={"sql": str(tmp_path / "sql")}, tensor_parallel_size=2,
                           max_model_len=128, cache_max_entry_count=0.5, temperature=0)
    yield built
    built.close()


def _req(text: str = "hi") -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


def test_adapters_choose_the_pytorch_engine_with_our_settings(engine):
    core = engine._engine
    assert engine.lmdeploy_backend == "pytorch" and core.backend == "pytorch"
    assert type(core.backend_config).__name__ == "PytorchEngineConfig"
    assert core.backend_config.kwargs["adapters"] == {"sql": engine._adapters["sql"]}
    assert (core.backend_config.tp, core.backend_config.session_len, core.backend_config.cache_max_entry_count) == \
        (2, 128, 0.5)
    assert engine.max_model_len == 128 and engine.adapter_names == ["sql"]


def test_turbomind_by_default_and_lmdeploys_own_fallback(fake_lmdeploy, tiny_model_dir, tiny_llama_dir):
    from swiftops.engines.lmdeploy import LmdeployEngine

    qwen = LmdeployEngine(str(tiny_model_dir))
    assert qwen.lmdeploy_backend == "turbomind"
    llama = LmdeployEngine(str(tiny_llama_dir), block_size=32)  # the fake TurboMind "cannot run" llama
    assert llama.lmdeploy_backend == "pytorch" and type(llama._engine.backend_config).__name__ == "PytorchEngineConfig"
    qwen.close()
    llama.close()


def test_template_ids_and_one_seeded_session_per_choice(engine):
    core = engine._engine
    asyncio.run(engine.infer_async(_req(), RequestConfig(n=3, max_tokens=2, temperature=0.5, seed=9)))
    requests = core.requests[-3:]
    text = engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                tokenize=False)
    assert all(r.input_ids == engine.tokenizer(text, add_special_tokens=False)["input_ids"] for r in requests)
    assert sorted(r.gen_config.random_seed for r in requests) == [9, 10, 11]
    assert len({r.session_id for r in requests}) == 3 and all(r.gen_config.n == 1 for r in requests)
    assert core.loop is not None and core.loop is engine._loop().loop


def test_requests_name_their_adapter(engine):
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=1), adapter_request=AdapterRequest(name="sql")))
    assert engine._engine.requests[-1].adapter_name == "sql"
    with pytest.raises(ModelNotFoundError, match="at start only"):
        asyncio.run(engine.infer_async(_req(), adapter_request=AdapterRequest(name="new", path="/x")))


def test_stop_strings_are_cut_on_text_and_end_the_session(engine):
    resp = asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=50, stop=[" am"], ignore_eos=True)))
    assert resp.choices[0].message.content == "Hello there, I" and resp.choices[0].finish_reason == "stop"
    assert engine._engine.cancelled == [engine._engine.requests[-1].session_id]


def test_cancel_cancels_the_lmdeploy_session(engine):
    """On the engine instance (the fixture's adapters pick the PyTorch engine), which goes back to the pool."""
    core = engine._engine

    async def scenario():
        task = asyncio.ensure_future(engine.infer_async(_req(), RequestConfig(max_tokens=100, ignore_eos=True)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert _settled(core) and core.cancelled == [core.requests[-1].session_id]


def test_library_errors_become_swiftops_errors(engine):
    from lmdeploy.serve import RequestError

    core = engine._engine
    core.fail_with = RequestError("context_length_exceeded", "Input length (300) must be smaller")
    with pytest.raises(BadRequestError, match="does not fit") as info:
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))
    assert info.value.status == 400
    core.fail_with = RuntimeError("engine loop died")
    with pytest.raises(EngineError, match="engine loop died"):
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))


def test_presence_penalty_is_refused(engine):
    with pytest.raises(UnsupportedError, match="repetition_penalty"):
        asyncio.run(engine.infer_async(_req(), RequestConfig(presence_penalty=1.0)))


def test_images_go_to_lmdeploy_as_openai_parts(engine):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), "blue").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    request = InferRequest(messages=[{"role": "user", "content": "<image>Describe."}], images=[data])
    asyncio.run(engine.infer_async(request, RequestConfig(max_tokens=1)))
    sent = engine._engine.requests[-1].messages
    (image_part, text_part) = sent[0]["content"]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert text_part == {"type": "text", "text": "Describe."}


def test_turbomind_refuses_adapters_before_loading(fake_lmdeploy, tiny_model_dir, tmp_path):
    from swiftops.engines.lmdeploy import LmdeployEngine

    with pytest.raises(ConfigError, match="TurboMind engine cannot serve LoRA"):
        LmdeployEngine(str(tiny_model_dir), adapters={"a": str(tmp_path)}, lmdeploy_backend="turbomind")


def test_without_lmdeploy_building_says_how_to_install(tiny_model_dir):
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    with pytest.raises(ConfigError, match=r"pip install 'swiftops\[lmdeploy\]'"):
        build_engine(ModelSettings(model=str(tiny_model_dir)), EngineSettings(infer_backend="lmdeploy"),
                     GenerationSettings())
    from swiftops.engines.lmdeploy import LmdeployEngine

    with pytest.raises(ConfigError, match=r"pip install 'swiftops\[lmdeploy\]'"):
        LmdeployEngine(str(tiny_model_dir))


def test_an_installed_lmdeploy_that_does_not_load_is_a_config_error(fake_lmdeploy, tiny_model_dir, monkeypatch):
    from swiftops.engines.lmdeploy import LmdeployEngine

    monkeypatch.setitem(sys.modules, "lmdeploy.archs", None)
    with pytest.raises(ConfigError, match="installed but does not load"):
        LmdeployEngine(str(tiny_model_dir))


def test_ms_swift_style_arguments(fake_lmdeploy, tiny_model_dir):
    from swiftops.engines.lmdeploy import LmdeployEngine

    engine = LmdeployEngine(str(tiny_model_dir), tp=2, session_len=200, quant_policy=8, vision_batch_size=2)
    config = engine._engine.backend_config
    assert (config.tp, config.session_len, config.quant_policy) == (2, 200, 8) and engine.max_model_len == 200


SCRIPT_TEXT = "Hello there, I am a tiny fake model."


def _settled(core) -> bool:
    """Every engine instance back in LMDeploy's pool and no session running, within a second (a choice's task on
    the engine loop finishes its cleanup just after its last output reached the caller)."""
    pool = core.session_mgr.request_handle_pool
    for _ in range(100):
        if pool.num_dispatched == 0 and not core.running:
            return True
        time.sleep(0.01)
    return False


def test_token_id_prompts_run_on_the_engine_instance_with_the_engines_own_config(engine):
    """Text prompts (token ids after our chat template) skip AsyncEngine.generate's per-step detokenization."""
    core = engine._engine
    resp = asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=50, stop_token_ids=[7])))
    assert core.preprocessed == 0  # neither preprocess nor generate ran
    sent = core.requests[-1]
    assert sent.gen_config.top_k == 1 and set(sent.gen_config.stop_token_ids) == {7, core.eos_id}
    # The EOS the engine stopped on is neither text nor counted; the answer is the whole script.
    choice = resp.choices[0]
    assert (choice.message.content, choice.finish_reason) == (SCRIPT_TEXT, "stop")
    script_tokens = sum(len(core.word_ids[w]) for w in core.word_ids)
    assert resp.usage.completion_tokens == script_tokens
    assert _settled(core)


def test_instance_streams_match_whole_answers_and_logprobs_align(engine):
    config = RequestConfig(max_tokens=50, logprobs=True, top_logprobs=2)

    async def stream():
        return [c async for c in await engine.infer_async(_req(), config.model_copy(update={"stream": True}))]

    whole = asyncio.run(engine.infer_async(_req(), config))
    chunks = asyncio.run(stream())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content == \
        SCRIPT_TEXT
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "stop"
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens  # the stop token's logprob is dropped with it
    assert all(e.logprob == -0.5 and len(e.top_logprobs) == 2 for e in entries)


def test_instance_error_statuses_become_swiftops_errors(engine):
    from lmdeploy.messages import ResponseType

    core = engine._engine
    core.fail_status = ResponseType.INPUT_LENGTH_ERROR
    with pytest.raises(BadRequestError, match="does not fit") as info:
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))
    assert info.value.status == 400
    core.fail_status = ResponseType.INTERNAL_ENGINE_ERROR
    with pytest.raises(EngineError, match="INTERNAL_ENGINE_ERROR"):
        asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=2)))
    assert _settled(core)


def test_turbomind_and_media_prompts_keep_lmdeploys_generate(fake_lmdeploy, tiny_model_dir):
    from swiftops.engines.lmdeploy import LmdeployEngine

    turbomind = LmdeployEngine(str(tiny_model_dir))
    try:
        resp = asyncio.run(turbomind.infer_async(_req(), RequestConfig(max_tokens=50)))
        assert turbomind._engine.preprocessed == 1 and resp.choices[0].message.content == SCRIPT_TEXT
    finally:
        turbomind.close()


def test_structured_outputs_keep_generate_whose_preprocess_checks_the_format(engine):
    core = engine._engine
    asyncio.run(engine.infer_async(_req(), RequestConfig(max_tokens=4, response_format={"type": "json_object"})))
    assert core.preprocessed == 1 and core.requests[-1].gen_config.response_format["type"] == "json_schema"
