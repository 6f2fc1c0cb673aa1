"""Flags generated from the settings models: spellings, multi-value, bools, JSON, --config, env precedence."""
from __future__ import annotations

import click
import pytest

from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, InferSettings, ModelSettings

MODELS = (ModelSettings, EngineSettings, GenerationSettings, InferSettings)


@click.command(cls=SettingsCommand)
@settings_options(*MODELS)
def probe(**values):
    """A command that hands its built settings back to the test."""
    return build_settings(values, *MODELS)


def parse(*argv: str):
    return probe.main(list(argv), standalone_mode=False)


@pytest.fixture(autouse=True)
def no_swiftops_env(monkeypatch):
    import os
    for name in list(os.environ):
        if name.startswith("SWIFTOPS_"):
            monkeypatch.delenv(name)


def test_defaults_come_from_the_models():
    model, engine, generation, infer = parse()
    assert model == ModelSettings() and engine == EngineSettings()
    assert generation == GenerationSettings() and infer == InferSettings()


def test_underscore_and_dash_spellings():
    _, engine, generation, _ = parse("--max_batch_size", "3", "--max-new-tokens", "7")
    assert engine.max_batch_size == 3
    assert generation.max_new_tokens == 7


@pytest.mark.parametrize("argv, expected", [
    ((), None), (("--stream",), True), (("--stream", "true"), True), (("--stream", "false"), False),
    (("--stream", "--max_batch_size", "2"), True), (("--stream", "False"), False),
])
def test_bool_forms(argv, expected):
    assert parse(*argv)[3].stream is expected


def test_multi_value_after_one_flag_and_repeated_flag():
    model, _, generation, infer = parse("--adapters", "a=/x", "/loras/b", "--stream", "--stop_words", "x", "y",
                                        "--val_dataset", "f1.jsonl", "--val-dataset", "f2.jsonl")
    assert model.adapters == {"a": "/x", "b": "/loras/b"}
    assert generation.stop_words == ["x", "y"]
    assert infer.val_dataset == ["f1.jsonl", "f2.jsonl"]
    assert infer.stream is True


def test_dict_field_accepts_json():
    model = parse("--adapters", '{"sql": "/loras/sql", "chat": "org/chat"}')[0]
    assert model.adapters == {"sql": "/loras/sql", "chat": "org/chat"}


def test_help_text_is_the_field_description():
    help_text = probe.get_help(click.Context(probe))
    assert "--max_batch_size" in help_text
    assert "--max-batch-size" not in help_text  # accepted, but --help shows ms-swift's spelling only
    assert "Most sequences decoded together" in help_text


def test_config_file_with_dash_and_underscore_keys(tmp_path):
    config = tmp_path / "infer.yaml"
    config.write_text("model: /models/x\nmax-batch-size: 4\nstop_words: [a, b]\nport: 9000\n")
    model, engine, generation, _ = parse("--config", str(config))
    assert model.model == "/models/x" and engine.max_batch_size == 4 and generation.stop_words == ["a", "b"]


def test_precedence_config_then_env_then_flag(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("max_batch_size: 4\ntemperature: 0.5\ntop_k: 3\n")
    monkeypatch.setenv("SWIFTOPS_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("SWIFTOPS_TEMPERATURE", "0.7")
    _, engine, generation, _ = parse("--config", str(config), "--temperature", "0.9")
    assert engine.max_batch_size == 5  # env beats config
    assert generation.temperature == 0.9  # flag beats env
    assert generation.top_k == 3  # config alone


def test_env_lists_and_bools(monkeypatch):
    monkeypatch.setenv("SWIFTOPS_VAL_DATASET", "a.jsonl 'b c.jsonl'")
    monkeypatch.setenv("SWIFTOPS_LOGPROBS", "true")
    _, _, generation, infer = parse()
    assert infer.val_dataset == ["a.jsonl", "b c.jsonl"]
    assert generation.logprobs is True


def test_bad_value_names_the_flag():
    with pytest.raises(ConfigError, match=r"^--max_batch_size: .*greater than or equal to 1"):
        parse("--max_batch_size", "0")


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("SWIFTOPS_TOP_P", "2")
    with pytest.raises(ConfigError, match=r"--top_p \(from SWIFTOPS_TOP_P\)"):
        parse()


def test_unknown_config_key_suggests_a_field(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_bach_size: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'max_batch_size'"):
        parse("--config", str(config))


def test_unknown_flag_is_a_click_error_with_suggestion():
    with pytest.raises(click.NoSuchOption) as caught:
        parse("--max_bach_size", "3")
    assert "Did you mean" in caught.value.format_message()
    assert "--max_batch_size" in caught.value.format_message()


def test_bad_choice_is_rejected_by_click():
    with pytest.raises(click.BadParameter, match="pt"):
        parse("--infer_backend", "tgi")
