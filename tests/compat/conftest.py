"""Fixtures for the ms-swift compatibility tests: a tiny reward model, an adapter, and the CLI runner."""
from __future__ import annotations

import json
import os
from pathlib import Path

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



@pytest.fixture(scope="session")
def swift_trained_loras(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    """Two LoRA adapters as `swift sft` leaves them: peft files plus args.json naming the base model, the template
    and the system prompt (what ms-swift's swift/test_lora and swift/test_lora2 hold)."""
    root = tmp_path_factory.mktemp("swift-trained")
    paths = []
    for seed, name in ((1, "test_lora"), (2, "test_lora2")):
        path = make_lora_adapter(tiny_model_dir, root / name, seed=seed)
        (root / name / "args.json").write_text(json.dumps({
            "model": str(tiny_model_dir), "model_type": "qwen2_5", "template": "qwen2_5",
            "system": "You are a helpful assistant.", "train_type": "lora"}))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_model_dir):
    """A tiny BertForSequenceClassification (two labels, as ms-swift's bert-base-chinese sentiment demo) with the
    tiny tokenizer and no chat template (a classifier reads plain text)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=2,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_long_context_dir(tiny_model_dir, tmp_path_factory):
    """The tiny chat model with a 4096-token context (rotary positions work at any length): tool definitions and
    tool turns of the agent demo take more than the 512 tokens of the tiny model's config."""
    import shutil

    out = tmp_path_factory.mktemp("tiny-long") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return out


# The media the reference chapter and ms-swift's demos name by URL, and local stand-ins for them.
CAT = "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/cat.png"
ANIMAL = "http://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/animal.png"
BABY = "https://modelscope-open.oss-cn-hangzhou.aliyuncs.com/images/baby.mp4"


@pytest.fixture(scope="session")
def media_files(tmp_path_factory, sample_video_bytes):
    """{URL: local file} for the cat and sheep pictures and the baby video."""
    from PIL import Image

    root = tmp_path_factory.mktemp("reference-media")
    Image.new("RGB", (64, 48), "orange").save(root / "cat.png")
    Image.new("RGB", (48, 64), "green").save(root / "animal.png")
    (root / "baby.mp4").write_bytes(sample_video_bytes)
    return {CAT: str(root / "cat.png"), ANIMAL: str(root / "animal.png"), BABY: str(root / "baby.mp4")}


@pytest.fixture()
def media_urls(media_server, media_files):
    """{URL: the same file served by a local HTTP server} (servers fetch URLs; loopback stands in for the OSS bucket)."""
    mapping = {}
    for url, path in media_files.items():
        name = "/" + path.rsplit("/", 1)[1]
        kind = "video/mp4" if name.endswith(".mp4") else "image/png"
        with open(path, "rb") as f:
            media_server.routes[name] = (200, {"Content-Type": kind}, f.read())
        mapping[url] = media_server.url(name)
    return mapping


@pytest.fixture(scope="session")
def grounding_lora_dir(tiny_vlm_dir, tmp_path_factory):
    """A LoRA adapter for the tiny VLM's language model with args.json as `swift sft` writes it for a grounding
    run (ms-swift's swift/test_grounding): base model, template and norm_bbox."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(3)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                  target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)  # peft's random B is tiny: make the adapter change greedy answers
    out = tmp_path_factory.mktemp("grounding") / "test_grounding"
    peft_model.save_pretrained(out)
    (out / "args.json").write_text(json.dumps({"model": str(tiny_vlm_dir), "template": "qwen2_5_vl",
                                               "norm_bbox": "norm1000", "train_type": "lora"}))
    return out


VLLM_FAKE = Path(__file__).resolve().parents[1] / "engines" / "vllm" / "fake_lib"


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.gpu)])
def vllm_env(request, monkeypatch):
    """vLLM for what ms-swift runs with `--infer_backend vllm`: on CPU the contract fake (tests/engines/vllm/fake_lib:
    what reaches vLLM and what comes back, a scripted "Hello there, I am a tiny fake model."), on a GPU machine the
    real library. Child processes (servers, demos) inherit the choice through PYTHONPATH."""
    if request.param == "fake":
        monkeypatch.setenv("PYTHONPATH", f"{VLLM_FAKE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return request.param
