"""A sequence being generated: its tokens, sampling settings, KV blocks and where its output goes."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swiftops.engines.outputs import SequenceOutput

_ids = itertools.count()


@dataclass(frozen=True)
class SamplingParams:
    """Resolved per-sequence sampling settings (engine defaults already applied)."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # 0: off; else drop tokens below min_p x the most likely token's probability
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), OpenAI's logit_bias
    logprobs: bool = False
    top_logprobs: int = 0
    # Stream text as it is generated. Off (non-streaming, no stop strings), text is decoded once at the
    # end and only the final output is handed over: per-token decoding and hand-offs cost more CPU
    # than a decode step of a large batch on a GPU.
    incremental: bool = True
    # Hand over each step's token id and raw logprob, never text: the consumer detokenizes and matches stop
    # strings (the API-server process, swiftops.engines.process). The engine checks stop ids and lengths only.
    token_ids_only: bool = False
    # Derived once (read for every sequence at every step). Below 1e-5 (vLLM's sampling epsilon) logits /
    # temperature overflows float32 to inf and sampling fails; a temperature that small is greedy anyway.
    greedy: bool = field(init=False, compare=False)
    penalized: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "greedy", self.temperature < 1e-5)
        object.__setattr__(
            self,
            "penalized",
            self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0,
        )


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class AsyncSink:
    """Hands a sequence's outputs to a queue (swiftops.engines.outputs.OutputChannel) on the event loop that awaits
    them.

    The engine thread batches deliveries: one `call_soon_threadsafe` per loop and step, not per
    sequence and token (each wakes the loop through a pipe).
    """

    def __init__(self, loop: Any, queue: Any) -> None:
        self.loop = loop
        self.queue = queue

    def __call__(self, out: SequenceOutput) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, out)


def deliver_all(items: list[tuple[Any, SequenceOutput]]) -> None:
    """Runs on an event loop: put each output in its queue."""
    for queue, out in items:
        queue.put_nowait(out)


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[SequenceOutput], None]
    index: int = 0  # choice index within its request (n > 1)
    adapter: str | None = None  # LoRA adapter name (None: the base model)
    lora_slot: int = 0  # where the adapter is resident while the sequence runs (0: none)
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys and values are in the cache
    block_table: list[int] = field(default_factory=list)  # KV blocks held (BlockManager)
    table_row: int = 0  # this sequence's row of the device block table while it holds blocks (0: none)
    # Prefix caching (swiftops.engines.pt.prefix_hash): what besides the tokens shapes the KV cache (the adapter's
    # weights digest; the media's first position and digest), the chained hashes of its full blocks so far, and
    # how many of its leading blocks were offered to the cache (or taken from it).
    cache_salt: bytes = b""
    media_key: tuple[int, bytes] | None = None
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0
    status: SeqStatus = SeqStatus.WAITING
    generator: Any = None  # torch.Generator for seeded sampling
    detokenizer: Any = None
    aborted: bool = False
    arrival: float = 0.0
    pending_logprobs: list[Any] = field(default_factory=list)  # entries not yet handed to the sink
    grammar: Any = None  # structured output: xgrammar's matcher of this sequence (swiftops.engines.pt.guided_decoding)
    # Multimodal prompts: processor outputs until the first prefill, then the prompt's embeddings [S, hidden],
    # its M-RoPE positions [3, S] and the offset of generated tokens' rope positions (swiftops.engines.pt.mm_prefill).
    mm_inputs: Any = None
    mm_embeds: Any = None
    mrope: Any = None
    rope_delta: int = 0

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def ids_between(self, start: int, end: int) -> list[int]:
        """Tokens start..end of prompt + output, without copying the whole sequence (a decode row riding in a
        prefill forward takes one token of a long one at every step)."""
        prompt_len = len(self.prompt_ids)
        if end <= prompt_len:
            return self.prompt_ids[start:end]
        if start >= prompt_len:
            return self.output_ids[start - prompt_len : end - prompt_len]
        return self.prompt_ids[start:] + self.output_ids[: end - prompt_len]

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model (the whole prompt at first, then the last sampled token)."""
        return self.num_tokens - self.num_computed
