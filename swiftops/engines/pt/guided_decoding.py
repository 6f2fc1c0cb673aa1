"""Structured outputs on the pt engine: grammars compiled by xgrammar, one token bitmask per step for the batch.

- `GrammarCompiler.compile` turns a request's `OutputConstraint` into xgrammar's compiled grammar, in a small thread
  pool and cached per constraint, before the request is queued: the engine loop never compiles, a request waits only
  for its own grammar, and a grammar xgrammar refuses is a 400 with xgrammar's reason.
- Each constrained sequence holds a `SequenceGrammar` (`Sequence.grammar`: xgrammar's matcher and the token rows
  that work around what xgrammar lets through, see `TokenRows`). Each step `fill_mask` fills the constrained rows
  of a [B, ceil(V / 32)] bitmask on the host (xgrammar's batch fill, multithreaded), and `constrain` copies it to
  the device, ANDs each row's `TokenRows` set into it there and masks the whole batch's logits in one kernel; free
  rows get an all-ones row, so constrained and free requests share one batch. The post-step advances the matcher
  by each accepted token (`SequenceGrammar.catch_up`).
- Pipelined decode (swiftops.engines.pt.core) hides most of that host work: the matchers take step N's tokens as
  soon as they reach the host (`take_ahead`), step N + 1's mask is filled on a worker thread (`fill_mask_async`;
  xgrammar releases the GIL) while the engine thread does step N's post-step, and step N + 1's forward has been
  running on the GPU all along.
- The end: the grammar allows EOS only once its root rule is complete, and accepting EOS terminates the matcher,
  so a constrained sequence ends with finish_reason "stop" as soon as its output is whole.

xgrammar is imported when the first constrained request arrives, not with the engine.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from swiftops.engines.pt.host_staging import staging_for
from swiftops.protocol import BadRequestError, EngineError, UnsupportedError
from swiftops.protocol.structured_output import OutputConstraint

# A schema that takes longer is refused (xgrammar's compile time has no bound of its own); the compile itself runs
# on in its thread, which is why the pool is small and separate from everything else.
COMPILE_TIMEOUT_S = 30.0
_CACHE_SIZE = 256  # compiled grammars kept (least recently used dropped first)
# xgrammar's C++ errors start with "[10:31:42] /project/cpp/regex_converter.cc:94: ": the reason follows.
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # a broken or partial install: say what to do instead of a traceback
        raise UnsupportedError(
            f"structured outputs on the pt backend need the xgrammar package ({exc}); pip install xgrammar"
        ) from None
    return xgrammar


class GrammarCompiler:
    """Compiles output constraints for one tokenizer and vocabulary; one per engine."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> None:
        # vocab_size: the width of the model's logits (lm_head rows), which may exceed the tokenizer's size (padded
        # for the GPU); xgrammar masks the ids past the tokenizer's end.
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._stop_token_ids = sorted(stop_token_ids)
        self._compiler: Any = None
        self._info: Any = None
        self._rows: TokenRows | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="swiftops-grammar")
        self.filler = MaskFiller()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, bool], Future] = OrderedDict()
        self.compiles = 0  # grammars actually compiled (cache misses), for tests and logs

    def _xgr_compiler(self) -> Any:
        with self._lock:  # the first requests may arrive together: build the tokenizer's tables once
            if self._compiler is None:
                xgr = _xgrammar()
                self._info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_token_ids
                )
                self._compiler = xgr.GrammarCompiler(self._info, max_threads=4, cache_enabled=False)
                self._rows = TokenRows(self._info.decoded_vocab, self.vocab_size, self._stop_token_ids)
            return self._compiler

    def _compile_now(self, constraint: OutputConstraint) -> Any:
        """Runs in the pool."""
        compiler = self._xgr_compiler()
        self.compiles += 1
        kind = constraint.kind
        if kind in ("json_schema", "json_object"):
            # Compact JSON (no free whitespace): a model allowed any whitespace may emit it until max_tokens.
            return compiler.compile_json_schema(
                constraint.source if kind == "json_schema" else '{"type": "object"}',
                any_whitespace=False,
                strict_mode=constraint.strict,
            )
        if kind == "regex":
            return compiler.compile_regex(constraint.source)
        if kind == "choice":
            return compiler.compile_regex(constraint.choice_regex)
        return compiler.compile_grammar(constraint.source)  # EBNF

    def _future(self, constraint: OutputConstraint) -> Future:
        with self._lock:
            future = self._cache.get(constraint.key)
            if future is not None:
                self._cache.move_to_end(constraint.key)
                return future
            future = self._pool.submit(self._compile_now, constraint)
            self._cache[constraint.key] = future
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return future

    def _forget(self, constraint: OutputConstraint, future: Future) -> None:
        with self._lock:
            if self._cache.get(constraint.key) is future:
                del self._cache[constraint.key]

    async def compile(self, constraint: OutputConstraint) -> Any:
        """xgrammar's compiled grammar for `constraint`; BadRequestError (a 400) when it cannot be compiled."""
        future = self._future(constraint)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), COMPILE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BadRequestError(
                f"{constraint.param} took longer than {COMPILE_TIMEOUT_S:.0f} s to compile into a "
                "grammar; send a smaller or less deeply nested one",
                param=constraint.param,
            ) from None
        except UnsupportedError:
            self._forget(constraint, future)
            raise
        except Exception as exc:
            self._forget(constraint, future)  # not cached: the same bad schema is reported again, not stuck
            reason = _LOG_PREFIX.sub("", " ".join(str(exc).split()))[:800] or type(exc).__name__
            raise BadRequestError(
                f"{constraint.param} cannot be compiled into a grammar: {reason}", param=constraint.param
            ) from None

    def compile_sync(self, constraint: OutputConstraint) -> Any:
        """`compile` for callers without an event loop (tests, benchmarks)."""
        return asyncio.run(self.compile(constraint))

    def matcher(self, compiled: Any, constraint: OutputConstraint) -> SequenceGrammar:
        """A fresh matcher over `compiled`, for one sequence (each of a request's n choices gets its own)."""
        self._xgr_compiler()
        assert self._rows is not None  # narrows for mypy: _xgr_compiler() built the token rows
        return SequenceGrammar(
            _xgrammar().GrammarMatcher(compiled),
            self._rows,
            self.filler,
            json_output=constraint.kind in ("json_schema", "json_object"),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.filler.close()


_CONTROL = re.compile(rb"[\x00-\x1f]")
_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")  # UTF-8 of U+D800-U+DFFF: not valid UTF-8 (decoded as U+FFFD)


def _words(allowed: torch.Tensor) -> torch.Tensor:
    """[V'] bool (V' a multiple of 32) -> [V' / 32] int32, bit j of word w for token 32 w + j (xgrammar's layout)."""
    weights = torch.tensor([1 << j for j in range(31)] + [-(1 << 31)], dtype=torch.int64)
    return (allowed.view(-1, 32).to(torch.int64) * weights).sum(dim=1).to(torch.int32)


class TokenRows:
    """Token sets ANDed into every constrained row, for what xgrammar 0.2 lets through that the output must not hold:
    - UTF-8 of surrogates (ED A0-BF: a random model strings byte tokens into them; Python and JSON parsers read
      each byte as U+FFFD, which also breaks maxLength), inside a token or across two (`after_ed`: a token ending
      in the lead byte ED must be followed by one starting with 80-9F);
    - for JSON output, control characters (xgrammar's rule for a string with maxLength admits them; JSON forbids
      them unescaped, and compact JSON has no whitespace that needs them)."""

    def __init__(self, vocab: list[bytes], vocab_size: int, stop_token_ids: list[int]) -> None:
        width = (vocab_size + 31) // 32 * 32
        pieces = vocab[:vocab_size]
        pad = [False] * (width - len(pieces))  # ids past the tokenizer: the grammar never allows them anyway
        # Lists first, one tensor each: a per-element tensor write is ~100x slower over 150k tokens.
        valid = [_SURROGATE.search(p) is None for p in pieces]
        text_ok = torch.tensor(valid + pad)
        json_ok = torch.tensor([v and _CONTROL.search(p) is None for v, p in zip(valid, pieces, strict=False)] + pad)
        after_ed_ok = torch.tensor([not p or not 0xA0 <= p[0] <= 0xBF for p in pieces] + pad)
        json_ok[stop_token_ids] = True  # EOS is the grammar's to allow
        self.ends_with_ed = frozenset(i for i, p in enumerate(pieces) if p.endswith(b"\xed"))
        # Row `kind(json output, after a lone ED)` of the table; the last row allows everything (free rows).
        sets = [text_ok, text_ok & after_ed_ok, json_ok, json_ok & after_ed_ok, torch.ones_like(text_ok)]
        self.table = torch.stack([_words(ok) for ok in sets])
        self.free_kind = len(sets) - 1
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def kind(json_output: bool, after_ed: bool) -> int:
        return 2 * json_output + after_ed

    def table_on(self, device: torch.device) -> torch.Tensor:
        """The table on `device`, copied there once (it is read at every constrained step)."""
        table = self._on_device.get(device)
        if table is None:
            table = self._on_device[device] = self.table.to(device)
        return table


class SequenceGrammar:
    """One sequence's place in its grammar: xgrammar's matcher, how many output tokens it has taken, and which of
    `TokenRows` applies next."""

    __slots__ = ("matcher", "token_rows", "filler", "json_output", "after_ed", "accepted")

    def __init__(self, matcher: Any, token_rows: TokenRows, filler: MaskFiller, json_output: bool) -> None:
        self.matcher = matcher
        self.token_rows = token_rows
        self.filler = filler  # the engine's: every matcher of a batch shares it
        self.json_output = json_output
        self.after_ed = False
        self.accepted = 0  # output tokens the matcher has taken

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    @property
    def row_kind(self) -> int:
        """Which row of `TokenRows.table` is ANDed into this sequence's mask next."""
        return TokenRows.kind(self.json_output, self.after_ed)

    def take(self, token: int) -> None:
        """Advance the matcher by the sequence's next output token."""
        if not self.matcher.accept_token(token):  # the matcher is left as it was
            # The mask allowed only tokens the grammar accepts: this is a bug, not a user error.
            raise EngineError(f"the grammar rejected the sampled token {token}; structured output cannot continue")
        self.after_ed = token in self.token_rows.ends_with_ed
        self.accepted += 1

    def catch_up(self, output_ids: list[int]) -> None:
        """Take the output tokens not taken yet (the post-step; a pipelined step may have taken its token ahead)."""
        while self.accepted < len(output_ids):
            self.take(output_ids[self.accepted])


def take_ahead(seqs: list[Any], token_ids: list[int]) -> bool:
    """Advance the constrained sequences' matchers by their sampled tokens before the post-step: the next step's
    mask needs them, and its fill can then run beside the post-step. True when every matcher took its token (the
    post-step only reads them then); a rejected token is left for the post-step to report."""
    caught_up = True
    for seq, token in zip(seqs, token_ids, strict=False):
        grammar = seq.grammar
        if grammar is not None and grammar.accepted == len(seq.output_ids) and not grammar.is_terminated():
            try:
                grammar.take(token)
            except EngineError:
                caught_up = False
    return caught_up


@dataclass
class HostMask:
    """xgrammar's masks of one step's batch, filled on the host: `rows` are the constrained rows of `words`
    [B, ceil(V / 32)] int32 (bit j of word w allows token 32 w + j), every other row all ones; `kinds` is each row's
    row of `TokenRows.table`."""

    rows: list[int]
    words: torch.Tensor
    kinds: list[int]
    token_rows: TokenRows


def fill_mask(seqs: list[Any], vocab_size: int, pin: bool) -> HostMask | None:
    """The batch's mask on the host (None: no row is constrained). Rows whose matcher has terminated (a sequence
    that ended at the step before, whose row of a pipelined step is dropped) are left free. The words cover the
    logits' width: ids past the tokenizer's vocabulary (a padded lm_head) are never allowed in a constrained row.
    Pinned for a GPU, so that its copy is queued rather than waited for (torch's caching host allocator keeps the
    buffer until the copy is done). xgrammar's fill releases the GIL: this may run on a worker thread."""
    rows = [i for i, s in enumerate(seqs) if s.grammar is not None and not s.grammar.is_terminated()]
    if not rows:
        return None
    words = torch.full((len(seqs), (vocab_size + 31) // 32), -1, dtype=torch.int32, pin_memory=pin)
    matchers = [seqs[i].grammar.matcher for i in rows]
    if len(rows) == 1:
        matchers[0].fill_next_token_bitmask(words, rows[0])
    else:
        seqs[rows[0]].grammar.filler.batch_matcher().batch_fill_next_token_bitmask(matchers, words, rows)
    token_rows = seqs[rows[0]].grammar.token_rows  # one per engine: every matcher of the batch shares it
    kinds = [token_rows.free_kind] * len(seqs)
    for i in rows:
        kinds[i] = seqs[i].grammar.row_kind
    return HostMask(rows, words, kinds, token_rows)


class MaskFiller:
    """One engine's means of filling a batch's mask: xgrammar's batch matcher (its own threads) and the worker that
    fills step N + 1's mask beside step N's post-step. Per engine, so that two engines in a process never share a
    matcher from two threads, and closing one stops only its worker."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._matcher: Any = None
        self._lock = threading.Lock()

    def batch_matcher(self) -> Any:
        with self._lock:
            if self._matcher is None:
                self._matcher = _xgrammar().BatchGrammarMatcher(max_threads="auto")
            return self._matcher

    def submit(self, seqs: list[Any], vocab_size: int, pin: bool) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swiftops-grammar-mask")
            return self._pool.submit(fill_mask, seqs, vocab_size, pin)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def fill_mask_async(seqs: list[Any], vocab_size: int, pin: bool) -> Future:
    """`fill_mask` on the engine's worker thread, while the engine thread does the post-step of the step before."""
    grammar = next(s.grammar for s in seqs if s.grammar is not None)
    return grammar.filler.submit(seqs, vocab_size, pin)


def constrain(logits: torch.Tensor, seqs: list[Any], filled: HostMask | None = None) -> None:
    """Mask, in place, the logits [B, V] of every constrained row to the tokens its grammar allows next. `filled`:
    the batch's mask already filled (`fill_mask_async`); otherwise it is filled here."""
    if filled is None:
        filled = fill_mask(seqs, logits.shape[-1], pin=logits.device.type == "cuda")
        if filled is None:
            return
    on_cpu = logits.device.type == "cpu"
    words = filled.words
    if not on_cpu:
        words = words.to(logits.device, non_blocking=True)
        kinds_t = staging_for(logits.device).to_device(filled.kinds, torch.int32)
    else:
        kinds_t = torch.tensor(filled.kinds)
    # TokenRows' sets, one gather and AND for the batch where the logits are (on the host it took ~1 ms a step
    # at batch 64 with Qwen's vocabulary, time the GPU waits for when the step is short).
    words &= filled.token_rows.table_on(words.device)[kinds_t]
    # xgrammar's kernel: Triton on CUDA (one launch for the whole batch; free rows' all-ones words leave them as they
    # are), a C++ loop on CPU, which is told the constrained rows (a list there costs no copy to a device).
    rows = filled.rows
    _xgrammar().apply_token_bitmask_inplace(
        logits, words, vocab_size=logits.shape[-1], indices=rows if on_cpu and len(rows) < len(seqs) else None
    )
