"""The pt backend's mapping of a request: a `RequestConfig` with every default applied
(swiftops.protocol.sampling.effective_config) -> what the engine runs for it.

The vLLM and LMDeploy backends have theirs in their `args` modules; the sampler (swiftops.engines.pt.sampler)
applies `SamplingParams` to the logits, and transformers' `generate` takes `beams` (swiftops.engines.pt.beam_search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swiftops.engines.pt.sequence import SamplingParams
from swiftops.protocol.request import RequestConfig
from swiftops.protocol.structured_output import OutputConstraint


@dataclass(frozen=True)
class RequestPlan:
    params: SamplingParams  # each choice's sampling (choice i draws with seed + i)
    n: int  # choices: sequences launched in the batch, or final beams returned
    constraint: OutputConstraint | None  # the output's grammar (structured outputs), None: free text
    beams: dict[str, Any] | None  # transformers' generate() arguments of a beam search; None: sampled in the batch
    images_size: bool  # return_details: the response carries each image's size as the model saw it


def sampling_params(config: RequestConfig, room: int) -> SamplingParams:
    """Per-sequence sampling; `room` is what the context leaves after the prompt."""
    return SamplingParams(
        max_tokens=min(config.max_tokens or room, room),
        temperature=float(config.temperature or 0.0),
        top_k=int(config.top_k or 0),
        top_p=float(config.top_p or 1.0),
        min_p=config.min_p,
        repetition_penalty=float(config.repetition_penalty or 1.0),
        presence_penalty=config.presence_penalty,
        frequency_penalty=config.frequency_penalty,
        seed=config.seed,
        stop=tuple(config.stop or ()),
        stop_token_ids=frozenset(config.stop_token_ids or ()),
        ignore_eos=config.ignore_eos,
        logit_bias=tuple((config.logit_bias or {}).items()),
        logprobs=config.logprobs,
        top_logprobs=config.top_logprobs or 0,
        incremental=config.stream or bool(config.stop),
    )


def beam_kwargs(config: RequestConfig, room: int) -> dict[str, Any]:
    """transformers' generate() arguments of a beam search (greedy beams, as ms-swift runs them)."""
    kwargs: dict[str, Any] = {
        "num_beams": config.num_beams,
        "num_return_sequences": config.n,
        "max_new_tokens": min(config.max_tokens or room, room),
        "do_sample": False,
        "repetition_penalty": float(config.repetition_penalty or 1.0),
    }
    if config.logit_bias:  # transformers' bias of one-token sequences is OpenAI's logit_bias
        kwargs["sequence_bias"] = [[[token_id], bias] for token_id, bias in config.logit_bias.items()]
    return kwargs


def plan_request(config: RequestConfig, room: int, constraint: OutputConstraint | None = None) -> RequestPlan:
    """`constraint`: the request's output constraint (swiftops.protocol.structured_output.output_constraint)."""
    return RequestPlan(
        params=sampling_params(config, room),
        n=config.n,
        constraint=constraint,
        beams=beam_kwargs(config, room) if config.num_beams > 1 else None,
        images_size=config.return_details,
    )
