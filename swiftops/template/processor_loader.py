"""Loading a model's processor (tokenizer + image processor + chat template) with or without torchvision.

transformers 5 builds Qwen2-VL's video processor on torchvision only, and `ProcessorMixin.__init__`
refuses a processor whose video processor is missing, so `AutoProcessor` fails outright on a machine
without torchvision (our CPU test machine). There we assemble the same processor class from its parts
(the image processor's PIL backend, the tokenizer, the chat template) with `video_processor=None`;
videos are then turned into `pixel_values_videos` by `swiftops.template.multimodal` from decoded frames.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from swiftops.protocol.errors import ConfigError


@contextlib.contextmanager
def _video_processor_optional() -> Iterator[None]:
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):  # a None video processor is accepted as is
        if argument is None and argument_name == "video_processor":
            return None
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check  # type: ignore[method-assign]  # for one constructor call
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original  # type: ignore[method-assign]  # restores it


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def _processor_class_name(path: str) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                value = json.load(f).get("processor_class")
            if value:
                return value
    return None


def _chat_template(path: str, tokenizer: Any) -> str | None:
    file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
            return f.read()
    file = os.path.join(path, "chat_template.json")
    if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
            return json.load(f).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def build_processor(processor_class: Any, image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
    """An instance of `processor_class` without a video processor (see the module docstring)."""
    with _video_processor_optional():
        return processor_class(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=chat_template
        )


def load_processor(path: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """`AutoProcessor.from_pretrained(path)`, or (without torchvision) the same processor minus its video processor."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if torchvision_available():
        return AutoProcessor.from_pretrained(path, **common)
    try:
        return AutoProcessor.from_pretrained(path, **common)
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        class_name = _processor_class_name(path) if os.path.isdir(path) else None
        processor_class = getattr(transformers, class_name, None) if class_name else None
        if processor_class is None:
            raise ConfigError(f"cannot load the processor of {path}: {exc}") from exc
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        image_processor = AutoImageProcessor.from_pretrained(path, **common)
        return build_processor(processor_class, image_processor, tokenizer, _chat_template(path, tokenizer))


def is_multimodal_model(path: str, *, trust_remote_code: bool = False, revision: str | None = None) -> bool:
    """True for checkpoints transformers loads with AutoModelForImageTextToText (Qwen2-VL, Qwen2.5-VL, LLaVA...):
    load those with that class and `load_processor`, and encode requests with `MultimodalEncoder`."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or any(
        a.endswith("ForConditionalGeneration") and hasattr(config, "vision_config") for a in config.architectures or []
    )
