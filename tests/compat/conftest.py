"""Fixtures for the ms-swift compatibility tests: a tiny reward model, an adapter, and the CLI runner."""
from __future__ import annotations

import pytest

from tests.cli.conftest import run_swiftops, swiftops_cli, swiftops_process  # noqa: F401  (the same runners)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """A tiny Qwen2ForSequenceClassification with one label (a reward model), the tiny chat tokenizer and template."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config

    from swiftops.models.tiny import MODEL_SHAPE, build_tiny_model

    chat_dir = build_tiny_model(tmp_path_factory.mktemp("tiny-chat-for-reward"), arch="qwen2", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), **MODEL_SHAPE, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-reward")
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_dir(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    """A LoRA adapter for the tiny chat model whose greedy answers differ from the base model's."""
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("loras") / "my_lora", seed=1)

