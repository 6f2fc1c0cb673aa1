"""The one definition of sampling defaults: request > engine defaults (GenerationSettings) > checkpoint > built-in."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from swiftops.engines.prompt_checks import check_logit_token_ids
from swiftops.protocol import BadRequestError, RequestConfig
from swiftops.protocol.sampling import (
    ENGINE_DEFAULTS,
    effective_config,
    model_sampling_defaults,
    wants_logprobs,
)
from swiftops.protocol.settings import GenerationSettings

SAMPLING_MODEL = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.8}


def test_built_in_values_when_nothing_is_set():
    config = effective_config(RequestConfig(), GenerationSettings())
    assert (config.max_tokens, config.temperature, config.top_k, config.top_p, config.repetition_penalty) == \
        (None, 0.0, None, 1.0, 1.0)
    assert (config.seed, config.stop, config.logprobs, config.top_logprobs) == (None, [], False, 0)


def test_engine_defaults_fill_what_the_request_leaves_unset():
    g = GenerationSettings(max_new_tokens=20, temperature=0.3, top_k=5, top_p=0.7, repetition_penalty=1.2, seed=4,
                           stop_words=["END", ""], top_logprobs=2)
    config = effective_config(RequestConfig(), g, SAMPLING_MODEL)
    assert (config.max_tokens, config.temperature, config.top_k, config.top_p, config.repetition_penalty) == \
        (20, 0.3, 5, 0.7, 1.2)
    assert (config.seed, config.stop, config.logprobs, config.top_logprobs) == (4, ["END"], True, 2)


def test_the_request_wins_over_engine_defaults():
    g = GenerationSettings(max_new_tokens=20, temperature=0.3, top_p=0.7, seed=4, stop_words=["END"], top_logprobs=2)
    request = RequestConfig(max_tokens=7, temperature=0.9, top_p=0.5, seed=1, stop=["x"], logprobs=True,
                            top_logprobs=0)
    config = effective_config(request, g)
    assert (config.max_tokens, config.temperature, config.top_p, config.seed, config.stop, config.top_logprobs) == \
        (7, 0.9, 0.5, 1, ["x"], 0)


def test_the_checkpoint_samples_only_when_no_temperature_is_set():
    defaults = model_sampling_defaults(SimpleNamespace(do_sample=True, temperature=0.6, top_k=20, top_p=0.8))
    assert defaults == SAMPLING_MODEL
    config = effective_config(RequestConfig(), GenerationSettings(), defaults)
    assert (config.temperature, config.top_k, config.top_p) == (0.6, 20, 0.8)
    config = effective_config(RequestConfig(top_p=0.9), GenerationSettings(), defaults)
    assert (config.temperature, config.top_k, config.top_p) == (0.6, 20, 0.9)
    # a temperature from the request or the engine: the checkpoint's top_k/top_p do not apply
    config = effective_config(RequestConfig(), GenerationSettings(temperature=0.5), defaults)
    assert (config.temperature, config.top_k, config.top_p) == (0.5, None, 1.0)
    # a checkpoint that does not sample is greedy
    assert model_sampling_defaults(SimpleNamespace(do_sample=False, temperature=0.6)) == {}
    assert effective_config(RequestConfig(), GenerationSettings(), {}).temperature == 0.0


def test_top_logprobs_imply_logprobs_from_either_side():
    assert wants_logprobs(RequestConfig(top_logprobs=3), GenerationSettings())
    assert wants_logprobs(RequestConfig(), GenerationSettings(top_logprobs=0))
    assert wants_logprobs(RequestConfig(), GenerationSettings(logprobs=True))
    assert not wants_logprobs(RequestConfig(), GenerationSettings())


def test_applying_the_defaults_twice_changes_nothing():
    g = GenerationSettings(max_new_tokens=20, temperature=0.3, stop_words=["END"], logprobs=True)
    once = effective_config(RequestConfig(n=2), g, SAMPLING_MODEL)
    assert effective_config(once, g, SAMPLING_MODEL) == once


def test_every_generation_setting_is_a_request_default_or_named_otherwise():
    # system is a prompt default; num_beams is the CLI's per-run choice (beam search answers whole, so a
    # server-wide default would break streaming requests).
    assert set(GenerationSettings.model_fields) == set(ENGINE_DEFAULTS.values()) | {"system", "num_beams"}
    assert set(ENGINE_DEFAULTS) <= set(RequestConfig.model_fields)


def test_token_ids_that_index_the_logits_must_be_in_the_vocabulary():
    check_logit_token_ids(RequestConfig(logit_bias={0: 1, 99: -1}), vocab_size=100)
    check_logit_token_ids(RequestConfig(), vocab_size=100)
    with pytest.raises(BadRequestError, match="vocabulary of 100: 100, 5000") as error:
        check_logit_token_ids(RequestConfig(logit_bias={100: 1, 5000: 1, 3: 1}), vocab_size=100)
    assert error.value.param == "logit_bias"
