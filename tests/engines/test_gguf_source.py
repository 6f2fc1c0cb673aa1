"""GGUF checkpoints: how --model / --gguf_file name one, and what the factory and the vLLM mapping make of it.
No weights load here (tests/engines/pt/test_gguf.py and tests/realweights load real ones)."""
from __future__ import annotations

import pytest

from swiftops.engines.factory import build_engine, check_model_location
from swiftops.engines.gguf_source import GgufSource, gguf_source
from swiftops.engines.vllm import args as vllm_args
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings


@pytest.mark.parametrize("model, gguf_file, expected", [
    ("models/smol.Q4_1.gguf", None, GgufSource("models", "smol.Q4_1.gguf")),
    ("smol.GGUF", None, GgufSource(".", "smol.GGUF")),
    ("/abs/dir", "smol.gguf", GgufSource("/abs/dir", "smol.gguf")),
    ("org/repo-GGUF", "smol.Q8_0.gguf", GgufSource("org/repo-GGUF", "smol.Q8_0.gguf")),
    ("org/repo-GGUF/smol.Q8_0.gguf", None, GgufSource("org/repo-GGUF", "smol.Q8_0.gguf")),
    ("Qwen/Qwen2.5-0.5B-Instruct", None, None),
    ("./checkpoint", None, None),
])
def test_both_spellings_name_the_same_file(model, gguf_file, expected):
    assert gguf_source(model, gguf_file) == expected


@pytest.mark.parametrize("model, gguf_file, message", [
    (None, "x.gguf", "--gguf_file needs --model"),
    ("dir/x.gguf", "y.gguf", "already a GGUF file; drop --gguf_file"),
    ("dir", "weights.bin", "give the name of a .gguf file inside --model"),
    ("dir", "sub/x.gguf", "give the name of a .gguf file inside --model"),
])
def test_contradictory_spellings_say_which_to_use(model, gguf_file, message):
    with pytest.raises(ConfigError, match=message):
        gguf_source(model, gguf_file)


def test_the_factory_checks_a_local_gguf_file_exists(tmp_path):
    (tmp_path / "smol.gguf").write_bytes(b"GGUF")
    check_model_location(ModelSettings(model=str(tmp_path / "smol.gguf")))
    check_model_location(ModelSettings(model=str(tmp_path), gguf_file="smol.gguf"))
    check_model_location(ModelSettings(model="org/repo-GGUF", gguf_file="smol.gguf"))  # downloaded on load
    with pytest.raises(ConfigError, match=r"GGUF file .*other\.gguf does not exist"):
        check_model_location(ModelSettings(model=str(tmp_path), gguf_file="other.gguf"))
    with pytest.raises(ConfigError, match=r"GGUF file .*missing\.gguf does not exist"):
        check_model_location(ModelSettings(model=str(tmp_path / "missing.gguf")))
    with pytest.raises(ConfigError, match="is a file; pass --model the directory holding config.json"):
        (tmp_path / "weights.bin").write_bytes(b"")
        check_model_location(ModelSettings(model=str(tmp_path / "weights.bin")))


@pytest.mark.parametrize("model_fields, backend, message", [
    ({"tokenizer": "org/base"}, "pt", "--tokenizer is for --infer_backend vllm"),
    ({}, "lmdeploy", "LMDeploy does not read GGUF checkpoints"),
    ({"task_type": "embedding"}, "pt", "GGUF checkpoints load as causal LMs only"),
])
def test_what_a_backend_cannot_do_with_gguf_fails_before_loading(tmp_path, model_fields, backend, message):
    (tmp_path / "smol.gguf").write_bytes(b"GGUF")  # not a real GGUF: these fail before reading it
    with pytest.raises(ConfigError, match=message):
        build_engine(ModelSettings(model=str(tmp_path / "smol.gguf"), **model_fields),
                     EngineSettings(infer_backend=backend), GenerationSettings())


def test_vllm_gets_the_file_path_and_the_base_tokenizer(tmp_path):
    (tmp_path / "smol.gguf").write_bytes(b"GGUF")
    for settings in (ModelSettings(model=str(tmp_path / "smol.gguf"), tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct"),
                     ModelSettings(model=str(tmp_path), gguf_file="smol.gguf",
                                   tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct")):
        kwargs = vllm_args.engine_args_kwargs(settings, EngineSettings(infer_backend="vllm"))
        assert kwargs["model"] == str(tmp_path / "smol.gguf")
        assert kwargs["tokenizer"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert vllm_args.tokenizer_source(settings) == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                        {"trust_remote_code": False})
    # without --tokenizer, vLLM converts the GGUF's own; our engine reads it from the file's metadata
    bare = ModelSettings(model=str(tmp_path), gguf_file="smol.gguf")
    assert "tokenizer" not in vllm_args.engine_args_kwargs(bare, EngineSettings(infer_backend="vllm"))
    assert vllm_args.tokenizer_source(bare) == (str(tmp_path), {"gguf_file": "smol.gguf"})


def test_vllm_wants_a_local_gguf_file():
    with pytest.raises(ConfigError, match="vLLM reads a local GGUF file: download smol.gguf from org/repo-GGUF"):
        vllm_args.engine_args_kwargs(ModelSettings(model="org/repo-GGUF", gguf_file="smol.gguf"),
                                     EngineSettings(infer_backend="vllm"))


def test_a_non_gguf_model_keeps_its_vllm_arguments():
    settings = ModelSettings(model="org/m", model_revision="v2")
    kwargs = vllm_args.engine_args_kwargs(settings, EngineSettings(infer_backend="vllm"))
    assert kwargs["model"] == "org/m" and "tokenizer" not in kwargs
    assert vllm_args.tokenizer_source(settings) == ("org/m", {"revision": "v2", "trust_remote_code": False})
