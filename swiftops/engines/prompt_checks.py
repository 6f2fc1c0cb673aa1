"""The request checks only an engine can make, once the prompt is tokenized: shared by the backends, so the Python
API and the server get the same answer. (The server's checks before tokenizing are swiftops.server.validation's.)
"""

from __future__ import annotations

from swiftops.protocol import BadRequestError, InferRequest, PromptTooLongError, RequestConfig, UnsupportedError
from swiftops.protocol.sampling import LOGIT_INDEX_FIELDS


def check_prompt_length(prompt_len: int, max_model_len: int) -> None:
    """A prompt that is not empty (400) and leaves room for at least one generated token (PromptTooLongError)."""
    if not prompt_len:
        raise BadRequestError("the prompt is empty", param="prompt")
    if prompt_len >= max_model_len:
        raise PromptTooLongError(prompt_len, max_model_len)


def check_text_only(request: InferRequest) -> None:
    """A chat request with media, for a model without a processor (a raw prompt has no media parts)."""
    from swiftops.template.multimodal import MultimodalEncoder

    if request.prompt is None and MultimodalEncoder.has_media(request):
        raise UnsupportedError(
            "this model takes text only; images, videos and audios need a multimodal model "
            "(e.g. Qwen/Qwen2.5-VL-3B-Instruct)"
        )


def check_streamable(config: RequestConfig) -> None:
    """Beam search chooses among whole answers, so it cannot stream."""
    if config.num_beams > 1:
        raise BadRequestError("beam search returns whole answers: use num_beams with stream false", param="stream")


def check_logit_token_ids(config: RequestConfig, vocab_size: int) -> None:
    """A 400 for a token id (in the fields of LOGIT_INDEX_FIELDS, such as logit_bias) that is not below the model's
    vocabulary size (the logits' width)."""
    for name, ids_of in LOGIT_INDEX_FIELDS.items():
        value = getattr(config, name)
        if value is None:
            continue
        bad = sorted(i for i in ids_of(value) if not 0 <= i < vocab_size)
        if bad:
            raise BadRequestError(
                f"{name} names token ids outside this model's vocabulary of {vocab_size}: "
                f"{', '.join(map(str, bad[:5]))}",
                param=name,
            )
