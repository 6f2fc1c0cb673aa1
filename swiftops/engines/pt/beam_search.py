"""Beam search on the pt backend: requests with `num_beams > 1` go to transformers' `generate`, as in ms-swift.

They do not join the continuously batched sequences: the scheduler samples one token per sequence per step,
and beams need the whole group rescored each step. `generate` runs on a worker thread beside the engine
loop; the paged attention function behaves like sdpa when our runner's step context is absent, so the same
weights serve both. LoRA is refused here: the adapters' per-token slot map belongs to the engine loop's step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from swiftops.engines.prompt_checks import check_streamable
from swiftops.protocol import (
    BadRequestError,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
    RequestConfig,
    UnsupportedError,
    UsageInfo,
)


def check_beam_request(config: RequestConfig, adapter: str | None, has_media: bool) -> None:
    """What beam search on the pt backend cannot do, as a 400 that says what to do."""
    if config.stream:
        check_streamable(config)
    if adapter is not None:
        raise UnsupportedError("beam search runs on the base model only; drop num_beams or the adapter")
    if has_media:
        raise UnsupportedError("beam search takes text-only requests on the pt backend; drop num_beams for media")
    if config.n > config.num_beams:
        raise BadRequestError(f"n={config.n} needs num_beams >= n (each choice is one of the final beams)", param="n")
    if config.logprobs:
        raise BadRequestError("logprobs are not returned with beam search; drop one of them", param="logprobs")


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    beams: dict[str, Any],
    eos: set[int],
    stops: tuple[str, ...],
    device: Any,
    name: str,
) -> ChatCompletionResponse:
    import torch

    ids = torch.tensor([prompt_ids], device=device)  # [1, S]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), eos_token_id=sorted(eos) or None, pad_token_id=pad, **beams
        )
    choices, completion_tokens = [], 0
    for index, row in enumerate(out[:, len(prompt_ids) :].tolist()):
        ended = next((i for i, t in enumerate(row) if t in eos), None)
        tokens = row[:ended] if ended is not None else [t for t in row if t != pad]
        completion_tokens += len(tokens) + (ended is not None)
        text, stopped = _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)
        finish = "stop" if ended is not None or stopped else "length"
        choices.append(
            ChatCompletionResponseChoice(index=index, message=ChatMessage(content=text), finish_reason=finish)
        )
    usage = UsageInfo(
        prompt_tokens=len(prompt_ids),
        completion_tokens=completion_tokens,
        total_tokens=len(prompt_ids) + completion_tokens,
    )
    return ChatCompletionResponse(model=name, choices=choices, usage=usage)


async def beam_search_response(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    beams: dict[str, Any],
    eos: set[int],
    stops: tuple[str, ...],
    device: Any,
    name: str,
) -> ChatCompletionResponse:
    """One request's answer by beam search, off the event loop; `beams`: generate()'s arguments
    (swiftops.engines.pt.request_plan.beam_kwargs)."""
    return await asyncio.to_thread(_generate, model, tokenizer, prompt_ids, beams, eos, stops, device, name)
