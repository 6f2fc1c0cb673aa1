"""What a caller asks an engine for: `InferRequest`, `RequestConfig`, `AdapterRequest`.

Field names and defaults follow OpenAI's chat API (and ms-swift's Python names), so code
written for ms-swift's `PtEngine` runs unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A media item: a local path, an http(s) URL, a base64 string or `data:` URI, or a PIL image.
MediaItem = Any
# OpenAI's logit_bias: token id -> a bias from -100 to 100 added to that token's logit (JSON keys are strings).
LogitBias = dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]]


class RequestConfig(BaseModel):
    """Sampling and output settings of one request (OpenAI's names)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; None: up to the engine's max_new_tokens or the context."
    )
    temperature: float | None = Field(
        None, ge=0, description="0 is greedy; None takes the model's generation_config (greedy if it does not sample)."
    )
    top_k: int | None = Field(None, description="Keep the k most likely tokens (-1 or None: all).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass (None: 1.0).")
    min_p: float = Field(
        0.0, ge=0, le=1, description="Drop tokens less likely than min_p x the most likely one (0: off)."
    )
    repetition_penalty: float | None = Field(
        None, gt=0, description="HF-style penalty on tokens already in the prompt or output (1.0: none)."
    )
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI presence penalty on generated tokens.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI frequency penalty on generated tokens.")
    stop: list[str] | None = Field(None, description="Strings that end generation; they are not returned.")
    stop_token_ids: list[int] | None = Field(None, description="Token ids that end generation besides EOS.")
    ignore_eos: bool = Field(False, description="Keep generating past EOS (benchmarks with fixed output lengths).")
    logit_bias: LogitBias | None = Field(
        None,
        description="OpenAI logit_bias: token id -> bias from -100 to 100 added to the token's logit before "
        "sampling (-100 all but bans the token, 100 all but forces it).",
    )
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Makes sampling reproducible for this request (a 64-bit integer)."
    )
    stream: bool = Field(False, description="Return an iterator of chunks instead of one response.")
    logprobs: bool = Field(False, description="Return the log-probability of each generated token.")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="Also return this many most likely tokens per position."
    )
    n: int = Field(1, ge=1, le=128, description="Number of choices to generate for the request.")
    num_beams: int = Field(
        1,
        ge=1,
        le=64,
        description="Beam search width (1: sampling or greedy). The pt backend "
        "runs beam requests through transformers' generate; "
        "vllm and lmdeploy refuse them (a 400).",
    )
    return_details: bool = Field(
        False,
        description="ms-swift's flag: responses of the Python API also carry "
        "`images_size`, the (width, height) each image had as the model "
        "saw it (grounding boxes are in those pixels).",
    )
    response_format: dict[str, Any] | None = Field(
        None,
        description="OpenAI response_format: {type: text}, {type: json_object} or {type: json_schema, "
        "json_schema: {name, schema, strict}}: the output is constrained to JSON (every backend).",
    )
    # vLLM's guided-decoding extensions; at most one of them, response_format and a forced tool_choice per request.
    guided_json: dict[str, Any] | str | None = Field(
        None, description="vLLM extension: constrain the output to this JSON Schema (an object or its JSON text)."
    )
    guided_regex: str | None = Field(None, description="vLLM extension: constrain the output to this regex.")
    guided_choice: list[str] | None = Field(
        None, description="vLLM extension: the output is exactly one of these strings."
    )
    guided_grammar: str | None = Field(
        None,
        description="vLLM extension: constrain the output to this EBNF grammar (GBNF, as xgrammar and "
        "llama.cpp read it: `root ::= ...`; not on lmdeploy).",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("top_k", mode="before")
    @classmethod
    def _top_k_all(cls, value: Any) -> Any:
        # OpenAI-style servers use -1 (vLLM) or 0 (HF) for "no top-k".
        if value is not None and int(value) <= 0:
            return None
        return value


class AdapterRequest(BaseModel):
    """Selects a LoRA adapter for a request: by name, and by path when it is not loaded yet."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Adapter name (as given to `adapters=` or `--adapters name=path`).")
    path: str | None = Field(None, description="Local path or hub id; loaded on first use.")

    def __init__(self, name: str | None = None, path: str | None = None, **data: Any) -> None:
        # Positional too, as ms-swift's dataclass takes them: AdapterRequest('lora1', 'path/to/lora1').
        if name is not None:
            data["name"] = name
        if path is not None:
            data["path"] = path
        super().__init__(**data)


class InferRequest(BaseModel):
    """One conversation (or a raw prompt) to answer."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    messages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="OpenAI-style messages: role plus content as a string or a list of content parts.",
    )
    images: list[MediaItem] = Field(default_factory=list, description="Media for `<image>` tags, in order.")
    videos: list[MediaItem] = Field(default_factory=list, description="Media for `<video>` tags, in order.")
    audios: list[MediaItem] = Field(default_factory=list, description="Media for `<audio>` tags, in order.")
    tools: list[dict[str, Any]] | None = Field(None, description="OpenAI tool definitions passed to the chat template.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="OpenAI tool_choice; 'none' drops tools.")
    prompt: str | list[int] | None = Field(
        None, description="A raw prompt (text or token ids) used as is, with no chat template (OpenAI completions)."
    )

    @model_validator(mode="after")
    def _one_input(self) -> InferRequest:
        if self.prompt is None and not self.messages:
            raise ValueError("an InferRequest needs `messages` (a non-empty list) or a raw `prompt`")
        if self.prompt is not None and self.messages:
            raise ValueError("give either `messages` or `prompt`, not both")
        return self
