"""`build_engine`: settings in, an engine out; what users get wrong fails before any weights load."""
from __future__ import annotations

import importlib.util

import pytest

from swiftops.engines.factory import build_engine, check_model_location, looks_like_hub_id
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings


@pytest.mark.parametrize("name, expected", [
    ("Qwen/Qwen2.5-0.5B-Instruct", True), ("org/name", True), ("./org/name", False), ("/abs/path", False),
    ("~/models/x", False), ("just-a-dir", False), ("a/b/c", False), ("../up/x", False),
])
def test_hub_id_shape(name, expected):
    assert looks_like_hub_id(name) is expected


@pytest.mark.parametrize("settings, message", [
    (ModelSettings(), "no model given"),
    (ModelSettings(model="/no/such/model"), "model path /no/such/model does not exist"),
    (ModelSettings(model="./relative/missing"), "model path ./relative/missing does not exist"),
    (ModelSettings(model="Qwen/Qwen2.5-0.5B-Instruct", adapters=["sql=/no/lora"]), "adapter sql: path /no/lora"),
])
def test_bad_model_locations(settings, message):
    with pytest.raises(ConfigError, match=message):
        check_model_location(settings)


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file"):
        check_model_location(ModelSettings(model=str(tmp_path / "model.safetensors")))


@pytest.mark.parametrize("backend", ["vllm", "lmdeploy"])
def test_missing_backend_library_says_what_to_install(tiny_model_dir, backend):
    if importlib.util.find_spec(backend) is not None:
        pytest.skip(f"{backend} is installed here")
    with pytest.raises(ConfigError, match=rf"pip install 'swiftops\[{backend}\]'"):
        build_engine(ModelSettings(model=str(tiny_model_dir)), EngineSettings(infer_backend=backend),
                     GenerationSettings())


def test_pt_engine_from_settings(tiny_model_dir):
    from swiftops import InferRequest, PtEngine, RequestConfig

    engine = build_engine(ModelSettings(model=str(tiny_model_dir)), EngineSettings(max_batch_size=2),
                          GenerationSettings(max_new_tokens=3))
    try:
        assert isinstance(engine, PtEngine)
        assert engine.model_name == tiny_model_dir.name
        (response,) = engine.infer([InferRequest(messages=[{"role": "user", "content": "hi"}])],
                                   RequestConfig(temperature=0))
        assert response.usage.completion_tokens <= 3  # the generation settings' max_new_tokens is the default
    finally:
        engine.close()
