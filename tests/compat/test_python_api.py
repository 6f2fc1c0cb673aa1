"""ms-swift's Python helpers that its demos call (issue 18, item 10): templates, checkpoint args, snapshots."""
from __future__ import annotations

import json

import pytest

from swiftops import BaseArguments, InferRequest, PtEngine, RequestConfig, get_template, safe_snapshot_download
from swiftops.protocol.errors import ConfigError

GREEDY = RequestConfig(max_tokens=8, temperature=0)
USER = [{"role": "user", "content": "who are you?"}]


def answer(engine, messages, **kwargs) -> str:
    return engine.infer([InferRequest(messages=messages)], GREEDY, **kwargs)[0].choices[0].message.content


def test_templates_default_system_per_call_and_per_engine(tiny_model_dir, tmp_path):
    system = [{"role": "system", "content": "You are a pirate."}]
    with PtEngine(str(tiny_model_dir)) as engine:
        with_system, without = answer(engine, system + USER), answer(engine, USER)
        assert with_system != without
        template = get_template("qwen2_5", engine.processor, "You are a pirate.")  # 3.x argument order
        assert template.template_type == "qwen2_5" and template.processor is engine.processor
        assert answer(engine, USER, template=template) == with_system
        assert answer(engine, USER) == without  # per call only
        engine.default_template = get_template(engine.processor, "You are a pirate.")  # 4.x order
        assert engine.template is engine.default_template and answer(engine, USER) == with_system
        assert engine.default_template.agent_template.keyword.observation == "Observation:"
        # a .jinja file as the template: the engine's chat template changes
        (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
        engine.default_template = get_template(str(tmp_path / "plain.jinja"), engine.processor)
        assert engine.tokenizer.chat_template.startswith("{% for m in messages %}")


def test_base_arguments_and_safe_snapshot_download(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "checkpoint-10"
    ckpt.mkdir()
    (ckpt / "args.json").write_text(json.dumps({"model": str(tiny_model_dir), "template": "qwen2_5",
                                                "system": "S", "norm_bbox": "norm1000"}))
    assert safe_snapshot_download(str(ckpt)) == str(ckpt)
    args = BaseArguments.from_pretrained(str(ckpt))
    assert (args.model, args.template, args.system, args.norm_bbox) == (str(tiny_model_dir), "qwen2_5", "S",
                                                                        "norm1000")
    assert args.max_length is None  # keys args.json lacks
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no args.json"):
        BaseArguments.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="cannot fetch no-such-org/no-such-lora from Hugging Face"):
        safe_snapshot_download("no-such-org/no-such-lora")  # offline here: one line, no traceback
