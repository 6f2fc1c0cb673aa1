"""ms-swift 3.x/4.x flag names: each alias reaches the engine's settings (and the vLLM / LMDeploy engine arguments
built from them), through flags, SWIFTOPS_* variables, --config files and manifests; flags swiftops does not take
are refused in one line with the reason, never "No such option"."""
from __future__ import annotations


import click
import pytest

from swiftops.cli.infer import SETTINGS
from swiftops.cli.options import SettingsCommand, build_settings, settings_options
from swiftops.engines.lmdeploy.args import backend_config_kwargs
from swiftops.engines.vllm.args import engine_args_kwargs
from swiftops.protocol.errors import ConfigError


@click.command(cls=SettingsCommand)
@settings_options(*SETTINGS)
def infer_flags(**values):
    """`swiftops infer`'s options; hands the built settings back."""
    return build_settings(values, *SETTINGS)


def parse(*argv: str):
    model, engine, generation, media, infer = infer_flags.main(["--model", "org/m", *argv], standalone_mode=False)
    return model, engine, generation, infer


@pytest.fixture(autouse=True)
def no_swiftops_env(monkeypatch):
    import os
    for name in list(os.environ):
        if name.startswith("SWIFTOPS_"):
            monkeypatch.delenv(name)


def vllm_kwargs(*argv):
    model, engine, generation, _ = parse(*argv)
    return engine_args_kwargs(model, engine, generation)


def lmdeploy_kwargs(*argv):
    model, engine, _, _ = parse(*argv)
    return backend_config_kwargs(model, engine, "pytorch")


@pytest.mark.parametrize("argv, key, value", [
    (("--vllm_gpu_memory_utilization", "0.55"), "gpu_memory_utilization", 0.55),
    (("--vllm_max_model_len", "4096"), "max_model_len", 4096),
    (("--vllm_tensor_parallel_size", "2"), "tensor_parallel_size", 2),
    (("--vllm_pipeline_parallel_size", "2"), "pipeline_parallel_size", 2),
    (("--vllm_data_parallel_size", "4"), "data_parallel_size", 4),
    (("--vllm_enforce_eager", "true"), "enforce_eager", True),
    (("--vllm_limit_mm_per_prompt", '{"image": 5, "video": 2}'), "limit_mm_per_prompt", {"image": 5, "video": 2}),
    (("--vllm_max_num_seqs", "7"), "max_num_seqs", 7),
    (("--max_num_seqs", "9"), "max_num_seqs", 9),
    (("--vllm_enable_prefix_caching", "false"), "enable_prefix_caching", False),
    (("--vllm_max_lora_rank", "32", "--adapters", "a=/loras/a"), "max_lora_rank", 32),
    (("--vllm-max-num-seqs", "5"), "max_num_seqs", 5),  # dash spelling too
    (("--max_length", "1024"), "max_model_len", 1024),
    (("--dtype", "float16"), "dtype", "float16"),
])
def test_vllm_flag_names_reach_vllms_engine_arguments(argv, key, value):
    got = vllm_kwargs(*argv)[key]
    assert (str(got).removeprefix("torch.") if key == "dtype" else got) == value


@pytest.mark.parametrize("argv, key, value", [
    (("--lmdeploy_tp", "2"), "tp", 2),
    (("--tp", "4"), "tp", 4),
    (("--lmdeploy_session_len", "8192"), "session_len", 8192),
    (("--session_len", "2048"), "session_len", 2048),
    (("--lmdeploy_cache_max_entry_count", "0.5"), "cache_max_entry_count", 0.5),
    (("--lmdeploy_quant_policy", "8"), "quant_policy", 8),
])
def test_lmdeploy_flag_names_reach_lmdeploys_engine_config(argv, key, value):
    assert lmdeploy_kwargs(*argv)[key] == value


def test_infer_backend_transformers_is_pt():
    assert parse("--infer_backend", "transformers")[1].infer_backend == "pt"


