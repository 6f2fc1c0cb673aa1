"""OpenAI wire requests (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) and their
conversion to the engines' `InferRequest` / `RequestConfig`.

The field names, types and ranges follow OpenAI's API reference; a few vLLM extensions are accepted
(top_k, repetition_penalty, ignore_eos, stop_token_ids, guided_json, guided_regex, guided_choice,
guided_grammar), and ms-swift's top-level `images`, `videos` and `audios` lists. Unknown fields are rejected
(422) so that a typo is not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from swiftops.protocol.request import InferRequest, LogitBias, RequestConfig

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Part(BaseModel):
    # Parts keep fields we do not model (e.g. a provider's `cache_control`), as OpenAI does.
    model_config = ConfigDict(extra="allow")


class TextPart(_Part):
    type: Literal["text"] = Field(description="A text part.")
    text: str = Field(description="The text.")


class ImageUrl(_Part):
    url: str = Field(description="http(s) URL, `data:image/...;base64,` URI, or (when allowed) a local path.")
    detail: str | None = Field(None, description="OpenAI's detail hint; accepted and ignored.")


class ImageUrlPart(_Part):
    type: Literal["image_url"] = Field(description="An image given by URL or data URI.")
    image_url: ImageUrl | str = Field(description="The image's URL (an object with `url`, or the URL itself).")


class VideoUrl(_Part):
    url: str = Field(description="http(s) URL, `data:video/...;base64,` URI, or (when allowed) a local path.")


class VideoUrlPart(_Part):
    type: Literal["video_url"] = Field(description="A video given by URL or data URI (vLLM's extension).")
    video_url: VideoUrl | str = Field(description="The video's URL.")


class InputAudio(_Part):
    data: str = Field(description="Base64-encoded audio.")
    format: str = Field(description="Audio format, e.g. wav or mp3.")


class InputAudioPart(_Part):
    type: Literal["input_audio"] = Field(description="Base64 audio, as OpenAI sends it.")
    input_audio: InputAudio = Field(description="The audio data and its format.")


class AudioUrlPart(_Part):
    type: Literal["audio_url"] = Field(description="An audio clip given by URL or data URI (vLLM's extension).")
    audio_url: VideoUrl | str = Field(description="The audio's URL.")


class MediaPart(_Part):
    """ms-swift's spelling: `{"type": "image", "image": "<url, path or base64>"}` (and video, audio)."""

    type: Literal["image", "video", "audio"] = Field(description="Media kind.")
    image: str | None = Field(None, description="The image (URL, data URI, base64 or local path).")
    video: str | None = Field(None, description="The video (URL, data URI, base64 or local path).")
    audio: str | None = Field(None, description="The audio (URL, data URI, base64 or local path).")

    @model_validator(mode="after")
    def _has_its_media(self) -> MediaPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a content part of type {self.type!r} needs a {self.type!r} field")
        return self


def _part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "media" if kind in ("image", "video", "audio") else kind


# Discriminated on `type`, so a bad part gets one clear error instead of one per union member.
ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ImageUrlPart, Tag("image_url")]
    | Annotated[VideoUrlPart, Tag("video_url")]
    | Annotated[InputAudioPart, Tag("input_audio")]
    | Annotated[AudioUrlPart, Tag("audio_url")]
    | Annotated[MediaPart, Tag("media")],
    Discriminator(_part_kind),
]


class ChatMessageParam(_WireModel):
    role: Role = Field(description="Who wrote the message; `developer` is treated as `system`.")
    content: str | list[ContentPart] | None = Field(
        None, description="The text, or a list of content parts (text, image_url, input_audio, ...)."
    )
    name: str | None = Field(None, description="Participant name (passed to the chat template).")
    tool_calls: list[dict[str, Any]] | None = Field(None, description="Tool calls an assistant message made.")
    tool_call_id: str | None = Field(None, description="For a `tool` message: the call it answers.")
    reasoning_content: str | None = Field(None, description="An assistant's reasoning (passed to the template).")

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        if data["role"] == "developer":  # OpenAI's newer name for the system role
            data["role"] = "system"
        return data


class StreamOptions(_WireModel):
    include_usage: bool = Field(False, description="Send a last chunk with empty `choices` and the `usage`.")
    continuous_usage_stats: bool = Field(False, description="vLLM's option; accepted and ignored.")


