"""Fake vllm.sampling_params: the argument holders swiftops builds."""
from __future__ import annotations

import enum
from typing import Any


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class StructuredOutputsParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class SamplingParams:
    def __init__(self, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_tokens: int = 16, seed: Any = None, stop: Any = None, logprobs: Any = None,
                 output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE, **kwargs: Any) -> None:
        if logprobs is not None and logprobs > 20:  # vLLM's default max_logprobs
            raise ValueError(f"Requested sample logprobs of {logprobs}, which is greater than max allowed: 20")
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.max_tokens, self.seed, self.stop, self.logprobs = max_tokens, seed, stop, logprobs
        self.output_kind = output_kind
        self.kwargs = kwargs
