"""The pt loader's GGUF path on small GGUF files written here with the `gguf` package: the errors a user meets.
Loading real GGUF weights (SmolLM2-135M-Instruct) is tested in tests/realweights."""
from __future__ import annotations

import sys

import pytest

from swiftops.engines.pt.checkpoint import load_model
from swiftops.protocol import ConfigError


def test_an_architecture_transformers_cannot_read_is_a_one_line_error(tmp_path, write_gguf):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(ConfigError) as caught:
        load_model(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "architecture rwkv6 is not supported" in message
    assert "llama" in message and "qwen2" in message  # what it can read instead


def test_gguf_file_spelling_reaches_the_same_loader(tmp_path, write_gguf):
    write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    with pytest.raises(ConfigError, match="architecture rwkv6 is not supported"):
        build_engine(ModelSettings(model=str(tmp_path), gguf_file="rwkv.gguf"), EngineSettings(),
                     GenerationSettings())


def test_without_the_gguf_package_it_says_what_to_install(tmp_path, monkeypatch, write_gguf):
    path = write_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: `import gguf` raises ImportError
    with pytest.raises(ConfigError, match=r"needs the gguf package; run pip install 'swiftops\[gguf\]'"):
        load_model(path)


def test_quantizing_a_gguf_again_is_refused(tmp_path, write_gguf):
    path = write_gguf(tmp_path / "m.gguf", "llama")
    with pytest.raises(ConfigError, match="dequantized on load; drop --quant_method"):
        load_model(path, quant_method="bnb")


def test_the_gguf_memo_is_undone_after_a_load(tmp_path, write_gguf):
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(ConfigError):
        load_model(write_gguf(tmp_path / "rwkv.gguf", "rwkv6"))
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