class _SamplingParams(_WireModel):
    """Fields shared by chat and text completions."""

    model: str | None = Field(
        None, description="Served model name or adapter name (see GET /v1/models); omitted: the base model."
    )
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False, description="Sampling temperature; 0 is greedy."
    )
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: keep the k most likely tokens (-1: all).")
    min_p: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="vLLM extension: drop tokens less likely than min_p x the most likely one.",
    )
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, allow_inf_nan=False, description="vLLM extension: HF-style repetition penalty (1: none)."
    )
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False, description="OpenAI presence penalty.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False, description="OpenAI frequency penalty.")
    stop: str | list[str] | None = Field(None, description="Up to 16 strings that end generation.")
    stop_token_ids: list[int] | None = Field(None, description="vLLM extension: token ids that end generation.")
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="Makes sampling reproducible (an int64).")
    n: int = Field(1, ge=1, le=128, description="Number of choices to generate.")
    stream: bool = Field(False, description="Stream chunks as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options (`include_usage`).")
    user: str | None = Field(None, description="End-user id; recorded in the access log, otherwise ignored.")
    logit_bias: LogitBias | None = Field(
        None, description="Token id (as a string) -> bias from -100 to 100 added to that token's logit."
    )
    guided_json: dict[str, Any] | str | None = Field(
        None, description="vLLM extension: constrain the output to this JSON Schema."
    )
    guided_regex: str | None = Field(None, description="vLLM extension: constrain the output to this regex.")
    guided_choice: list[str] | None = Field(None, description="vLLM extension: the output is one of these strings.")
    guided_grammar: str | None = Field(
        None, description="vLLM extension: constrain the output to this EBNF grammar (GBNF: `root ::= ...`)."
    )

    @model_validator(mode="after")
    def _check_common(self) -> _SamplingParams:
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("`stop` takes at most 16 strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed with `stream: true`")
        return self

    def _config(self, max_tokens: int | None, logprobs: bool, top_logprobs: int | None) -> RequestConfig:
        return RequestConfig(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            logit_bias=self.logit_bias,
            seed=self.seed,
            n=self.n,
            stream=self.stream,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            guided_json=self.guided_json,
            guided_regex=self.guided_regex,
            guided_choice=self.guided_choice,
            guided_grammar=self.guided_grammar,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingParams):
    """Body of POST /v1/chat/completions."""

    messages: list[ChatMessageParam] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens; wins when both are given."
    )
    logprobs: bool = Field(False, description="Return the log-probability of each generated token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token (needs logprobs).")
    tools: list[dict[str, Any]] | None = Field(None, description="Tool (function) definitions for the template.")
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = Field(
        None, description="`none` drops the tools; `auto`/`required` or a named function keep them."
    )
    parallel_tool_calls: bool | None = Field(None, description="Accepted for compatibility; ignored.")
    response_format: dict[str, Any] | None = Field(
        None,
        description="{type: text | json_object | json_schema}; the JSON modes constrain the output "
        "(json_schema: {name, schema, strict}).",
    )
    images: list[str] = Field(default_factory=list, description="ms-swift extension: media for `<image>` tags.")
    videos: list[str] = Field(default_factory=list, description="ms-swift extension: media for `<video>` tags.")
    audios: list[str] = Field(default_factory=list, description="ms-swift extension: media for `<audio>` tags.")
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None,
        max_length=16,
        description="Accepted for compatibility and ignored; OpenAI's limits apply (16 keys, "
        "keys up to 64 characters, values up to 512).",
    )
    store: bool | None = Field(None, description="Accepted for compatibility; ignored (nothing is stored).")

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        if self.response_format and self.response_format.get("type", "text") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise ValueError(
                f"response_format type {self.response_format.get('type')!r} is not one of text, "
                "json_object, json_schema"
            )
        return self

    def to_infer_request(self) -> InferRequest:
        return InferRequest(
            messages=[m.to_dict() for m in self.messages],
            tools=self.tools,
            tool_choice=self.tool_choice,
            images=list(self.images),
            videos=list(self.videos),
            audios=list(self.audios),
        )

    def to_request_config(self) -> RequestConfig:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        config = self._config(max_tokens, self.logprobs, self.top_logprobs if self.logprobs else None)
        config.response_format = self.response_format
        return config


class CompletionRequest(_SamplingParams):
    """Body of POST /v1/completions: a raw prompt, no chat template."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="The prompt: text, several texts, token ids, or several lists of token ids."
    )
    max_tokens: int | None = Field(16, ge=1, description="Most tokens to generate (OpenAI's default: 16).")
    echo: bool = Field(False, description="Return the prompt before the completion.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Log-probabilities of this many most likely tokens per position."
    )
    suffix: str | None = Field(None, description="Not supported: must be empty.")
    best_of: int | None = Field(None, ge=1, description="Only best_of == n is supported.")

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("`prompt` must not be empty")
        if isinstance(self.prompt, list) and any(isinstance(p, list) and not p for p in self.prompt):
            raise ValueError("`prompt` must not hold an empty list of token ids")
        if self.suffix:
            raise ValueError("`suffix` is not supported by this server; remove it")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("`best_of` other than `n` is not supported; remove it")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts (one text or one list of token ids each)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(cast("list[int]", self.prompt))]  # one prompt of token ids (the all() check narrows it)
        return list(cast("list[str] | list[list[int]]", self.prompt))

    def to_infer_requests(self) -> list[InferRequest]:
        return [InferRequest(prompt=p) for p in self.prompts]

    def to_request_config(self) -> RequestConfig:
        wants_logprobs = self.logprobs is not None
        return self._config(self.max_tokens, wants_logprobs, self.logprobs if wants_logprobs else None)


class EmbeddingRequest(_WireModel):
    """Body of POST /v1/embeddings."""

    model: str | None = Field(None, description="Served model name; omitted: the base model.")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, several texts, token ids, or several lists of token ids to embed."
    )
    encoding_format: Literal["float", "base64"] = Field("float", description="float lists or base64 float32.")
    dimensions: int | None = Field(None, ge=1, description="Truncate embeddings to this many dimensions.")
    user: str | None = Field(None, description="End-user id; ignored.")

    @model_validator(mode="after")
    def _check_input(self) -> EmbeddingRequest:
        if isinstance(self.input, list) and len(self.input) == 0:
            raise ValueError("`input` must not be empty")
        return self

    @property
    def inputs(self) -> list[str | list[int]]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(p, int) for p in self.input):
            return [list(cast("list[int]", self.input))]  # one input of token ids (the all() check narrows it)
        return list(cast("list[str] | list[list[int]]", self.input))