def test_model_and_template_flags_reach_the_model_settings(tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    model, _, generation, _ = parse("--model_type", "qwen2_5", "--template", str(template), "--use_hf", "true",
                                    "--load_args", "false", "--lora_modules", "sql=/loras/sql", "--num_beams", "3")
    assert (model.model_type, model.template, model.use_hf, model.load_args) == ("qwen2_5", str(template), True, False)
    assert model.adapters == {"sql": "/loras/sql"} and model.default_adapter is None
    assert generation.num_beams == 3


def test_a_bare_adapter_path_becomes_the_default_adapter():
    model = parse("--adapters", "sql=/loras/sql", "/ckpt/checkpoint-100")[0]
    assert model.adapters == {"sql": "/loras/sql", "checkpoint-100": "/ckpt/checkpoint-100"}
    assert model.default_adapter == "checkpoint-100"


def test_aliases_in_environment_and_config_files(monkeypatch, tmp_path):
    monkeypatch.setenv("SWIFTOPS_VLLM_GPU_MEMORY_UTILIZATION", "0.6")
    config = tmp_path / "swift.yaml"
    config.write_text("lmdeploy_tp: 2\nvllm_max_model_len: 777\n")
    model, engine, _, _ = parse("--config", str(config))
    assert (engine.gpu_memory_utilization, engine.tensor_parallel_size, model.max_model_len) == (0.6, 2, 777)


def test_aliases_in_manifests():
    from swiftops.manifest.yaml_reader import load_text

    loaded = load_text("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: m}\nspec:\n"
                       "  model: {id: org/m}\n  backend:\n    name: transformers\n"
                       "    options: {vllm_max_num_seqs: 12, lmdeploy_cache_max_entry_count: 0.4}\n")
    backend = loaded.manifest.spec.backend
    assert (backend.name, backend.options.max_batch_size, backend.options.cache_max_entry_count) == ("pt", 12, 0.4)


@pytest.mark.parametrize("argv, reason", [
    (("--infer_backend", "sglang"), "no sglang backend; use --infer_backend vllm or lmdeploy"),
    (("--metric", "acc"), "--metric is not supported: swiftops does not score results"),
    (("--truncation_strategy", "left"), "--truncation_strategy is not supported: swiftops never cuts a prompt"),
    (("--sglang_tp_size", "2"), "--sglang_tp_size is not supported"),
])
def test_refused_flags_say_why(argv, reason):
    with pytest.raises(ConfigError, match=reason.replace("-", r"\-")):
        parse(*argv)


@pytest.mark.parametrize("argv", [
    ("--truncation_strategy", "delete"), ("--truncation_strategy=delete",), ("--truncation-strategy", "delete"),
])
def test_truncation_strategy_delete_is_what_swiftops_does_and_is_taken(argv):
    # ms-swift's default value, spelled out in its scripts: the flag is dropped, the flags around it still parse
    model, _, _, _ = parse(*argv, "--max_model_len", "123")
    assert model.max_model_len == 123


def test_truncation_strategy_delete_in_a_config_file_is_taken_and_right_refused(tmp_path):
    config = tmp_path / "swift.yaml"
    config.write_text("truncation_strategy: delete\nmax_length: 321\n")
    assert parse("--config", str(config))[0].max_model_len == 321
    config.write_text("truncation_strategy: right\n")
    with pytest.raises(ConfigError, match="'truncation_strategy' is not supported: swiftops never cuts a prompt"):
        parse("--config", str(config))


def test_refused_flag_on_the_real_cli_is_one_line_and_exit_2(run_swiftops):
    done = run_swiftops("infer", "--model", "org/m", "--infer_backend", "sglang")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --infer_backend: swiftops has no sglang backend; use --infer_backend vllm or lmdeploy for an "
        "accelerated engine (or pt, the default) (got 'sglang')"]
    done = run_swiftops("infer", "--model", "org/m", "--ssl_keyfile", "k.pem")
    assert done.returncode == 2 and "No such option" not in done.stderr
    assert done.stderr.startswith("error: --ssl_keyfile is not supported: swiftops serves plain HTTP")


def test_deploy_takes_log_interval_off_and_refuses_an_interval():
    from swiftops.protocol.settings import ServerSettings

    assert ServerSettings(log_interval=-1).log_interval == -1
    with pytest.raises(ValueError, match="statistics at /metrics"):
        ServerSettings(log_interval="5")
