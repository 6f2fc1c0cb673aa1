"""The post-step stage: after the model ran and tokens were sampled, the one place that updates sequences.

The scheduler decides what runs and the runner computes; this stage alone advances a sequence's computed
count, appends its sampled token, decides whether it ends (EOS, a stop token id, `max_tokens`, the context
length, a stop string found by its detokenizer) and builds what its caller receives.
"""

from __future__ import annotations

from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.pt.detokenizer import token_bytes
from swiftops.engines.pt.scheduler import StepPlan
from swiftops.engines.pt.sequence import Sequence
from swiftops.protocol import ChatCompletionTokenLogprob, EngineError, TopLogprob


def advance(plan: StepPlan) -> None:
    """The plan's tokens are now in the KV cache."""
    for seq, chunk in plan.prefill:
        seq.num_computed += chunk
    for seq in plan.decode:
        seq.num_computed += 1
    plan.computed = True


class PostStep:
    def __init__(self, eos_token_ids: set[int], max_model_len: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return "stop"
        if seq.grammar is not None and seq.grammar.is_terminated():  # its EOS, accepted once the output is whole
            return "stop"
        if params.incremental:
            seq.detokenizer.add(token)
            if seq.detokenizer.stopped:
                return "stop"
        produced = len(seq.output_ids)
        if produced >= params.max_tokens or len(seq.prompt_ids) + produced >= self.max_model_len:
            return "length"
        return None

    def append(self, seq: Sequence, token: int, logprob: Any) -> SequenceOutput | None:
        """Record `token` for `seq`; returns what to hand over now (None: nothing yet). An output with a
        finish_reason means the sequence is done and must be retired."""
        seq.output_ids.append(token)
        if seq.grammar is not None:
            try:
                seq.grammar.catch_up(seq.output_ids)
            except EngineError as exc:
                return SequenceOutput(
                    index=seq.index,
                    finish_reason="error",
                    error=exc,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.output_ids),
                )
        if seq.params.token_ids_only:  # `incremental` is off with it: the finish check decodes nothing
            return SequenceOutput(
                index=seq.index,
                token_ids=[token],
                logprobs=[] if logprob is None else [logprob],
                finish_reason=self._finish_reason(seq, token),
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.output_ids),
            )
        if logprob is not None:
            seq.pending_logprobs.append(self._logprob_entry(seq, token, logprob))
        finish = self._finish_reason(seq, token)
        detok = seq.detokenizer
        if finish is None and not seq.params.incremental:
            return None  # nothing to hand over until the end
        if finish is not None:
            if not seq.params.incremental:
                detok.add_all(seq.output_ids[:-1] if finish == "stop" else seq.output_ids)
            detok.flush()
        out = SequenceOutput(
            index=seq.index,
            text=detok.take(final=finish is not None),
            token_ids=[token],
            logprobs=seq.pending_logprobs,
            finish_reason=finish,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
        )
        seq.pending_logprobs = []
        return out

    @staticmethod
    def _logprob_entry(seq: Sequence, token: int, info: Any) -> ChatCompletionTokenLogprob:
        chosen, top = info
        text = seq.detokenizer.token_text(token)
        tops = []
        for tid, lp in top:
            t = seq.detokenizer.token_text(tid)
            tops.append(TopLogprob(token=t, logprob=lp, bytes=token_bytes(t)))
        return ChatCompletionTokenLogprob(token=text, logprob=chosen, bytes=token_bytes(text), top_logprobs=tops)
