"""`PtClassifierEngine`: sequence classification, reward models and process reward models.

What a response carries (ms-swift's convention, in OpenAI's shape; `choices[0].message.content` is text):

* reward (one output label, e.g. a `*ForSequenceClassification` reward model): `content` is the score of the
  whole conversation, a float as text ("0.8125"); `float(content)` gets it back.
* seq_cls (several labels): `content` is the predicted label's index as text ("2"), as ms-swift returns it;
  `logprobs.content[0]` holds the predicted label's name and log-probability, and its `top_logprobs`
  every label with its log-probability (names from the config's id2label).
* prm (a per-token classifier such as Qwen2.5-Math-PRM, or any `*ForTokenClassification`): the last
  assistant message is split into steps at blank lines ("\\n\\n"), the model's step separator token is put
  after each step, and `content` is a JSON list of one score per step ("[0.93, 0.12]"): the probability
  of the positive label (index 1) at each separator, or a sigmoid for a single label.

The conversation goes through the tokenizer's chat template when it has one (no generation prompt: the
answer being scored is part of it); otherwise the messages' texts are joined by newlines.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any, cast

from swiftops.engines.pt.embedding import TextEncoderEngine
from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionTokenLogprob,
    ChatMessage,
    ChoiceLogprobs,
    ConfigError,
    InferRequest,
    PromptTooLongError,
    RequestConfig,
    TopLogprob,
    UnsupportedError,
    UsageInfo,
)
from swiftops.protocol.settings import EngineSettings, ModelSettings
from swiftops.template.chat_template import normalize_messages

STEP_SEPARATOR = "\n\n"
# Qwen2.5-Math-PRM marks the end of each step with this token; models without it get a newline token.
PRM_STEP_TOKENS = ("<extra_0>",)


class PtClassifierEngine(TextEncoderEngine):
    """`PtClassifierEngine(path, task_type="reward")`: one score per conversation (or per step with "prm")."""

    max_model_len: int  # known once the model is loaded (the interface allows None for backends that do not know it)

    def _setup(self, settings: ModelSettings, engine: EngineSettings, served_model_name: str | None) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from swiftops.engines.pt.checkpoint import check_model_source, device_map_arg, resolve_dtype
        from swiftops.engines.pt.task import detect_task_type

        model, max_model_len = settings.model or "", settings.max_model_len
        source = check_model_source(model)
        self.task_type = settings.task_type or detect_task_type(source)
        if self.task_type not in ("seq_cls", "reward", "prm"):
            raise ConfigError(f"task_type {self.task_type!r} is not a classifier task; use seq_cls, reward or prm")
        common: dict[str, Any] = {"revision": settings.model_revision, "trust_remote_code": settings.trust_remote_code}
        placement = {"device_map": device_map_arg(settings.device_map)} if settings.device_map else {}
        try:
            config = AutoConfig.from_pretrained(source, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **common)
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            dtype = resolve_dtype(settings.torch_dtype, self.device, config)
            if self.task_type == "prm":
                self.model = self._load_token_classifier(source, config, dtype, {**common, **placement})
            else:
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    source, dtype=dtype, **common, **placement
                )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {model} as a {self.task_type} model: {exc}") from exc
        if placement:  # inputs go where the first layers are
            self.device = next(self.model.parameters()).device
        else:
            self.model.to(self.device)
        self.model.eval()
        self.max_batch_size = engine.max_batch_size  # the server's default admission limit when set
        self.config = config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.max_model_len = max_model_len or getattr(text, "max_position_embeddings", None) or 4096
        self.model_name = served_model_name or os.path.basename(os.path.normpath(model))
        self._lock = threading.Lock()

    @staticmethod
    def _load_token_classifier(source: str, config: Any, dtype: Any, common: dict) -> Any:
        from transformers import AutoModel, AutoModelForTokenClassification

        if any(a.endswith("ForTokenClassification") for a in (config.architectures or [])):
            return AutoModelForTokenClassification.from_pretrained(source, dtype=dtype, **common)
        return AutoModel.from_pretrained(source, dtype=dtype, **common)  # e.g. Qwen2.5-Math-PRM (remote code)

    # ---- input text ------------------------------------------------------------------------------
    def render(self, request: InferRequest) -> str:
        if request.prompt is not None:
            # decode of one list of ids is one text (the tokenizer's annotation also allows batches).
            return (
                request.prompt if isinstance(request.prompt, str) else cast(str, self.tokenizer.decode(request.prompt))
            )
        messages = normalize_messages(request.messages)
        if self.task_type == "prm":
            messages = self._mark_steps(messages)
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
                return cast(str, text)  # tokenize=False: the rendered text
            except Exception as exc:
                raise BadRequestError(
                    f"the model's chat template rejected the conversation: {exc}", param="messages"
                ) from exc
        return "\n".join(str(m.get("content") or "") for m in messages)

    def step_token(self) -> str:
        vocab = self.tokenizer.get_vocab()
        return next((t for t in PRM_STEP_TOKENS if t in vocab), "\n")

    def _mark_steps(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if messages[-1]["role"] != "assistant":
            raise BadRequestError(
                "a process reward model scores the steps of the last assistant message; end the conversation with it",
                param="messages",
            )
        steps = [s.strip() for s in str(messages[-1]["content"]).split(STEP_SEPARATOR) if s.strip()]
        if not steps:
            raise BadRequestError("the assistant message has no steps to score", param="messages")
        marker = self.step_token()
        return [*messages[:-1], {**messages[-1], "content": "".join(s + marker for s in steps)}]

    # ---- scoring ---------------------------------------------------------------------------------
    def score(self, request: InferRequest) -> tuple[Any, list[int]]:
        """(logits, input ids) for one request: logits [num_labels] or, for prm, [S, num_labels]."""
        import torch

        if request.images or request.videos or request.audios:
            raise UnsupportedError("this classifier takes text only")
        text = self.render(request)
        ids = self.tokenizer(text, add_special_tokens=request.prompt is not None or not self.tokenizer.chat_template)[
            "input_ids"
        ]
        if not ids:
            raise BadRequestError("the input is empty", param="messages")
        if len(ids) > self.max_model_len:
            raise PromptTooLongError(len(ids), self.max_model_len)
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device))
            logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[0].float().cpu(), ids

    def _content(self, logits: Any, ids: list[int]) -> tuple[str, ChoiceLogprobs | None]:
        import torch

        if self.task_type == "prm":
            marker = self.tokenizer.convert_tokens_to_ids(self.step_token())
            rows = logits[[i for i, t in enumerate(ids) if t == marker]]  # [steps, labels]
            scores = torch.sigmoid(rows[:, 0]) if rows.shape[-1] == 1 else rows.softmax(-1)[:, 1]
            return json.dumps([round(float(s), 6) for s in scores]), None
        if logits.shape[-1] == 1 or self.task_type == "reward":
            return repr(float(logits[0])), None
        logprobs = logits.log_softmax(-1)
        best = int(logprobs.argmax())
        names = getattr(self.config, "id2label", None) or {}
        label = [str(names.get(i, names.get(str(i), i))) for i in range(logits.shape[-1])]
        top = [TopLogprob(token=label[i], logprob=float(logprobs[i])) for i in range(len(label))]
        entry = ChatCompletionTokenLogprob(token=label[best], logprob=float(logprobs[best]), top_logprobs=top)
        return str(best), ChoiceLogprobs(content=[entry])

    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ) -> ChatCompletionResponse:
        if request_config is not None and request_config.stream:
            raise UnsupportedError(f"a {self.task_type} model does not stream; send stream=false")
        logits, ids = await asyncio.to_thread(self.score, request)
        content, logprobs = self._content(logits, ids)
        choice = ChatCompletionResponseChoice(
            index=0, message=ChatMessage(role="assistant", content=content), finish_reason="stop", logprobs=logprobs
        )
        return ChatCompletionResponse(
            model=self.model_name, choices=[choice], usage=UsageInfo(prompt_tokens=len(ids), total_tokens=len(ids))
        )
