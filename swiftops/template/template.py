"""ms-swift's template object (`get_template`, `engine.default_template`, `engine.template`) on swiftops' one
rule: prompts are built by the tokenizer's (or processor's) own chat template.

A `Template` carries what ms-swift scripts read from or set on theirs: the processor, the default system
prompt (used when a conversation has none), the chat template text (the checkpoint's, or a file's), and the
agent template's keywords (`template.agent_template.keyword.observation`, the stop word of ReAct-style tools).
ms-swift's template *names* (qwen2_5, llama3...) pick a hand-written template there; here the checkpoint's own
template is the one that matches the model, so a name is recorded (`template_type`) and the checkpoint's template
is used; a .jinja file (or a JSON file with chat_template) replaces it, as `--template FILE` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftops.protocol import InferRequest

logger = logging.getLogger(__name__)

# `use_chat_template=False` (ms-swift's flag for base models): the conversation's text as it is, no role markers.
GENERATION_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


@dataclass(frozen=True)
class AgentKeyword:
    """The ReAct keywords ms-swift's agent templates parse (and stop on: `keyword.observation`)."""

    action: str = "Action:"
    action_input: str = "Action Input:"
    observation: str = "Observation:"


@dataclass
class AgentTemplate:
    """The tool-call format: swiftops parses hermes `<tool_call>`, Mistral and Llama JSON calls from the answer
    (swiftops.template.tool_calls); the keywords are ms-swift's, for scripts that stop on the observation."""

    name: str = "hermes"
    keyword: AgentKeyword = field(default_factory=AgentKeyword)


def _hermes() -> AgentTemplate:
    return AgentTemplate("hermes")


# ms-swift's `from swift.plugin import agent_templates` (4.x: agent_template_map): the formats swiftops parses.
agent_templates = {"hermes": _hermes}
agent_template_map = agent_templates


@dataclass
class Template:
    """What `get_template` returns and `engine.default_template` holds."""

    processor: Any = None
    default_system: str | None = None
    template_type: str | None = None
    chat_template: str | None = None  # None: the processor's own
    agent_template: AgentTemplate = field(default_factory=AgentTemplate)
    max_length: int | None = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def apply(self, request: InferRequest) -> InferRequest:
        """The request with the default system prompt added when it has no system turn of its own."""
        if not self.default_system or request.prompt is not None or not request.messages:
            return request
        if request.messages[0].get("role") == "system":
            return request
        return request.model_copy(
            update={"messages": [{"role": "system", "content": self.default_system}, *request.messages]}
        )


def _chat_template_of(template_type: str | None) -> str | None:
    """A file's chat template (what `--template FILE` reads); None for a name (the checkpoint's own is used)."""
    if template_type and Path(template_type).expanduser().is_file():
        from swiftops.template.template_file import read_chat_template

        return read_chat_template(template_type)
    if template_type:
        logger.info(
            "template %r: swiftops uses the checkpoint's own chat template (ms-swift's named templates "
            "are built to match it)",
            template_type,
        )
    return None


def get_template(
    *args: Any,
    default_system: str | None = None,
    template_type: str | None = None,
    max_length: int | None = None,
    use_chat_template: bool = True,
    **_ignored: Any,
) -> Template:
    """ms-swift 3.x's `get_template(template_type, processor, default_system=None, ...)` and 4.x's
    `get_template(processor, default_system=None, template_type=...)`."""
    rest = list(args)
    if rest and (rest[0] is None or isinstance(rest[0], str)):  # 3.x: the template name comes first
        template_type = rest.pop(0) or template_type
    if not rest:
        raise TypeError("get_template needs the processor (engine.processor or a tokenizer)")
    processor = rest.pop(0)
    if rest:
        default_system = rest.pop(0)
    chat_template = GENERATION_TEMPLATE if not use_chat_template else _chat_template_of(template_type)
    return Template(
        processor=processor,
        default_system=default_system,
        template_type=template_type,
        chat_template=chat_template,
        max_length=max_length,
    )
