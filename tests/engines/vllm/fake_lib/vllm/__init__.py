"""A stand-in for the vllm package with the shapes swiftops uses, for tests on machines without vLLM.

Only the library's outermost surface is faked: `AsyncEngineArgs`, `SamplingParams`,
`AsyncLLMEngine.from_engine_args(...).generate/abort/shutdown`, `LoRARequest`, and `RequestOutput`-shaped
objects streamed with `output_kind=DELTA`. The "model" answers from a fixed script of words, so tests
can predict text, lengths, stops and logprobs.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from vllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: F401  (re-exported like vLLM)

__version__ = "0.0-fake"
SCRIPT = ["Hello", " there", ",", " I", " am", " a", " tiny", " fake", " model", "."]
STEP_SECONDS = 0.002


class AsyncEngineArgs:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[list[dict[int, Logprob]]]
    finish_reason: Optional[str] = None
    stop_reason: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: Optional[list[int]]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class ModelConfig:
    max_model_len: int


@dataclass
class FakeAsyncLLM:
    engine_args: AsyncEngineArgs
    model_config: ModelConfig
    calls: list[dict[str, Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: set = field(default_factory=set)
    shut_down: bool = False
    fail_with: Optional[BaseException] = None

    async def generate(self, prompt: Any, sampling_params: SamplingParams, request_id: str, *,
                       lora_request: Any = None, **kwargs: Any):
        assert sampling_params.output_kind == RequestOutputKind.DELTA, "swiftops streams deltas"
        self.calls.append({"prompt": prompt, "params": sampling_params, "request_id": request_id,
                           "lora_request": lora_request, "kwargs": kwargs})
        if self.fail_with is not None:
            raise self.fail_with
        p = sampling_params
        prompt_ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else None
        rng = random.Random(p.seed)
        scripts = []
        for i in range(p.n):
            words = list(SCRIPT)
            if p.temperature > 0:  # "sampling" shuffles the script; a seed makes it repeatable
                rng.shuffle(words)
            scripts.append(words)
        texts = [""] * p.n
        done = [False] * p.n
        ignore_eos = bool(p.kwargs.get("ignore_eos"))
        # The script ends with EOS ("stop") unless ignore_eos, which repeats it up to max_tokens.
        steps = p.max_tokens if ignore_eos else min(p.max_tokens, len(SCRIPT) + 1)
        self.running.add(request_id)
        try:
            for step in range(steps):
                await asyncio.sleep(STEP_SECONDS)
                outputs = []
                for i in range(p.n):
                    if done[i]:
                        continue
                    if step >= len(SCRIPT) and not ignore_eos:
                        outputs.append(CompletionOutput(i, "", [], None, [] if p.logprobs is not None else None,
                                                        finish_reason="stop"))
                        done[i] = True
                        continue
                    word = scripts[i][step % len(SCRIPT)]
                    token_id = 100 + SCRIPT.index(word)
                    texts[i] += word
                    finish = None
                    hit = next((s for s in (p.stop or []) if s in texts[i]), None)
                    if hit is not None:  # vLLM drops the stop string and what follows it
                        word = word[:len(word) - (len(texts[i]) - texts[i].index(hit))]
                        finish = "stop"
                    elif step + 1 >= p.max_tokens:
                        finish = "length"
                    logprobs = None
                    if p.logprobs is not None:
                        position = {token_id: Logprob(-0.5, 1, scripts[i][step % len(SCRIPT)])}
                        for k in range(p.logprobs):
                            position.setdefault(200 + k, Logprob(-1.0 - k, k + 2, f"alt{k}"))
                        logprobs = [position]
                    outputs.append(CompletionOutput(i, word, [token_id], None, logprobs, finish_reason=finish))
                    done[i] = finish is not None
                yield RequestOutput(request_id, None, prompt_ids, None, outputs, all(done))
                if all(done):
                    return
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id: str, internal: bool = False) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


class AsyncLLMEngine:
    instances: list[FakeAsyncLLM] = []

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, **kwargs: Any) -> FakeAsyncLLM:
        llm = FakeAsyncLLM(engine_args, ModelConfig(getattr(engine_args, "max_model_len", None) or 256))
        cls.instances.append(llm)
        return llm
