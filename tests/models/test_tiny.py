"""The tiny random models: loadable offline, round-tripping tokenizer, Qwen2.5's ChatML, deterministic weights."""
from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from swiftops.cli.main import cli
from swiftops.models.tiny import build_tiny_model
from swiftops.protocol.errors import ConfigError

ROUND_TRIP_TEXTS = [
    "Hello, world! How are you today?",
    "  leading spaces and trailing  ",
    "你好，世界！今天天气怎么样？",
    "emoji: 🤖🎉👍🏽 and flags 🇨🇳",
    "def f(x):\n\treturn x ** 2  # 12345\r\n",
    "Ünïcödé ÿ ☃ 𝔘 \u200b \x00\x7f",
]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_tokenizers(*model_dirs):
    return [AutoTokenizer.from_pretrained(model_dir) for model_dir in model_dirs]


@pytest.mark.parametrize("fixture, model_class", [("tiny_model_dir", "Qwen2ForCausalLM"),
                                                   ("tiny_llama_dir", "LlamaForCausalLM")])
def test_loads_offline_and_generates(request, fixture, model_class):
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == model_class
    assert model.dtype == torch.float32
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.max_position_embeddings) == (4, 2, 512)
    assert config.vocab_size == len(tokenizer)
    assert config.eos_token_id == model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.generation_config.do_sample is False
    assert 1000 <= len(tokenizer) <= 2000

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=30, do_sample=False)
    new_tokens = out[0, ids.shape[1]:].tolist()
    # Peaky but not degenerate: a full-length answer that is not one token repeated.
    assert len(new_tokens) == 30 and len(set(new_tokens)) > 10


def test_greedy_decoding_is_peaky_varied_and_long(tiny_model_dir):
    """Engine tests compare batched and single greedy outputs: the top-1 logit must stand clear of the
    runner-up so float rounding cannot flip it, while outputs still differ per prompt and run long."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["Hello, who are you?", "What is 2+2?", "你好，请介绍一下你自己。", "def main():", "hi", "Why is the sky blue?"]
    gaps, outputs = [], []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=30, do_sample=False, output_scores=True, return_dict_in_generate=True)
        outputs.append(tuple(out.sequences[0, ids.shape[1]:].tolist()))
        for scores in out.scores:  # [1, vocab] per step
            top2 = scores[0].topk(2).values
            gaps.append((top2[0] - top2[1]).item())
    gaps = torch.tensor(gaps)
    assert gaps.median() > 0.5 and (gaps > 0.1).float().mean() > 0.85
    assert len(set(outputs)) == len(prompts)
    assert all(len(tokens) == 30 and tokenizer.eos_token_id not in tokens for tokens in outputs)


def test_tokenizer_round_trips_any_text(tiny_model_dir, tiny_llama_dir):
    tokenizer, llama_tokenizer = load_tokenizers(tiny_model_dir, tiny_llama_dir)
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=True)
        assert tokenizer.decode(ids) == text
        assert llama_tokenizer.encode(text, add_special_tokens=True) == ids
    # NFC like Qwen2.5: a decomposed accent comes back composed.
    assert tokenizer.decode(tokenizer.encode("e\u0301")) == "\u00e9"
    # Template tokens are single ids; <tool_call> survives skip_special_tokens like in Qwen2.5.
    ids = tokenizer.encode("<|im_start|>user\n<tool_call>x</tool_call><|im_end|>")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n<tool_call>x</tool_call>"


def test_chat_template_is_chatml_with_default_system(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "你好"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    with_system = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *messages[:1]],
                                                tokenize=False, add_generation_prompt=False)
    assert with_system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_chat_template_renders_tools_like_qwen2_5(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 21C"},
        {"role": "tool", "content": "wind 5 km/h"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(WEATHER_TOOL, ensure_ascii=False) +
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response>\n<tool_response>\nwind 5 km/h\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_same_seed_gives_identical_weights(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", arch="qwen2", seed=0)
    other_seed = build_tiny_model(tmp_path / "other", arch="qwen2", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(again / name) == sha256(tiny_model_dir / name)
    assert sha256(other_seed / "model.safetensors") != sha256(tiny_model_dir / "model.safetensors")


def test_refuses_a_directory_that_is_not_a_tiny_model(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_writes_a_model_and_errors_on_a_bad_dir(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["tiny-model", str(tmp_path / "m"), "--arch", "llama", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "m")
    assert "gibberish" in result.stderr and "--model" in result.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    # Rebuilding over a tiny model is allowed (same seed: same weights).
    before = sha256(tmp_path / "m" / "model.safetensors")
    assert runner.invoke(cli, ["tiny-model", str(tmp_path / "m"), "--arch", "llama", "--seed", "3"]).exit_code == 0
    assert sha256(tmp_path / "m" / "model.safetensors") == before

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2\n")
    result = runner.invoke(cli, ["tiny-model", str(tmp_path / "data")])
    assert isinstance(result.exception, ConfigError)


def test_cli_exits_2_with_one_line_on_a_bad_dir(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n")
    result = subprocess.run([sys.executable, "-m", "swiftops.cli.main", "tiny-model", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parents[2])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "not empty" in result.stderr
    assert "Traceback" not in result.stderr
